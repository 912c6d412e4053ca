"""A simulated RenderQ worker: one small process that speaks the real worker protocol over HTTP, without Blender.

It registers, heartbeats at the interval the coordinator gives (sending the lease it holds and dropping it when the
answer revokes it), claims frames (POST /frames/claim), reports them "rendering", "renders" by sleeping a random
frame time, and delivers a small valid PNG that names the task, frame and lease in one request with its done report
(POST /frames/finish). Now and then it fails a frame on
purpose (--fail-rate), so the retry path is exercised too. When it finds it was stopped for a while (SIGSTOP, or
starved of CPU), it may report its frame before heartbeating again (--report-first), as a real worker whose
heartbeat thread lags may: the coordinator must then refuse the stale report.

Every done report the coordinator acknowledged is appended to the --acks file as one JSON line
{"task", "frame", "lease", "worker", "sha256", "time"}, flushed and fsynced before anything else happens, so a checker
can count duplicate acknowledged frames even when this process is SIGKILLed right after. A refusal (409: the lease
was lost, e.g. after a kill, a stall or a revoke) is normal under chaos: it is logged and the frame dropped.

With --log-heartbeats it logs every heartbeat's round trip, outcome and lateness (a heartbeat falls due while the
one thread is busy with another call), for latency figures (benchmarks/connections.py).

Standard library and the product's own client (renderq.http_client, as the real worker), one thread, one keep-alive
connection. SIGINT/SIGTERM gives the held frame back and exits 0; the process also stops by
itself after --max-seconds, or when the process that started it is gone.

    python benchmarks/simworker.py --coordinator http://127.0.0.1:5000 --name sim-001 --acks sim-001.acks
"""

from __future__ import annotations

import sys

# Plain HTTP to a coordinator on this machine: keeping ssl (and OpenSSL) out of the process saves about 4 MB in each
# of the hundreds of simulated workers a soak runs. http.client imports ssl only if it can. Only when run as a
# program: a process that imports this module (the soak, for frame_png) keeps its ssl.
if __name__ == "__main__" and "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]  # None there makes `import ssl` fail

import argparse
import json
import os
import random
import signal
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

# Run as a script from benchmarks/: the product's client comes from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from renderq.http_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnreachable,
    LeaseLost,
    NotFound,
    Unavailable,
)

__all__ = ["SimWorker", "frame_png", "main"]

# Longest wait between retries of a call the coordinator could not answer.
MAX_BACKOFF = 5.0
# The finest sleep: how quickly a stop request or a due heartbeat is noticed.
TICK = 0.25
# Waking up this much later than asked means the process was stopped or starved meanwhile.
STALL_SECONDS = 2.0


def frame_png(task_id: int, frame: int, lease_id: str, size: int = 8) -> bytes:
    """A small valid grey PNG whose tEXt chunk names the task, frame and lease: each frame's file is unique.

    The checker recomputes it to tell that the coordinator kept the file of the acknowledged lease.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    grey = (frame * 37) % 256
    rows = b"".join(b"\x00" + bytes([grey]) * size for _ in range(size))
    text = f"renderq-sim\x00task={task_id} frame={frame} lease={lease_id}".encode("ascii")
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"tEXt", text)
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


class Stopping(Exception):
    """A retried call was abandoned because the worker is stopping or its lease is gone."""


class Coordinator:
    """The worker's client (renderq.http_client) with each call timed: a slow answer is logged."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0, slow_seconds: float = 2.0,
                 on_slow: Callable[[str], None] | None = None) -> None:
        if not url.startswith("http://") and "://" in url:
            raise ValueError(f"the coordinator address {url!r} must be an http:// URL")
        self.client = CoordinatorClient(url, timeout=timeout, token=token)
        self.slow_seconds = slow_seconds
        self.on_slow = on_slow

    def timed(self, what: str, call: Callable[[], dict]) -> dict:
        """Make one call; log it as slow when its answer (or its failure) took `slow_seconds` or more."""
        started = time.monotonic()
        outcome = "ok"
        try:
            return call()
        except CoordinatorError as error:
            outcome = f"HTTP {error.status}" if error.status else "no answer"
            raise
        finally:
            elapsed = time.monotonic() - started
            if elapsed >= self.slow_seconds and self.on_slow is not None:
                self.on_slow(f"{what} took {elapsed:.2f} s ({outcome})")


def failure_kind(error: CoordinatorUnreachable) -> str:
    """The name of the socket error behind an unreachable coordinator (TimeoutError, ConnectionRefusedError...)."""
    return type(error.__cause__).__name__ if error.__cause__ is not None else "unreachable"


