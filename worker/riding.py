"""The "rendering" reports a large farm's worker sends with its next heartbeat or claim instead of on their own.

A farm of thousands of workers renders hundreds of frames a second; a request of its own for each frame's start
would be a third of the coordinator's load. When the coordinator says `batch_reports`, the reporter keeps each
frame's start here until a call it makes anyway (a heartbeat, a claim) carries it. A frame that ends first needs no
start report: its result carries its exact times.
"""

from __future__ import annotations

import threading

from .lease import Lease

__all__ = ["PendingStarts"]


class PendingStarts:
    """Frames that began rendering and whose start the coordinator has not heard yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: dict[str, tuple[Lease, float]] = {}

    def add(self, lease: Lease, started_at: float) -> None:
        """Blender began the frame of `lease` at `started_at` (wall clock)."""
        with self._lock:
            self._starts[lease.lease_id] = (lease, started_at)

    def drop(self, lease: Lease) -> None:
        """The frame's result is on its way (it says when the frame started): its start report is not needed."""
        with self._lock:
            self._starts.pop(lease.lease_id, None)

    def take(self) -> list[tuple[Lease, float]]:
        """Every start still worth reporting, removed; give them back with `put_back` when the call fails."""
        with self._lock:
            starts = [(lease, started_at) for lease, started_at in self._starts.values()
                      if not lease.finished.is_set() and not lease.revoked]
            self._starts.clear()
        return starts

    def put_back(self, starts: list[tuple[Lease, float]]) -> None:
        """The call that carried `starts` failed: they ride on the next one."""
        with self._lock:
            for lease, started_at in starts:
                self._starts.setdefault(lease.lease_id, (lease, started_at))


def start_reports(starts: list[tuple[Lease, float]]) -> list[dict]:
    """The JSON of `starts` as the heartbeat and the claim carry them."""
    return [{"task_id": lease.task_id, "frame": lease.frame, "lease_id": lease.lease_id, "started_at": started_at}
            for lease, started_at in starts]
