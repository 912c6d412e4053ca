"""Webhooks: a task's events (done, failed, awaiting approval) posted as signed JSON to the farm-wide URL
(RENDERQ_NOTIFY_URL) and to the URLs the task's submit named (`notify`).

Nothing here runs in a request. A thread of the coordinator (one at a time on a cluster: the store's exclusive
lock) looks every half second for tasks whose status changed since it last looked; an event's status queues one
delivery per URL in the outbox, in the transaction that records the status as seen (store/notifications.py). The
same thread then posts the due deliveries, each with a short timeout, and retries a failed one with exponential
backoff and jitter until `notify_give_up` seconds after the event; a delivery given up is written to the task's log
and the coordinator's. The outbox is in the database, so a restart or a receiver down for hours loses nothing.

Delivery is at least once: a receiver that answered 2xx but whose answer was lost gets the same delivery again, with
the same `delivery` id (also in the X-RenderQ-Delivery header), by which it deduplicates. Every attempt is signed
(renderq/webhooks.py) with a timestamp of its own, so a receiver that refuses old timestamps can tell a replay.
Redirects are not followed: a 3xx is a failed attempt.

Who may point the coordinator at which URL: the coordinator posts from inside the studio's network, so a task's URL
could aim it at services only it can reach. The body is always our own JSON and the receiver's answer is never shown
to the artist, but a blind POST can still trigger a local admin API. `notify_task_urls` says what an artist may
name: "remote" (the default: anything but this machine's own loopback and link-local addresses, checked on the
address actually connected to, so a name that resolves there is refused too), "any", or "off".
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from renderq.model import TaskStatus
from renderq.settings import Flag
from renderq.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    url_problem,
)

from .errors import BadRequest, Forbidden

if TYPE_CHECKING:
    from .config import Config
    from .store import Store

log = logging.getLogger("renderq.coordinator.notify")

# The event of each task status that has one. A status renderq.model does not define is left out, so a status the
# model gains later (awaiting approval) has its event from then on.
EVENT_NAMES = {"done": "task.done", "failed": "task.failed", "awaiting_approval": "task.awaiting_approval"}
EVENTS = {status: event for status, event in EVENT_NAMES.items() if status in {s.value for s in TaskStatus}}

NOTIFY_SECRET_FILE = "notify_secret"

# Seconds between the notifier's looks for changed tasks and due deliveries.
POLL_SECONDS = 0.5
# Changed tasks read, and due deliveries tried, per look.
SCAN_LIMIT = 200
DELIVERY_BATCH = 50
# The longest wait between two attempts of one delivery, however many failed.
MAX_BACKOFF_SECONDS = 600.0
# Delivered and given-up deliveries are forgotten this long after they ended.
KEEP_ENDED_SECONDS = 7 * 86400.0
PRUNE_SECONDS = 3600.0
# The most of a receiver's answer read (and thrown away).
MAX_ANSWER_BYTES = 64 * 1024

NOTIFY_FLAGS = (
    Flag("--notify-url", str, "a URL told of every task's events (done, failed, awaiting approval) with a signed "
         "JSON POST (RENDERQ_NOTIFY_URL, default none)", metavar="URL"),
    Flag("--notify-task-urls", str, "which URLs a task's own --notify may name: remote (any but this machine's own "
         "and link-local addresses), any, or off (RENDERQ_NOTIFY_TASK_URLS, default remote)", metavar="POLICY"),
    Flag("--notify-timeout", float, "seconds one webhook delivery attempt may take (RENDERQ_NOTIFY_TIMEOUT, "
         "default 5)", metavar="SECONDS"),
    Flag("--notify-retry", float, "seconds before a failed webhook delivery is tried again; each later retry waits "
         "about twice as long, at most 10 minutes (RENDERQ_NOTIFY_RETRY, default 2)", metavar="SECONDS"),
    Flag("--notify-give-up", float, "seconds after an event during which its delivery is retried, then given up "
         "and noted in the task's log (RENDERQ_NOTIFY_GIVE_UP, default 86400, a day)", metavar="SECONDS"),
)


# -- URLs -------------------------------------------------------------------------------------------------------------


def check_task_urls(urls: Sequence[str], policy: str) -> list[str]:
    """A submit's `notify` URLs, each checked against the URL rules and the farm's policy, without repeats;
    BadRequest or Forbidden with a sentence otherwise."""
    if not urls:
        return []
    if policy == "off":
        raise Forbidden("this farm takes no notify URLs from tasks (its admin set RENDERQ_NOTIFY_TASK_URLS=off); "
                        "ask the admin about the farm-wide webhook instead")
    for url in urls:
        problem = url_problem(url)
        if problem:
            raise BadRequest(problem)
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        if policy == "remote" and _names_this_machine(host):
            raise BadRequest(f"a notify URL may not name the coordinator's own machine or a link-local address "
                             f"({host}): this farm posts tasks' events to other machines only "
                             "(RENDERQ_NOTIFY_TASK_URLS=remote)")
    return list(dict.fromkeys(urls))


def _names_this_machine(host: str) -> bool:
    """A host that reaches the coordinator's own machine (or a link-local address) whatever DNS says."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _is_local_address(ipaddress.ip_address(host))
    except ValueError:
        return False  # a name: the address it resolves to is checked when connecting


