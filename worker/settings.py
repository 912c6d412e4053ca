"""What a worker is told by its owner: built by `renderq worker` (worker/command_line.py) or by a test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.cache import DEFAULT_CACHE_SIZE

__all__ = ["DEFAULT_POLL_SECONDS", "WorkerSettings"]

# How long an idle worker waits between claims when neither its owner nor the coordinator says otherwise. The
# coordinator advises a wait that grows with the farm (its answers' poll_seconds): short on a small farm, so a new
# task starts at once, long on a large one, so idle claims do not flood it.
DEFAULT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """One worker's settings; every field but the name and the work folder has a default."""

    name: str
    work_dir: str
    blender: str = "blender"
    blender_version: str = "unknown"
    # Render threads per frame; 0 lets the task or Blender decide.
    threads: int = 0
    # The host name and CPU count reported to the coordinator; None: this machine's.
    host: str | None = None
    cpu_count: int | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    # Seconds between claims of an idle worker; None: as the coordinator advises.
    poll_seconds: float | None = None
    # The longest wait between two tries of a call while the coordinator is away.
    max_backoff: float = 10.0
    # Seconds between two sends of Blender's output to the task log.
    log_interval: float = 1.0
    # Seconds Blender gets to stop after SIGINT before it is killed.
    abort_grace: float = 5.0
    # How long a stopping worker may take to deliver what it rendered and give back the rest.
    shutdown_seconds: float = 10.0
    # Whether Python stored in .blend files may run, for tasks marked as needing it.
    allow_python: bool = False
    # Rendered frames that may wait for delivery before Blender renders another: 1 lets the next frame render while
    # the last one uploads, and keeps a worker cut off from the coordinator from rendering far ahead of what it can
    # deliver.
    max_undelivered_frames: int = 1
    # What the worker offers (worker/probe.py's Capabilities.registration(): devices, engines, gpu, video_encoders)
    # and its tags; None: it does not say, and the coordinator gives it every engine's tasks (and no video).
    offered: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
    # The FFmpeg that encodes tasks' videos; None: no videos.
    ffmpeg: str | None = None
