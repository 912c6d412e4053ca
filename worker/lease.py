"""A frame this worker holds (a lease), as read from the coordinator's answer to a claim."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Lease"]


@dataclass(eq=False)
class Lease:
    """One frame this worker holds, as handed out by the coordinator's claim."""

    task_id: int
    frame: int
    lease_id: str
    task_name: str
    blend_sha256: str
    blend_filename: str
    settings: dict[str, Any]
    attempt: int = 1
    # The main .blend's path inside the task's tree; None from coordinators that send one .blend per task.
    main_file: str | None = None
    # The task's limits in seconds (None: no limit), and whether it is marked as needing the file's Python.
    frame_timeout: float | None = None
    no_progress_timeout: float | None = None
    needs_python: bool = False
    revoked: bool = False
    started_at: float | None = None
    # Set when Blender is done with the frame, so background retries of the "rendering" report stop.
    finished: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_claim(cls, claimed: dict[str, Any]) -> "Lease":
        """Build a lease from the `frame` object of a claim answer."""
        return cls(
            task_id=int(claimed["task_id"]),
            frame=int(claimed["frame"]),
            lease_id=str(claimed["lease_id"]),
            task_name=str(claimed.get("task_name") or ""),
            blend_sha256=str(claimed["blend_sha256"]),
            blend_filename=str(claimed["blend_filename"]),
            settings=dict(claimed.get("settings") or {}),
            attempt=int(claimed.get("attempt") or 1),
            main_file=str(claimed["main_file"]) if claimed.get("main_file") else None,
            frame_timeout=_positive_seconds(claimed.get("frame_timeout")),
            no_progress_timeout=_positive_seconds(claimed.get("no_progress_timeout")),
            needs_python=claimed.get("needs_python") is True,
        )

    def __str__(self) -> str:
        return f"task {self.task_id} frame {self.frame}"


def _positive_seconds(value: Any) -> float | None:
    """A limit from a claim: a positive finite number of seconds, else None (no limit)."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
