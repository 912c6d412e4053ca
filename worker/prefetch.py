"""When to claim the next frame: shortly before the current one is expected to end, judged from the last frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

__all__ = ["PrefetchTimer", "claim_ahead_after"]

# The next frame is claimed this long before the current one is expected to end (seconds, plus a fraction of the
# expected frame time): enough for a claim to come back. A heavy frame after light ones ends later than expected; so
# that the task's last frames still go to whichever worker is free first, the claim says it is ahead and the
# coordinator keeps them from it (coordinator.claim_order.withheld_from_ahead_claim).
_PREFETCH_LEAD_SECONDS = 0.5
_PREFETCH_LEAD_FRACTION = 0.1


def claim_ahead_after(recent_seconds: Sequence[float]) -> float:
    """Seconds after a frame begins that its worker claims the next one, given the exact render times of the
    worker's frames of the task before it (the last two count): the frame is expected to take as long as the
    shorter of those two, since a session's first frame takes longer (Blender sets up the renderer), less the lead.
    0, at once, when there is nothing to expect from. benchmarks/eta_model.py simulates workers by it."""
    if not recent_seconds:
        return 0.0
    expected = min(recent_seconds[-2:])
    return max(0.0, expected - _PREFETCH_LEAD_SECONDS - _PREFETCH_LEAD_FRACTION * expected)


class PrefetchTimer:
    """Remembers the exact render times of the last two frames of one task on this worker, and tells from them when
    to claim the frame after the one rendering now. Safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (task id, exact seconds of its last two frames rendered here).
        self._frame_times: tuple[int, list[float]] | None = None

    def note(self, task_id: int, seconds: float) -> None:
        """Record the exact render time of a frame of `task_id`; a frame of another task starts the record anew."""
        with self._lock:
            earlier = self._frame_times[1][-1:] if self._frame_times and self._frame_times[0] == task_id else []
            self._frame_times = (task_id, [*earlier, seconds])

    def delay(self, task_id: int, wall_time: float) -> float:
        """Seconds from now until the next frame should be claimed, for a frame of `task_id` that Blender began at
        `wall_time` (time.time()): a lead before the frame is expected to end, or 0 when there is nothing to expect
        it from.

        The rule is claim_ahead_after's; claiming a little early costs nothing.
        """
        with self._lock:
            times = self._frame_times
        if times is None or times[0] != task_id:
            return 0.0
        # wall_time is Blender's clock at render_pre: the same machine's clock as ours.
        return max(0.0, wall_time + claim_ahead_after(times[1]) - time.time())
