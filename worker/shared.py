"""The only state the worker's threads share, each piece with one owner, and the one-thread lanes they run on.

- `Control` (owned by the agent): stop, the coordinator's ON/OFF switch, and a wake-up for the loop.
- `HeldLeases` (owned by the reporter): the frames this worker holds, which the heartbeat renews and revokes.
- `Lane`: one thread running calls one after another, so the loop can watch while Blender or the network works.

Everything else belongs to one thread: the Blender session, the prefetched frame and the task files to the loop;
the buffer of results to the reporter's delivery thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from worker.lease import Lease

__all__ = ["Control", "HeldLeases", "Lane"]

log = logging.getLogger("renderq.worker")

T = TypeVar("T")


class Control:
    """Stop, ON/OFF and wake-up, readable from every thread.

    Its lock is reentrant so that `request_stop` may run inside a signal handler that interrupted the main thread
    while it held the lock.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._stopping = False
        self._enabled = True
        self._woken = False

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stopping

    @property
    def enabled(self) -> bool:
        """Whether the coordinator last said this worker is ON."""
        return self._enabled

    def request_stop(self) -> bool:
        """Ask every thread to stop; False when a stop was asked for already."""
        with self._cond:
            first = not self._stopping
            self._stopping = True
            self._woken = True
            self._cond.notify_all()
        return first

    def set_enabled(self, enabled: bool) -> bool:
        """Record the coordinator's switch; True when it changed (the loop is woken then)."""
        with self._cond:
            changed = enabled != self._enabled
            self._enabled = enabled
            if changed:
                self._woken = True
                self._cond.notify_all()
        return changed

    def wake(self) -> None:
        """End the loop's current wait early: something it watches changed."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def wait(self, seconds: float) -> None:
        """Wait up to `seconds`, less when woken (a wake-up that came before the wait counts)."""
        with self._cond:
            self._cond.wait_for(lambda: self._woken, timeout=max(0.0, seconds))
            self._woken = False


class HeldLeases:
    """The leases this worker holds: claimed and not yet finished, given back or lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, Lease] = {}

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.lease_id] = lease

    def drop(self, lease: Lease) -> None:
        """Forget a lease this worker is done with."""
        with self._lock:
            self._held.pop(lease.lease_id, None)

    def ids(self) -> list[str]:
        """The lease ids held now (what the heartbeat renews)."""
        with self._lock:
            return list(self._held)

    def task_held(self, task_id: int) -> bool:
        """Whether a frame of the task is still held (its files are still needed)."""
        with self._lock:
            return any(lease.task_id == task_id for lease in self._held.values())

    def revoke(self, lease_ids: list[str]) -> list[Lease]:
        """Mark the leases lost and forget them; returns those that were held."""
        lost = []
        with self._lock:
            for lease_id in lease_ids:
                lease = self._held.pop(lease_id, None)
                if lease is not None:
                    lease.revoked = True
                    lost.append(lease)
        return lost

    def revoke_all(self) -> list[Lease]:
        """Mark every held lease lost (the coordinator forgot this worker)."""
        with self._lock:
            lost = list(self._held.values())
            for lease in lost:
                lease.revoked = True
            self._held.clear()
        return lost


class Lane:
    """One thread that runs the calls handed to it in order; `submit` returns their Future at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], Future] | None] = queue.SimpleQueue()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Queue `call`; its Future holds what it returns or raises."""
        future: Future[T] = Future()
        self._calls.put((call, future))
        return future

    def run(self) -> None:
        """The lane's thread: run calls until `close()`."""
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except Exception as exc:  # noqa: BLE001 - handed to whoever waits on the Future, which reports it
                future.set_exception(exc)

    def close(self) -> None:
        """Let the thread end once the calls queued so far have run."""
        self._calls.put(None)
