"""The worker's results on their way to the coordinator, kept in order while it cannot be reached.

A result is a held frame's last word: rendered (its file, then "done"), failed, or given back. The loop hands each
one over and goes on; one thread sends them oldest first, each retried until the coordinator takes it, its lease is
known lost (it is dropped then), or a stopping worker's time runs out. A result never overtakes an older one, so a
coordinator that comes back sees this worker's frames end in the order they ended here.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from worker.lease import Lease

__all__ = ["FrameDone", "FrameFailed", "FrameGivenBack", "Outbox", "Result"]

log = logging.getLogger("renderq.worker")


@dataclass
class FrameDone:
    """A rendered frame: its file goes up, then the frame is reported done."""

    lease: Lease
    # Where the file waits (a name of its own, so a later render of the same frame cannot overwrite it) and the name
    # Blender gave it, which the coordinator keeps.
    path: str
    filename: str
    started_at: float | None
    ended_at: float | None
    render_seconds: float | None
    log_tail: str = ""
    # The frame's "rendering" report, which must reach the coordinator before "done".
    after: Future | None = None
    # A small PNG of the frame (for a format a browser cannot show), delivered in the same request.
    preview_path: str | None = None


@dataclass
class FrameFailed:
    """A frame that could not be rendered here, with the reason and Blender's last lines."""

    lease: Lease
    error: str
    log_tail: str = ""
    after: Future | None = None


@dataclass
class FrameGivenBack:
    """A frame handed back unrendered; `fields` go with the report (e.g. needs_python)."""

    lease: Lease
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)
    after: Future | None = None


Result = FrameDone | FrameFailed | FrameGivenBack


class Outbox:
    """An ordered buffer of results and the thread that sends them with `send(result, give_up)`.

    `send` owns the result once called: it retries while `give_up()` is false and cleans up after it.
    """

    def __init__(self, send: Callable[[Result, Callable[[], bool]], None]) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._queue: deque[Result] = deque()
        # Once set (a stopping worker), results still here when it passes are abandoned.
        self._deadline: float | None = None
        self._closed = False

    def put(self, result: Result) -> None:
        """Queue a result behind every earlier one; returns at once."""
        with self._cond:
            self._queue.append(result)
            self._cond.notify_all()

    def undelivered_frames(self) -> int:
        """Rendered frames queued or being sent."""
        with self._cond:
            return sum(isinstance(result, FrameDone) for result in self._queue)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Wait up to `timeout` until fewer than `limit` rendered frames are on their way; True once so."""
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(isinstance(result, FrameDone) for result in self._queue) < limit, timeout=timeout
            )

    def pending(self) -> int:
        """Results not yet sent (or given up on)."""
        with self._cond:
            return len(self._queue)

    def run(self) -> None:
        """The sending thread: send the oldest result, then the next, until `close()`."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                # The result stays queued while it is sent: it still counts as on its way.
                result = self._queue[0]
            try:
                self._send(result, functools.partial(self._give_up, result))
            except Exception:
                log.exception("%s: sending its result failed; its lease will run out on the coordinator", result.lease)
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def drain(self, deadline: float) -> int:
        """Send what is queued until `deadline` (time.monotonic()), then stop the thread; returns how many results
        were abandoned."""
        with self._cond:
            self._deadline = deadline
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._queue, timeout=max(0.0, deadline - time.monotonic()))
            left = len(self._queue)
            self._closed = True
            self._cond.notify_all()
        return left

    def _give_up(self, result: Result) -> bool:
        deadline = self._deadline
        return result.lease.revoked or (deadline is not None and time.monotonic() >= deadline)