def _is_local_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_loopback or address.is_link_local or address.is_unspecified


def _where(url: str) -> str:
    """The URL's scheme, host and port only, for logs: its path may hold the receiver's secret."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


# -- events -----------------------------------------------------------------------------------------------------------


def event_body(task: dict[str, Any], event: str, delivery_id: str, now: float, page_base: str) -> str:
    """The JSON an event is posted with (ASCII only, so the stored text is the exact bytes sent and signed)."""
    body: dict[str, Any] = {
        "event": event,
        "delivery": delivery_id,
        "time": round(now, 3),
        "task_id": task["task_id"],
        "name": task["name"],
        "status": task["status"],
        "owner": task["owner"],
        "frames": {"total": task["frames_total"], "done": task["frames_done"], "failed": task["frames_failed"]},
    }
    if page_base:
        body["url"] = f"{page_base}/tasks/{task['task_id']}"
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


class DeliveryFailed(Exception):
    """One attempt failed, for `reason` (a sentence); `final`: retrying cannot help."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


def post_event(url: str, body: bytes, headers: dict[str, str], timeout: float, refuse_local: bool) -> None:
    """POST `body` to `url`; returns when the receiver answered 2xx, else raises DeliveryFailed. The whole attempt
    takes at most `timeout` seconds, however slowly the receiver trickles its answer. `refuse_local`: the address
    connected to must not be this machine's own or link-local (checked before a byte is sent)."""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme.lower() == "https"
    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
    connection = kind(parts.hostname or "", parts.port or (443 if https else 80), timeout=timeout)
    headers = {**headers, "Content-Type": "application/json", "User-Agent": "RenderQ-webhook"}
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    # The socket's timeout bounds each wait; this bounds the attempt: at the deadline the socket is shut, which
    # ends whatever read or write is waiting on it.
    cut = threading.Event()
    deadline = threading.Timer(timeout, _cut, (connection, cut))
    deadline.daemon = True
    deadline.start()
    try:
        connection.connect()
        if refuse_local and connection.sock is not None:
            peer = ipaddress.ip_address(connection.sock.getpeername()[0].split("%", 1)[0])
            if _is_local_address(peer):
                raise DeliveryFailed(f"{parts.hostname} resolves to {peer}, an address of the coordinator's own "
                                     "machine or link-local, which tasks' URLs may not reach "
                                     "(RENDERQ_NOTIFY_TASK_URLS=remote)", final=True)
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        answer = connection.getresponse()
        answer.read(MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException) as error:
        if not cut.is_set():
            raise DeliveryFailed(f"could not post: {error or type(error).__name__}") from None
    finally:
        deadline.cancel()
        connection.close()
    if cut.is_set():  # a cut answer may still parse (up to where it was cut): it does not count
        raise DeliveryFailed(f"the receiver took longer than {timeout:g} s to answer")
    if not 200 <= answer.status < 300:
        raise DeliveryFailed(f"the receiver answered {answer.status} {answer.reason}".strip())


def _cut(connection: http.client.HTTPConnection, cut: threading.Event) -> None:
    """End the attempt on `connection` now, from another thread, and say so in `cut`."""
    cut.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# -- the notifier -----------------------------------------------------------------------------------------------------


