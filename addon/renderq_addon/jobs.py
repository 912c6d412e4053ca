"""Background jobs: network calls and packing run in threads, their results are applied on the main thread.

A job's `work(progress)` runs in its own thread and must not touch `bpy`. It ends by returning a result or raising;
either goes into a `queue.Queue` together with the job. `drain()` takes them out on the main thread and calls the
job's `on_done(result)` or `on_error(exception)`, which may use `bpy` freely. Progress works the same way, except
that only the latest progress report of a job is kept and at most one wake-up per job waits in the queue, so a
fast upload cannot flood it.

In the interface a `bpy.app.timers` callback calls `drain()` several times a second. Timers never fire in background
mode (`blender -b`), where scripts call `drain(timeout)` themselves.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import bpy

from . import state

ProgressFn = Callable[[Any], None]

# How often the timer drains while jobs run, and while none do (cheap: an empty queue check).
_BUSY_INTERVAL = 0.1
_IDLE_INTERVAL = 0.5


class Job:
    """One unit of background work; its callbacks run on the main thread."""

    def __init__(
        self,
        key: str,
        work: Callable[[ProgressFn], Any],
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_progress: Callable[[Any], None] | None,
    ) -> None:
        self.key = key
        self.work = work
        self.on_done = on_done
        self.on_error = on_error
        self.on_progress = on_progress
        self.started_at = time.monotonic()
        self._lock = threading.Lock()
        self._latest_progress: Any = None
        self._progress_queued = False
        self.thread = threading.Thread(target=self._run, name=f"renderq-{key}", daemon=True)

    def _report_progress(self, payload: Any) -> None:
        """Called by the work, in its thread: keep the latest payload, queue one wake-up at a time."""
        if self.on_progress is None:
            return
        with self._lock:
            self._latest_progress = payload
            if self._progress_queued:
                return  # the main thread has not taken the previous report yet; it will see this one instead
            self._progress_queued = True
        _events.put(("progress", self, None))

    def take_progress(self) -> Any:
        """On the main thread: the latest progress payload, and allow the next wake-up."""
        with self._lock:
            self._progress_queued = False
            return self._latest_progress

    def _run(self) -> None:
        try:
            result = self.work(self._report_progress)
        except BaseException as error:  # noqa: BLE001 - every failure must reach the main thread
            _events.put(("error", self, error))
        else:
            _events.put(("done", self, result))


_events: queue.Queue = queue.Queue()
_running: dict[str, Job] = {}
_after_drain: list[Callable[[], None]] = []


def start(
    key: str,
    work: Callable[[ProgressFn], Any],
    *,
    on_done: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_progress: Callable[[Any], None] | None = None,
) -> bool:
    """Run `work(progress)` in a thread unless a job with the same `key` is still running; False when it is.

    Call on the main thread. The callbacks run on the main thread, from `drain()`.
    """
    if key in _running:
        return False
    job = Job(key, work, on_done, on_error, on_progress)
    _running[key] = job
    job.thread.start()
    return True


def is_running(key: str) -> bool:
    """Whether a job with this key has not finished yet (its result not yet applied)."""
    return key in _running


def running_keys() -> list[str]:
    """The keys of the jobs not finished yet."""
    return list(_running)


def on_drained(callback: Callable[[], None]) -> None:
    """Call `callback()` on the main thread after each drain that applied something (used to redraw panels)."""
    if callback not in _after_drain:
        _after_drain.append(callback)


def _handle(kind: str, job: Job, payload: Any) -> None:
    if _running.get(job.key) is not job:
        return  # a job from before the add-on was re-registered: nobody waits for it any more
    try:
        if kind == "progress":
            if job.on_progress is not None:
                job.on_progress(job.take_progress())
            return
        del _running[job.key]
        if kind == "done":
            job.on_done(payload)
        else:
            job.on_error(payload)
    except Exception as error:  # noqa: BLE001 - one faulty callback must not stop the others
        traceback.print_exc()
        state.set_error(f"RenderQ add-on error while handling {job.key}: {error}")


def drain(timeout: float = 0.0) -> bool:
    """Apply finished jobs' results on the calling (main) thread.

    Waits up to `timeout` seconds for running jobs to finish, applying results as they come. Returns True when
    no job is left running.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    handled = False
    while True:
        try:
            while True:
                kind, job, payload = _events.get_nowait()
                _handle(kind, job, payload)
                handled = True
        except queue.Empty:
            pass
        remaining = deadline - time.monotonic()
        if not _running or remaining <= 0:
            break
        try:
            kind, job, payload = _events.get(timeout=remaining)
        except queue.Empty:
            break
        _handle(kind, job, payload)
        handled = True
    if handled:
        for callback in _after_drain:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a redraw problem must not break the job machinery
                traceback.print_exc()
    return not _running


def _timer() -> float:
    drain(0.0)
    return _BUSY_INTERVAL if _running else _IDLE_INTERVAL


def register() -> None:
    """Start the timer that applies job results while the interface runs."""
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=_IDLE_INTERVAL, persistent=True)


def unregister() -> None:
    """Stop the timer and drop running jobs: their threads end on their own, their results are ignored."""
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    _running.clear()
    _after_drain.clear()
    try:
        while True:
            _events.get_nowait()
    except queue.Empty:
        pass
