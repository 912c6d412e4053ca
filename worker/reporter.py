"""Every call the worker makes to the coordinator: registration, heartbeat, claims, reports, uploads, downloads and
logs, with their retries and the detection of lost leases.

This is the one module that speaks to `renderq.http_client`: a change of endpoint or of error type is made here.
The refusals that matter are told apart in three small functions (`_lease_lost`, `_unknown_worker`,
`_unauthorized`); everything else a call can raise is either retried (the coordinator is away or failing, see
worker/retry.py) or logged.

Results (frames rendered, failed or given back) go through the ordered buffer of worker/outbox.py, so the loop never
waits on the network for them and a coordinator that is away gets them, in order, once it is back. A lease is lost
when the heartbeat says so (`revoked`), when a call on it is refused with 409, or when the coordinator no longer
knows this worker; a lost lease's result is dropped and the loop, which watches `Lease.revoked`, stops rendering it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any, TypeVar

from renderq.http_client import Conflict, CoordinatorClient, CoordinatorError, NotFound, Unauthorized
from renderq.local_files import remove_quietly
from worker.lease import Lease
from worker.log_shipper import LogShipper
from worker.outbox import FrameDone, FrameFailed, FrameGivenBack, Outbox, Result
from worker.retry import GaveUp, retry
from worker.riding import PendingStarts, start_reports
from worker.settings import DEFAULT_POLL_SECONDS, WorkerSettings
from worker.shared import Control, HeldLeases, Lane

__all__ = ["POLL_ADVICE_LIMITS", "RegistrationRefused", "Reporter"]

log = logging.getLogger("renderq.worker")

T = TypeVar("T")

# The coordinator's log_tail is for a human reading why a frame failed; the last lines are the useful ones.
_MAX_LOG_TAIL_CHARS = 16 * 1024
# Poll advice outside these bounds is taken for a mistake and clamped.
POLL_ADVICE_LIMITS = (0.05, 300.0)
# Bounds on the coordinator's advised heartbeat interval and lease length, in seconds.
HEARTBEAT_LIMITS = (0.5, 60.0)
LEASE_LIMITS = (2.0, 3600.0)
# Each wait between heartbeats is shorter than advised by up to this part, at random: workers whose heartbeats fell
# into step (a farm started at once, or answered together after a stall) drift apart again instead of beating
# together for good. Never longer than advised: the lease is sized from the advised interval.
HEARTBEAT_SPREAD = 0.15


def heartbeat_wait(advised_seconds: float, chance: random.Random | None = None) -> float:
    """Seconds to wait before the next heartbeat: the advised interval less a random part of up to
    HEARTBEAT_SPREAD of it (`chance` gives the randomness; the module's by default)."""
    return advised_seconds * (1 - HEARTBEAT_SPREAD * (chance or random).random())


class RegistrationRefused(Exception):
    """The coordinator refused to register this worker; the message says why and what to do."""


def _lease_lost(exc: CoordinatorError) -> bool:
    """A refusal saying the frame is no longer this worker's (or, for a delivery, that its output name is taken):
    LeaseLost on the lease-fenced calls, a plain Conflict on the others."""
    return isinstance(exc, Conflict)


def _unknown_worker(exc: CoordinatorError) -> bool:
    return isinstance(exc, NotFound)


def _unauthorized(exc: CoordinatorError) -> bool:
    return isinstance(exc, Unauthorized)


class Reporter:
    """The worker's side of the conversation with the coordinator.

    Its threads (`threads()`): the heartbeat, the delivery of buffered results, the "ahead" lane (the rendering
    report and the prefetch claim, which must not hold up the loop) and the log shipper.
    """

    def __init__(self, client: CoordinatorClient, settings: WorkerSettings, control: Control) -> None:
        self.client = client
        self.settings = settings
        self.control = control
        self.held = HeldLeases()
        self.outbox = Outbox(self._send_result)
        self.shipper = LogShipper(
            self._send_log, f"[{settings.name}] ", interval=settings.log_interval, max_backoff=settings.max_backoff
        )
        # Task ids of frames whose result was sent or dropped: the loop removes their files once unused.
        self.settled: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.worker_id: int | None = None
        self.heartbeat_seconds = 2.0
        self.lease_seconds = 15.0
        self.advised_poll_seconds = DEFAULT_POLL_SECONDS
        # A large farm's coordinator asks for the frames' starts and the log lines to ride on heartbeats and claims.
        self.batch_reports = False
        self.starts = PendingStarts()
        self._ahead = Lane("ahead")
        self._heartbeat_stop = threading.Event()
        self._heartbeat_failing = False
        self._last_wait_reason: str | None = None

    def threads(self) -> dict[str, Callable[[], None]]:
        """The reporter's thread bodies by name, for the agent to start."""
        return {
            "heartbeat": self._heartbeat_loop,
            "deliver": self.outbox.run,
            "ahead": self._ahead.run,
            "log-shipper": self.shipper.run,
        }

    @property
    def registered_id(self) -> int:
        """This worker's id on the coordinator; only asked for once registered."""
        if self.worker_id is None:
            raise RuntimeError("the worker is not registered yet")
        return self.worker_id

    @property
    def hidden_values(self) -> tuple[str, ...]:
        """Secrets Blender's environment must not hold: the worker's token."""
        token = getattr(self.client, "token", None)
        return (token,) if token else ()

    # -- registration and heartbeat -----------------------------------------------------------------------------

    def register(self) -> bool:
        """Register, retrying while the coordinator is away; False when stopped first.

        Raises RegistrationRefused when the coordinator says no.
        """
        settings = self.settings
        host = settings.host or socket.gethostname()
        cpus = settings.cpu_count or _usable_cpu_count()
        try:
            answer = self._retry(
                "register with the coordinator",
                lambda: self.client.register_worker(
                    settings.name, host, settings.blender_version, cpus, allows_python=settings.allow_python,
                    offered={**(settings.offered or {}), "tags": list(settings.tags)},
                ),
                give_up=lambda: self.control.stopping,
            )
        except GaveUp:
            return False
        except CoordinatorError as exc:
            hint = ("; give the worker token with --token-file FILE (a copy of the coordinator's worker_token) or "
                    "$RENDERQ_TOKEN" if _unauthorized(exc) else "")
            raise RegistrationRefused(
                f"the coordinator refused to register worker {settings.name!r}: {exc}{hint}"
            ) from None
        self.worker_id = int(answer["worker_id"])
        self.take_liveness_advice(answer)
        self.control.set_enabled(bool(answer.get("enabled", True)))
        self.take_poll_advice(answer)
        log.info(
            "registered as worker %s (%s, Blender %s, %d CPUs%s)%s",
            self.worker_id, settings.name, settings.blender_version, cpus,
            ", Python in .blend files allowed" if settings.allow_python else "",
            "" if self.control.enabled else "; it is switched OFF",
        )
        tags = ", ".join(answer.get("tags") or []) or "none"
        log.info("tags: %s%s", tags, " (set by an admin; --tag is not used)" if answer.get("tags_by_admin") else "")
        return True

    def take_liveness_advice(self, answer: dict[str, Any]) -> None:
        """Beat as often as the coordinator asks (a large farm is asked to beat less often) and note how long its
        leases live; values out of sane bounds are clamped."""
        for field, (low, high) in (("heartbeat_seconds", HEARTBEAT_LIMITS), ("lease_seconds", LEASE_LIMITS)):
            advice = answer.get(field)
            if isinstance(advice, (int, float)) and not isinstance(advice, bool) and math.isfinite(advice):
                setattr(self, field, min(high, max(low, float(advice))))
        # Blender's output is shipped as often as the worker beats, or as its own setting asks if that is rarer:
        # a farm too large for a heartbeat a second each is too large for a log post a second each too; on a farm
        # that large, the lines and the frames' starts ride on the heartbeats and claims.
        self.shipper.interval = max(self.settings.log_interval, self.heartbeat_seconds)
        if "batch_reports" in answer:
            self.batch_reports = bool(answer["batch_reports"])
            self.shipper.riding = self.batch_reports

    def take_poll_advice(self, answer: dict[str, Any]) -> None:
        """Remember the coordinator's advised wait between idle claims, clamped to sane bounds."""
        advice = answer.get("poll_seconds")
        if isinstance(advice, (int, float)) and not isinstance(advice, bool) and math.isfinite(advice):
            low, high = POLL_ADVICE_LIMITS
            self.advised_poll_seconds = min(high, max(low, float(advice)))

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(heartbeat_wait(self.heartbeat_seconds)):
            try:
                self._heartbeat_once()
            except Exception:
                log.exception("heartbeat failed")

    def _heartbeat_once(self) -> None:
        """Renew the held leases (the frames' starts and the log lines riding along); take note of revoked ones and
        of the ON/OFF switch."""
        starts = self.starts.take()
        lines = self.shipper.take_ride() if self.shipper.riding else []
        try:
            answer = self.client.update_worker(
                self.registered_id, self.held.ids(), rendering=start_reports(starts),
                logs=[{"task_id": task_id, "text": text} for task_id, _, text in lines])
        except CoordinatorError as exc:
            self.starts.put_back(starts)
            self.shipper.put_back_ride(lines)
            if not self._heartbeat_failing:
                log.warning("heartbeat failed: %s", exc)
            self._heartbeat_failing = True
            return
        self.shipper.ridden(lines)
        if self._heartbeat_failing:
            log.info("heartbeat reaches the coordinator again")
            self._heartbeat_failing = False
        self.take_liveness_advice(answer)
        for lease in self.held.revoke(list(answer.get("revoked") or [])):
            log.warning("lease of %s revoked by the coordinator", lease)
            self.control.wake()
        enabled = bool(answer.get("enabled", True))
        if self.control.set_enabled(enabled):
            log.info("the coordinator switched this worker %s", "ON" if enabled else "OFF")

    # -- claims -------------------------------------------------------------------------------------------------

    def claim(self, prefer_task_id: int | None) -> Lease | None:
        """Claim a frame, retrying while the coordinator is away; None when there is none (or the worker stops)."""
        starts = self.starts.take()
        try:
            answer = self._retry(
                "claim a frame",
                lambda: self.client.claim_frame(self.registered_id, prefer_task_id=prefer_task_id,
                                                rendering=start_reports(starts)),
                give_up=lambda: self.control.stopping,
            )
        except GaveUp:
            self.starts.put_back(starts)
            return None
        except CoordinatorError as exc:
            self.starts.put_back(starts)
            if _unknown_worker(exc):
                log.warning("the coordinator no longer knows this worker (%s); registering again", exc)
                self.held.revoke_all()
                try:
                    self.register()
                except RegistrationRefused as refused:
                    log.error("%s", refused)
            else:
                log.warning("could not claim a frame: %s", exc)
            return None
        claimed = answer.get("frame")
        if not claimed:
            self.take_poll_advice(answer)
            reason = answer.get("wait_reason")
            if reason != self._last_wait_reason:
                log.info("no frame to render%s", f": {reason}" if reason else "")
                self._last_wait_reason = reason
            return None
        self._last_wait_reason = None
        lease = self._hold(claimed)
        log.info("claimed %s (%s, attempt %d)", lease, lease.task_name or "unnamed", lease.attempt)
        return lease

    def claim_ahead(self, current: Lease) -> Future[Lease | None]:
        """Claim the frame to render after `current` (preferring its task) on the ahead lane: one try, after the
        current frame's rendering report; the loop claims in the usual way otherwise."""

        def claim() -> Lease | None:
            if self.control.stopping or not self.control.enabled or current.revoked:
                return None
            starts = self.starts.take()
            try:
                answer = self.client.claim_frame(self.registered_id, prefer_task_id=current.task_id,
                                                 rendering=start_reports(starts), ahead=True)
            except CoordinatorError as exc:
                self.starts.put_back(starts)
                log.debug("prefetch claim failed: %s", exc)
                return None
            claimed = answer.get("frame")
            if not claimed:
                return None
            lease = self._hold(claimed)
            log.info("prefetched %s (%s, attempt %d)", lease, lease.task_name or "unnamed", lease.attempt)
            return lease

        return self._watched(self._ahead.submit(claim))

    def _hold(self, claimed: dict[str, Any]) -> Lease:
        lease = Lease.from_claim(claimed)
        self.held.add(lease)
        return lease

    # -- reports ------------------------------------------------------------------------------------------------

    def report_rendering(self, lease: Lease, wall_time: float) -> Future[None]:
        """Tell the coordinator Blender began the frame, on the ahead lane; retried until the frame ends.

        A 409 means the lease is lost: the lease is marked revoked and the loop stops the render. On a large farm
        the report rides on the next heartbeat or claim instead, and the future is done at once.
        """
        if self.batch_reports:
            self.starts.add(lease, wall_time)
            riding: Future[None] = Future()
            riding.set_result(None)
            return riding

        def report() -> None:
            try:
                self._retry(
                    f"report {lease} rendering",
                    lambda: self.client.update_frame(
                        self.registered_id, lease.task_id, lease.frame, lease.lease_id, "rendering",
                        started_at=wall_time
                    ),
                    give_up=lambda: lease.finished.is_set() or lease.revoked or self.control.stopping,
                )
            except GaveUp:
                return  # the frame ended (its result says the rest), was revoked, or the worker stops
            except CoordinatorError as exc:
                if _lease_lost(exc):
                    log.info("%s: lease lost (%s); stopping its render", lease, exc)
                    self._lose(lease)
                else:
                    log.warning("%s: the coordinator refused the rendering report: %s", lease, exc)

        return self._watched(self._ahead.submit(report))

    def finish(self, result: Result) -> None:
        """Hand a frame's result over; it is sent after every earlier one, and its lease let go of then."""
        self.outbox.put(result)

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to `timeout` until fewer rendered frames than allowed wait for delivery; True once so."""
        return self.outbox.wait_for_room(self.settings.max_undelivered_frames, timeout)

    def log_line(self, task_id: int, line: str) -> None:
        """Queue a line for the task's log on the coordinator; returns at once."""
        self.shipper.add(task_id, line)

    def _send_result(self, result: Result, give_up: Callable[[], bool]) -> None:
        """The outbox's sender: deliver one result, then let go of its lease and its file."""
        lease = result.lease
        self.starts.drop(lease)  # the result says when the frame started
        try:
            if result.after is not None:
                # The rendering report first: it gives up once the frame has ended, so this wait is short.
                futures.wait([result.after], timeout=self.request_seconds())
            if give_up():
                self._abandon(result)
            elif isinstance(result, FrameDone):
                self._deliver(result, give_up)
            elif isinstance(result, FrameFailed):
                self._report_failed(lease, result.error, result.log_tail, give_up)
            else:
                self._give_back(result, give_up)
        except GaveUp:
            self._abandon(result)
        finally:
            if isinstance(result, FrameDone):
                remove_quietly(result.path)
                remove_quietly(result.preview_path)
            self.held.drop(lease)
            self.settled.put(lease.task_id)
            self.shipper.flush()
            self.control.wake()

    def _deliver(self, done: FrameDone, give_up: Callable[[], bool]) -> None:
        """Deliver the frame's file and its done report in one request, fenced by the lease."""
        lease = done.lease
        try:
            self._retry(
                f"deliver {lease}",
                lambda: self.client.finish_frame(
                    self.registered_id, lease.task_id, lease.frame, lease.lease_id, done.path, done.filename,
                    started_at=done.started_at, ended_at=done.ended_at, render_seconds=done.render_seconds,
                    preview_path=done.preview_path,
                ),
                give_up=give_up,
            )
        except OSError as exc:
            log.error("%s: cannot read the rendered file: %s", lease, exc)
            self._report_failed(lease, f"the rendered file could not be read: {exc}", done.log_tail, give_up)
            return
        except CoordinatorError as exc:
            # A 409 is a lost lease or an output name another frame of the task has. Either way the frame is
            # reported failed: with the lease lost, that report is refused in turn and the frame dropped.
            log.error("%s: the coordinator refused the frame's file: %s", lease, exc)
            self._report_failed(lease, f"the coordinator refused the rendered file: {exc}", done.log_tail, give_up)
            return
        seconds = done.render_seconds
        log.info("%s done%s", lease, f" in {seconds:.2f} s" if seconds is not None else "")
        self.shipper.add(lease.task_id, f"frame {lease.frame} done" + (f" in {seconds:.2f} s" if seconds else ""))

    def _report_failed(self, lease: Lease, error: str, log_tail: str, give_up: Callable[[], bool]) -> None:
        self._report(lease, "failed", give_up, error=error, log_tail=(log_tail or "")[-_MAX_LOG_TAIL_CHARS:])

    def _give_back(self, given: FrameGivenBack, give_up: Callable[[], bool]) -> None:
        if self._report(given.lease, "released", give_up, **given.fields):
            log.info("gave back %s: %s", given.lease, given.reason)

    def _report(self, lease: Lease, status: str, give_up: Callable[[], bool], **fields: Any) -> bool:
        """Report a final status of a held frame; True when the coordinator took it."""
        try:
            self._retry(
                f"report {lease} {status}",
                lambda: self.client.update_frame(
                    self.registered_id, lease.task_id, lease.frame, lease.lease_id, status, **fields
                ),
                give_up=give_up,
            )
        except CoordinatorError as exc:
            if _lease_lost(exc):
                log.info("%s: lease lost before the %s report (%s); dropped", lease, status, exc)
                self._lose(lease)
            else:
                log.error("%s: the coordinator refused the %s report: %s", lease, status, exc)
            return False
        return True

    def _abandon(self, result: Result) -> None:
        if result.lease.revoked:
            log.info("%s: lease lost; its result dropped", result.lease)
        else:
            log.warning("%s: could not tell the coordinator in time; its lease will expire there", result.lease)

    def _lose(self, lease: Lease) -> None:
        self.held.revoke([lease.lease_id])
        lease.revoked = True
        self.control.wake()

    # -- files and logs -----------------------------------------------------------------------------------------

    def download_file(self, sha256: str, dest_path: str, give_up: Callable[[], bool]) -> None:
        """Download a stored file to `dest_path`, retrying while the coordinator is away."""
        self._retry(f"download file {sha256[:12]}", lambda: self.client.download_file(sha256, dest_path),
                    give_up=give_up)

    def task_manifest(self, task_id: int, give_up: Callable[[], bool]) -> Any:
        """The task's tree of files, retrying while the coordinator is away."""
        # Clients from before task trees lack task_manifest(); the generic request speaks the same API.
        method = getattr(self.client, "task_manifest", None)

        def fetch() -> Any:
            if callable(method):
                return method(task_id)
            return self.client.request("GET", "/task_manifest", params={"task_id": task_id})

        return self._retry(f"fetch the manifest of task {task_id}", fetch, give_up=give_up)

    def video_frames(self, task_id: int, give_up: Callable[[], bool]) -> list[dict[str, Any]]:
        """Every rendered frame the task's video is made of, in order (a page at a time), retrying while the
        coordinator is away."""
        frames: list[dict[str, Any]] = []
        after: int | None = None
        while True:
            page = self._retry(f"list the frames of task {task_id}'s video",
                               functools.partial(self.client.video_frames, task_id, after), give_up=give_up)
            frames += list(page.get("frames") or [])
            after = page.get("frames_next")
            if after is None:
                return frames

    def _send_log(self, task_id: int, text: str) -> None:
        self.client.append_log(task_id, self.registered_id, text)

    # -- shutdown -----------------------------------------------------------------------------------------------

    def close(self, deadline: float) -> None:
        """Send the buffered results until `deadline` (time.monotonic()), flush the logs, stop the threads."""
        left = self.outbox.drain(deadline)
        if left:
            log.warning("%d result%s not delivered before the worker stopped; their leases will expire on the "
                        "coordinator", left, "" if left == 1 else "s")
        self._ahead.close()
        self.shipper.close(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        self._heartbeat_stop.set()

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _watched(self, future: Future[T]) -> Future[T]:
        """The loop is woken when the future is done."""
        future.add_done_callback(lambda _future: self.control.wake())
        return future

    def request_seconds(self) -> float:
        """The longest one request to the coordinator may take, with a margin."""
        return float(getattr(self.client, "timeout", 30.0)) + 5.0

    def _retry(self, what: str, call: Callable[[], T], *, give_up: Callable[[], bool]) -> T:
        return retry(what, call, give_up=give_up, max_backoff=self.settings.max_backoff)


def _usable_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
