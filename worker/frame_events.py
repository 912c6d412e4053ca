"""What the frame script told about one frame, and why a frame that was not written failed, in one sentence.

`blender_session.py` feeds each event of the frame it asked for into a `FrameEvents`; once the frame has ended, the
events and how the session ended say whether the frame is done, and if not, why.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from typing import Any

__all__ = ["FrameEvents", "describe_exit"]

# Signal numbers by name; a number outside the enum (a real-time signal) is shown as the number alone.
_SIGNAL_NAMES = {number.value: number.name for number in signal.Signals}


def describe_exit(code: int | None) -> str:
    """How Blender's process ended, for a sentence ("exited with code -9 (SIGKILL)")."""
    if code is None:
        return "is still running"
    name = _SIGNAL_NAMES.get(-code) if code < 0 else None
    return f"exited with code {code} ({name})" if name else f"exited with code {code}"


def _plain_render_error(text: str) -> str:
    """Blender's operator error ("Error: No border area selected\\n") as a plain phrase."""
    text = " ".join(text.split())
    return re.sub(r"^Error:\s*", "", text) or "unknown error"


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass
class FrameEvents:
    """The frame script's events for one frame, as they arrive; `timed_out` is the sentence of a crossed limit."""

    frame: int
    started_at: float | None = None
    ended_at: float | None = None
    render_seconds: float | None = None
    written_path: str | None = None
    preview_path: str | None = None
    canceled: bool = False
    finished: dict[str, Any] | None = None
    timed_out: str | None = None

    def take(self, message: dict[str, Any]) -> bool:
        """Note one event of this frame; True once the frame script says the frame is finished."""
        kind = message.get("type")
        if kind == "started":
            self.started_at = _float_or_none(message.get("time"))
        elif kind == "written":
            self.written_path = message.get("path") or None
            self.ended_at = _float_or_none(message.get("time"))
            self.render_seconds = _float_or_none(message.get("render_seconds"))
        elif kind == "canceled":
            self.canceled = True
        elif kind == "finished":
            self.finished = message
            self.preview_path = message.get("preview") or None
            # A tile's file is renamed after it was written: the final path is the one that counts.
            if self.written_path is not None and message.get("path"):
                self.written_path = message["path"]
        return self.finished is not None

    @property
    def ok(self) -> bool:
        """Written, on disk, and within its limits (a frame that crossed one fails even if Blender finished it)."""
        return self.written_path is not None and os.path.isfile(self.written_path) and self.timed_out is None

    def failure(self, aborted: bool, exit_code: int | None) -> str | None:
        """Why the frame failed, in one sentence; None when it is done."""
        frame = self.frame
        if self.ok:
            return None
        if aborted:
            return f"Rendering frame {frame} was aborted"
        if self.timed_out is not None:
            return self.timed_out
        if self.finished is None:
            return f"Blender {describe_exit(exit_code)} while rendering frame {frame}"
        if self.finished.get("error"):
            return f"Render error: {_plain_render_error(str(self.finished['error']))}"
        if self.written_path is not None:
            return f"Blender reported frame {frame} written to {self.written_path}, but the file does not exist"
        if self.canceled:
            return f"Blender canceled the render of frame {frame}"
        return f"Blender finished frame {frame} without writing a file"
