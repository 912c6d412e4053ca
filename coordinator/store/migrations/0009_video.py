"""A task's video: the encode job is a frame row of its own kind, so it is leased, fenced and retried like a frame.

- tasks.video: the video the task asks for, as JSON ({"container": "mp4" | "mov" | "webm" | "scene"}); '' for none.
- workers.video_encoders: what the worker's FFmpeg can encode ("ffmpeg 5.1 (libx264, ...)"); '' when it has none,
  and then it is handed no encode job.
- frames.kind: 'render' for a frame Blender renders, 'encode' for the one row that encodes the task's video. That row
  is added (as frame number renderq.model.VIDEO_FRAME) once every frame is done, so a claim of any other frame never
  sees it.
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns

__depends__ = {"0007_capabilities", "0008_previews"}

COLUMNS = {
    "tasks": {"video": "TEXT NOT NULL DEFAULT ''"},
    "workers": {"video_encoders": "TEXT NOT NULL DEFAULT ''"},
    "frames": {"kind": "TEXT NOT NULL DEFAULT 'render'"},
}


def add_video_columns(db) -> None:
    """Add the video's columns."""
    add_missing_columns(db, COLUMNS)


steps = [step(add_video_columns)]
