"""Finish-time estimates: pure functions of exact frame render times."""

from __future__ import annotations

from collections.abc import Sequence


def estimate_eta(recent_frame_seconds: Sequence[float], frames_left: int, workers_rendering: int) -> float | None:
    """Seconds until the task ends: mean of the recent exact frame times x frames left / workers on it.

    None while no frame has finished, since there is nothing to measure yet.
    """
    if frames_left <= 0:
        return 0.0
    if not recent_frame_seconds:
        return None
    mean = sum(recent_frame_seconds) / len(recent_frame_seconds)
    return mean * frames_left / max(1, workers_rendering)
