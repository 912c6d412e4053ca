"""Batch Blender's output lines and send them to the coordinator's task logs from a background thread.

Rendering must never wait on the network, so `add` only appends to a buffer; a sender thread posts the buffered
lines about once a second, in order, and keeps them (up to a cap) while the coordinator cannot be reached.

On a large farm (`riding`), the lines go with the worker's heartbeats instead (`take_ride`): the sender thread then
posts only a backlog too large for one heartbeat, and what is left when the worker stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

from renderq.http_client import CoordinatorError
from worker.retry import retryable

__all__ = ["LogShipper"]

log = logging.getLogger("renderq.worker.log")

# One request should stay small enough for the coordinator to take at once, even after a long outage.
_MAX_REQUEST_CHARS = 256 * 1024


class LogShipper:
    """Collects log lines per task and sends them with `send(task_id, text)` in batches.

    `prefix` starts every line (e.g. "[node-01] ") so a task's log shows which worker said what.
    """

    def __init__(
        self,
        send: Callable[[int, str], object],
        prefix: str = "",
        *,
        interval: float = 1.0,
        max_backoff: float = 10.0,
        max_buffer_chars: int = 4 * 1024 * 1024,
    ) -> None:
        self._send = send
        self._prefix = prefix
        self._interval = interval
        self._max_backoff = max_backoff
        self._max_buffer_chars = max_buffer_chars
        self._cond = threading.Condition()
        # Entries are (sequence number, task id, line); numbers let flush() wait for what came before it.
        self._pending: deque[tuple[int, int, str]] = deque()
        self._pending_chars = 0
        self._added_seq = 0
        self._done_seq = 0
        self._dropped: dict[int, int] = {}
        self._wake = False
        # A flush that waits for its lines (close, tests) sends even while the lines ride on heartbeats.
        self._must_send = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.riding = False

    @property
    def interval(self) -> float:
        """Seconds between sends while lines keep coming."""
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        # Read by the sender at its next wait: a new interval applies from the send after next.
        self._interval = seconds

    def start(self) -> None:
        """Start the sender thread (for a shipper used on its own; the worker agent runs `run` itself)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="log-shipper", daemon=True)
            self._thread.start()

    def add(self, task_id: int, line: str) -> None:
        """Queue one line for the task's log; returns at once."""
        text = self._prefix + line.rstrip("\r\n") + "\n"
        with self._cond:
            self._added_seq += 1
            self._pending.append((self._added_seq, task_id, text))
            self._pending_chars += len(text)
            while self._pending_chars > self._max_buffer_chars and len(self._pending) > 1:
                # A long outage would otherwise eat the worker's memory; the oldest lines matter least.
                seq, dropped_task, dropped_text = self._pending.popleft()
                self._pending_chars -= len(dropped_text)
                self._dropped[dropped_task] = self._dropped.get(dropped_task, 0) + 1
                self._done_seq = max(self._done_seq, seq)

    def flush(self, timeout: float = 0.0) -> bool:
        """Ask the sender to send now; with `timeout`, wait up to that long for every line queued so far.

        Returns True when those lines were sent (or given up on), False on timeout.
        """
        with self._cond:
            target = self._added_seq
            self._wake = True
            self._must_send = self._must_send or timeout > 0
            self._cond.notify_all()
            if timeout <= 0:
                return self._done_seq >= target
            return self._cond.wait_for(lambda: self._done_seq >= target, timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is left (waiting at most `timeout` seconds) and stop the sender thread."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, timeout))

    # -- sender thread ------------------------------------------------------------------------------------------

    def run(self) -> None:
        """The sender: post the buffered lines about every `interval` seconds until `close()`."""
        delay = self._interval
        failures = 0
        next_try = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wake or self._closing, timeout=delay)
                self._wake = False
                if self._closing:
                    return
                if self.riding and not self._must_send and self._pending_chars < _MAX_REQUEST_CHARS:
                    continue  # the heartbeats carry the lines
                self._must_send = False
                if time.monotonic() < next_try:
                    # Still backing off after a failure: an early flush must not hammer a coordinator that is down.
                    delay = next_try - time.monotonic()
                    continue
            if self._send_pending():
                failures = 0
                delay = self._interval
                next_try = 0.0
            else:
                failures += 1
                delay = min(self._max_backoff, self._interval * (2 ** failures))
                next_try = time.monotonic() + delay

    def _send_pending(self) -> bool:
        """Send the buffered lines batch by batch; False when the coordinator could not take them (kept for later)."""
        while True:
            with self._cond:
                if not self._pending:
                    return True
                task_id, last_seq, text = self._take_batch()
            try:
                self._send(task_id, text)
            except CoordinatorError as exc:
                if retryable(exc):
                    with self._cond:
                        self._put_back(task_id, last_seq, text)
                    log.debug("log lines for task %s kept for later: %s", task_id, exc)
                    return False
                # Refused for good (task gone, bad request): retrying would fail the same way.
                log.warning("the coordinator refused log lines for task %s: %s", task_id, exc)
            except Exception:
                log.exception("could not send log lines for task %s", task_id)
            with self._cond:
                self._done_seq = max(self._done_seq, last_seq)
                self._cond.notify_all()

    def take_ride(self) -> list[tuple[int, int, str]]:
        """Take the buffered lines (one heartbeat's worth at most) to send with a heartbeat: (task id, last sequence
        number, text) per run of one task's lines. Hand them back with `ridden` or `put_back_ride`."""
        batches: list[tuple[int, int, str]] = []
        size = 0
        with self._cond:
            while self._pending and size < _MAX_REQUEST_CHARS:
                batch = self._take_batch(_MAX_REQUEST_CHARS - size)
                batches.append(batch)
                size += len(batch[2])
        return batches

    def ridden(self, batches: list[tuple[int, int, str]]) -> None:
        """The heartbeat that carried these batches was answered: they are sent."""
        if batches:
            with self._cond:
                self._done_seq = max(self._done_seq, max(last_seq for _, last_seq, _ in batches))
                self._cond.notify_all()

    def put_back_ride(self, batches: list[tuple[int, int, str]]) -> None:
        """The heartbeat that carried these batches failed: they go back to the front, in order."""
        with self._cond:
            for task_id, last_seq, text in reversed(batches):
                self._put_back(task_id, last_seq, text)

    def _take_batch(self, max_chars: int = _MAX_REQUEST_CHARS) -> tuple[int, int, str]:
        """Pop the longest run of lines of one task (bounded in size); caller holds the lock."""
        seq, task_id, text = self._pending.popleft()
        parts = [text]
        size = len(text)
        last_seq = seq
        while self._pending and self._pending[0][1] == task_id:
            if size + len(self._pending[0][2]) > max_chars:
                break
            last_seq, _, text = self._pending.popleft()
            parts.append(text)
            size += len(text)
        self._pending_chars -= size
        dropped = self._dropped.pop(task_id, 0)
        if dropped:
            parts.insert(0, f"{self._prefix}({dropped} log lines lost while the coordinator could not be reached)\n")
        return task_id, last_seq, "".join(parts)

    def _put_back(self, task_id: int, last_seq: int, text: str) -> None:
        # The batch goes back whole, at the front, so the log keeps its order.
        self._pending.appendleft((last_seq, task_id, text))
        self._pending_chars += len(text)