class Notifier:
    """Queues the events of tasks whose status changed and delivers the due ones; `run` does both in a loop."""

    def __init__(self, store: Store, config: Config, secret: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.secret = secret
        self.clock = clock
        self.farm_url = config.notify_url
        self.page_base = config.public_url.rstrip("/")
        self.refuse_local = config.notify_task_urls == "remote"
        self.timeout = config.notify_timeout
        self.retry = config.notify_retry
        self.give_up = config.notify_give_up
        self._next_prune = 0.0

    def queue_events(self) -> int:
        """Record the new statuses of changed tasks, queuing the events among them; how many were queued."""
        tasks = self.store.tasks_with_unseen_status(SCAN_LIMIT)
        if not tasks:
            return 0
        task_urls = self.store.task_notify_urls([t["task_id"] for t in tasks if t["status"] in EVENTS])
        now = self.clock()
        seen = []
        for task in tasks:
            event = EVENTS.get(task["status"])
            targets: list[tuple[str, bool]] = []
            if event is not None:
                targets = [(url, False) for url in task_urls.get(task["task_id"], []) if url != self.farm_url]
                if self.farm_url:
                    targets.append((self.farm_url, True))
            seen.append((task["task_id"], task["status"],
                         [self._delivery(task, event, url, farm_wide, now) for url, farm_wide in targets]))
        return self.store.record_seen_statuses(seen)

    def _delivery(self, task: dict[str, Any], event: str | None, url: str, farm_wide: bool,
                  now: float) -> dict[str, Any]:
        delivery_id = uuid.uuid4().hex
        return {"delivery_id": delivery_id, "task_id": task["task_id"], "event": event, "url": url,
                "farm_wide": int(farm_wide), "created_at": now,
                "body": event_body(task, event or "", delivery_id, now, self.page_base)}

    def deliver_due(self) -> int:
        """Try each due delivery once (after one failure to a URL, its others wait for the next look); how many
        were delivered."""
        failed_urls: set[str] = set()
        delivered = 0
        for item in self.store.due_notifications(self.clock(), DELIVERY_BATCH):
            if item["url"] in failed_urls:
                continue
            body = item["body"].encode("ascii")
            timestamp = str(int(self.clock()))
            headers = {SIGNATURE_HEADER: signature(self.secret, timestamp, body), TIMESTAMP_HEADER: timestamp,
                       DELIVERY_HEADER: item["delivery_id"], EVENT_HEADER: item["event"]}
            try:
                # The farm-wide URL is the admin's own choice: never limited.
                post_event(item["url"], body, headers, self.timeout, self.refuse_local and not item["farm_wide"])
            except DeliveryFailed as failure:
                failed_urls.add(item["url"])
                self._failed(item, failure)
                continue
            self.store.notification_delivered(item["delivery_id"], self.clock())
            delivered += 1
        return delivered

    def _failed(self, item: dict[str, Any], failure: DeliveryFailed) -> None:
        """Schedule the next attempt, with exponential backoff and jitter, or give up and say so."""
        now = self.clock()
        attempts = item["attempts"] + 1
        if failure.final or now - item["created_at"] >= self.give_up:
            self.store.notification_given_up(item["delivery_id"], failure.reason, now)
            sentence = (f"webhook: gave up delivering {item['event']} (delivery {item['delivery_id']}) to "
                        f"{_where(item['url'])} after {attempts} attempt(s): {failure.reason}")
            log.error("task %d: %s", item["task_id"], sentence)
            self.store.append_log(item["task_id"], f"[renderq] {sentence}\n")
            return
        delay = min(MAX_BACKOFF_SECONDS, self.retry * 2 ** item["attempts"]) * random.uniform(0.5, 1.0)
        self.store.notification_retry(item["delivery_id"], failure.reason, now + delay)
        if attempts == 1:
            log.warning("task %d: webhook %s to %s failed (%s); retrying with backoff", item["task_id"],
                        item["event"], _where(item["url"]), failure.reason)

    def prune(self) -> None:
        """Forget deliveries that ended long ago, once an hour."""
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_SECONDS
            self.store.prune_notifications(now - KEEP_ENDED_SECONDS)

    def run(self, stop: threading.Event) -> None:
        """Queue and deliver until `stop` is set; one coordinator of a cluster at a time. A failed look (the
        database away) is logged once, and the next look tries again."""
        failing = False
        while True:
            try:
                with self.store.exclusive("notifications") as ours:
                    if ours:
                        self.queue_events()
                        self.deliver_due()
                        self.prune()
                failing = False
            except Exception as error:  # noqa: BLE001 - the notifier must outlive a database that is away
                if not failing:
                    log.error("the webhook notifier failed: %s", error)
                failing = True
            if stop.wait(POLL_SECONDS):
                return


def load_secret(config: Config, share: Callable[[str, str], str]) -> tuple[str, str]:
    """The key events are signed with, and a sentence for the admin saying where it is (never the key itself):
    RENDERQ_NOTIFY_SECRET, else the data dir's notify_secret file (made at first start; shared by `share` with
    the coordinators of one database)."""
    from .auth import read_or_create_secret

    if config.notify_secret:
        return config.notify_secret, "webhook secret: the one set in RENDERQ_NOTIFY_SECRET"
    path = os.path.abspath(os.path.join(config.data_dir, NOTIFY_SECRET_FILE))
    value, created = read_or_create_secret(path, share)
    made = "created " if created else ""
    return value, f"webhook secret: {made}in {path} (readable by this user only; receivers check signatures with it)"


def start_notifier(store: Store, config: Config, stop: threading.Event) -> Notifier:
    """Make the notifier, tell the admin where its secret is, and run it in a thread until `stop` is set."""
    secret, where = load_secret(config, store.share_secret)
    print(where, flush=True)
    notifier = Notifier(store, config, secret)
    threading.Thread(target=notifier.run, args=(stop,), name="notifier", daemon=True).start()
    return notifier