class Lease:
    """The one frame this worker holds."""

    def __init__(self, claimed: dict, render_seconds: float) -> None:
        self.task_id = int(claimed["task_id"])
        self.frame = int(claimed["frame"])
        self.lease_id = str(claimed["lease_id"])
        self.render_seconds = render_seconds
        self.started_at = time.time()
        self.render_ends = time.monotonic() + render_seconds
        self.revoked = False

    def __str__(self) -> str:
        return f"task {self.task_id} frame {self.frame}"


class SimWorker:
    """The worker loop. `run()` returns the exit code once stopped."""

    def __init__(self, coordinator: Coordinator, name: str, acks_path: str, *, frame_min: float, frame_max: float,
                 fail_rate: float = 0.0, report_first: float = 0.5, poll_seconds: float = 2.0,
                 max_seconds: float = 3600.0, blender_version: str = "3.4.1", seed: int | None = None,
                 log_heartbeats: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.coordinator = coordinator
        self.name = name
        self.acks_path = acks_path
        self.frame_min = frame_min
        self.frame_max = frame_max
        self.fail_rate = fail_rate
        self.report_first = report_first
        # The lease to report before heartbeating again, after a stall.
        self.report_before_heartbeat: Lease | None = None
        self.poll_seconds = poll_seconds
        self.log_heartbeats = log_heartbeats
        self.blender_version = blender_version
        self.deadline = time.monotonic() + max_seconds
        self.random = random.Random(seed)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.worker_id: int | None = None
        self.heartbeat_seconds = 2.0
        self.next_heartbeat = 0.0
        self.lease: Lease | None = None
        self.stop_requested = False
        self.parent_pid = os.getppid()

    # -- control ----------------------------------------------------------------------------------------------------

    def log(self, event: str, text: str = "") -> None:
        """One line: time, worker, event word (refused409, server_error, slow, done, ...), details."""
        self._log(f"{time.time():.3f} {self.name} {event} {text}".rstrip())

    def request_stop(self, *_: object) -> None:
        self.stop_requested = True

    def should_stop(self) -> bool:
        if self.stop_requested:
            return True
        if time.monotonic() > self.deadline:
            self.log("stopping", "--max-seconds reached")
            self.stop_requested = True
        elif os.getppid() != self.parent_pid:
            self.log("stopping", "the process that started this worker is gone")
            self.stop_requested = True
        return self.stop_requested

    # -- the loop ---------------------------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.register()
            while not self.should_stop():
                self.heartbeat_if_due()
                if self.lease is None:
                    if not self.claim():
                        self.sleep_until(time.monotonic() + self.poll_seconds * self.random.uniform(0.75, 1.25))
                elif self.lease.revoked:
                    self.log("dropped", f"{self.lease}: lease revoked")
                    self.lease = None
                elif time.monotonic() >= self.lease.render_ends:
                    self.finish(self.lease)
                    self.lease = None
                else:
                    self.sleep_until(self.lease.render_ends)
        except Stopping:
            pass
        except CoordinatorError as error:
            self.log("fatal", f"the coordinator refused this worker: {error}")
            return 1
        self.give_back()
        self.log("stopped")
        return 0

    def sleep_until(self, until: float) -> None:
        """Sleep until `until` (monotonic), waking for due heartbeats and stop requests."""
        while not self.should_stop():
            now = time.monotonic()
            if now >= until:
                return
            self.heartbeat_if_due()
            nap = max(0.0, min(TICK, until - now, self.next_heartbeat - now))
            time.sleep(nap)
            late = time.monotonic() - (now + nap)
            if late >= STALL_SECONDS and self.lease is not None and self.random.random() < self.report_first:
                # The process was stopped (or starved) meanwhile. A real worker's report can then race its
                # heartbeat thread; here the report goes first, so the coordinator must refuse a stale one.
                self.report_before_heartbeat = self.lease
                self.log("stalled", f"woke {late:.1f} s late; {self.lease} is reported before the next heartbeat")

    def retrying(self, what: str, call: Callable[[], dict], lease: Lease | None = None) -> dict:
        """Call until answered, backing off while the coordinator is unreachable or failing (5xx).

        Refusals (4xx: typed errors of renderq.http_client) are raised; Stopping when the worker stops or `lease` is
        revoked meanwhile.
        """
        delay = 0.25
        while True:
            try:
                return self.coordinator.timed(what, call)
            except CoordinatorUnreachable as error:
                self.log("unreachable", f"{what}: {error}")
            except Unavailable as error:
                self.log("server_error", f"{what}: {error}")
            until = time.monotonic() + delay * self.random.uniform(0.5, 1.0)
            self.sleep_until(until)
            if self.stop_requested or (lease is not None and lease.revoked):
                raise Stopping()
            delay = min(delay * 2, MAX_BACKOFF)

    # -- protocol ---------------------------------------------------------------------------------------------------

    def register(self) -> None:
        client = self.coordinator.client
        answer = self.retrying("register", lambda: client.register_worker(self.name, socket.gethostname(),
                                                                          self.blender_version, 1))
        self.worker_id = int(answer["worker_id"])
        self.heartbeat_seconds = float(answer.get("heartbeat_seconds") or self.heartbeat_seconds)
        self.next_heartbeat = time.monotonic() + self.heartbeat_seconds
        self.lease = None
        self.log("registered", f"worker_id={self.worker_id} heartbeat={self.heartbeat_seconds:g}s")

    def heartbeat_if_due(self) -> None:
        if time.monotonic() < self.next_heartbeat or self.worker_id is None:
            return
        if self.lease is not None and self.lease is self.report_before_heartbeat:
            return
        due = self.next_heartbeat
        self.next_heartbeat = time.monotonic() + self.heartbeat_seconds
        leases = [self.lease.lease_id] if self.lease is not None and not self.lease.revoked else []
        started = time.monotonic()
        worker_id = self.worker_id
        try:
            answer = self.coordinator.timed("heartbeat",
                                            lambda: self.coordinator.client.update_worker(worker_id, leases))
        except CoordinatorUnreachable as error:
            self.time_heartbeat(due, started, failure_kind(error))
            self.log("unreachable", f"heartbeat: {error}")
            return
        except NotFound as error:
            self.time_heartbeat(due, started, f"http{error.status}")
            self.log("unknown", f"heartbeat: {error}; registering again")
            self.forget_lease()
            self.register()
            return
        except CoordinatorError as error:
            self.time_heartbeat(due, started, f"http{error.status}")
            self.log("server_error" if isinstance(error, Unavailable) else "refused", f"heartbeat: {error}")
            return
        self.time_heartbeat(due, started, "ok")
        revoked = set(answer.get("revoked") or [])
        if self.lease is not None and self.lease.lease_id in revoked:
            self.lease.revoked = True
            self.log("revoked", f"{self.lease} lease={self.lease.lease_id}")

    def time_heartbeat(self, due: float, started: float, outcome: str) -> None:
        """With --log-heartbeats, log the heartbeat's round trip from `started`, failures included, and how late it
        started after it was `due` (both monotonic): a worker blocked in another call sends its heartbeat late."""
        if self.log_heartbeats:
            now = time.monotonic()
            self.log("heartbeat", f"{(now - started) * 1000:.1f} ms {outcome} late {(started - due) * 1000:.1f} ms")

    def forget_lease(self) -> None:
        if self.lease is not None:
            self.lease.revoked = True
            self.lease = None

    def claim(self) -> bool:
        """Claim a frame and report it rendering; False when there was nothing to claim."""
        worker_id = self.worker_id
        try:
            answer = self.retrying("claim", lambda: self.coordinator.client.claim_frame(worker_id))
        except NotFound as error:
            self.log("unknown", f"claim: {error}; registering again")
            self.register()
            return False
        claimed = answer.get("frame")
        if not claimed:
            return False
        lease = Lease(claimed, self.random.uniform(self.frame_min, self.frame_max))
        self.lease = lease
        self.log("claimed", f"{lease} lease={lease.lease_id} attempt={claimed.get('attempt')}")
        self.report(lease, "rendering", started_at=lease.started_at)
        return True

    def report(self, lease: Lease, status: str, **fields: Any) -> bool:
        """POST /update_task; True when accepted, False (and the lease dropped) when the lease was lost (409)."""
        worker_id = self.worker_id
        try:
            self.retrying(f"report {lease} {status}", lambda: self.coordinator.client.update_frame(
                worker_id, lease.task_id, lease.frame, lease.lease_id, status, **fields), lease)
        except Stopping:
            if self.stop_requested:
                raise
            return False
        except LeaseLost as error:
            self.log("refused409", f"{status} report of {lease} lease={lease.lease_id}: {error}")
            lease.revoked = True
            return False
        return True

    def finish(self, lease: Lease) -> None:
        """The fake render ended: fail it on purpose now and then, else deliver the frame (file and done report in
        one request)."""
        if self.random.random() < self.fail_rate:
            if self.report(lease, "failed", error="simulated render failure", log_tail="simulated"):
                self.log("failed", str(lease))
            return
        png = frame_png(lease.task_id, lease.frame, lease.lease_id)
        params = {"worker_id": self.worker_id, "task_id": lease.task_id, "frame": lease.frame,
                  "lease_id": lease.lease_id, "filename": f"f_{lease.frame:04d}.png", "started_at": lease.started_at,
                  "ended_at": time.time(), "render_seconds": lease.render_seconds}
        try:
            finished = self.retrying(f"finish {lease}", lambda: self.coordinator.client.request(
                "POST", "/frames/finish", params=params, data=png, lease_fenced=True), lease)
        except Stopping:
            if self.stop_requested:
                raise
            return
        except LeaseLost as error:
            self.log("refused409", f"done report of {lease} lease={lease.lease_id}: {error}")
            lease.revoked = True
            return
        self.acknowledge(lease, (finished.get("frame") or {}).get("output_sha256") or "")

    def acknowledge(self, lease: Lease, sha256: str) -> None:
        """Record an acknowledged done report durably before doing anything else."""
        line = json.dumps({"task": lease.task_id, "frame": lease.frame, "lease": lease.lease_id,
                           "worker": self.name, "sha256": sha256, "time": time.time()}) + "\n"
        fd = os.open(self.acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.log("done", f"{lease} lease={lease.lease_id}")

    def give_back(self) -> None:
        """On a graceful stop, release the held frame so it need not wait for its lease to expire."""
        lease, self.lease = self.lease, None
        if lease is None or lease.revoked or self.worker_id is None:
            return
        try:
            self.coordinator.client.update_frame(self.worker_id, lease.task_id, lease.frame, lease.lease_id,
                                                 "released")
            self.log("released", str(lease))
        except CoordinatorUnreachable as error:
            self.log("unreachable", f"release of {lease}: {error}")
        except CoordinatorError as error:
            self.log("refused409" if isinstance(error, LeaseLost) else "refused",
                     f"release of {lease} lease={lease.lease_id}: {error}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simworker.py", description="Run one simulated RenderQ worker (no Blender) against a coordinator.")
    parser.add_argument("--coordinator", required=True, metavar="URL",
                        help="the coordinator's address, e.g. http://127.0.0.1:5000 (plain HTTP only)")
    parser.add_argument("--name", required=True, help="this worker's name, unique on the farm")
    parser.add_argument("--token", default=None,
                        help="the worker token, sent as 'Authorization: Bearer' (default: $RENDERQ_TOKEN)")
    parser.add_argument("--acks", required=True, metavar="FILE",
                        help="file to append one JSON line to per acknowledged done report (fsynced)")
    parser.add_argument("--frame-min", type=float, default=1.0, metavar="SECONDS",
                        help="shortest fake frame time (default 1.0)")
    parser.add_argument("--frame-max", type=float, default=3.0, metavar="SECONDS",
                        help="longest fake frame time (default 3.0)")
    parser.add_argument("--fail-rate", type=float, default=0.0, metavar="P",
                        help="probability that a frame is reported failed instead of done (default 0)")
    parser.add_argument("--report-first", type=float, default=0.5, metavar="P",
                        help="after a stall (the process was stopped or starved for 2 s or more), the probability that "
                        "it reports its frame before heartbeating again, as a real worker whose heartbeat thread lags "
                        "may (default 0.5)")
    parser.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between claims while there is nothing to render (default 2.0)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds to wait for each answer (default 30)")
    parser.add_argument("--slow", type=float, default=2.0, metavar="SECONDS",
                        help="log each request whose answer took at least this long (default 2.0)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, metavar="SECONDS",
                        help="stop by itself after this long (default 3600)")
    parser.add_argument("--blender-version", default="3.4.1", metavar="VERSION",
                        help="the Blender version this worker claims to have; it gets frames of tasks saved by that "
                        "version or older (default 3.4.1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for frame times and failures")
    parser.add_argument("--log-heartbeats", action="store_true",
                        help="log every heartbeat's round trip in milliseconds, its outcome (ok, http404, "
                        "TimeoutError, ...) and how late it was sent, for latency figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.frame_min <= args.frame_max:
        print("simworker: --frame-min must be more than 0 and at most --frame-max", file=sys.stderr)
        return 2
    if not 0 <= args.fail_rate < 1:
        print("simworker: --fail-rate must be at least 0 and below 1", file=sys.stderr)
        return 2
    if not 0 <= args.report_first <= 1:
        print("simworker: --report-first must be between 0 and 1", file=sys.stderr)
        return 2
    token = args.token if args.token is not None else os.environ.get("RENDERQ_TOKEN")
    try:
        coordinator = Coordinator(args.coordinator, token, args.timeout, args.slow)
    except ValueError as error:
        print(f"simworker: {error}", file=sys.stderr)
        return 2
    worker = SimWorker(coordinator, args.name, args.acks, frame_min=args.frame_min, frame_max=args.frame_max,
                       fail_rate=args.fail_rate, report_first=args.report_first, poll_seconds=args.poll,
                       max_seconds=args.max_seconds,
                       blender_version=args.blender_version, seed=args.seed, log_heartbeats=args.log_heartbeats)
    coordinator.on_slow = lambda text: worker.log("slow", text)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
