"""A virtual X display (Xvfb) for Blender sessions that need one to draw EEVEE or Workbench frames.

Xvfb picks a free display number itself and writes it to a pipe (`-displayfd`), so two workers on one machine never
race for a number. The server is tied to the worker's life (renderq.platform) and stopped with its session.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import time
from typing import Any

from renderq import platform
from worker.blender_session import BlenderSession, SessionError

__all__ = ["DisplayError", "DisplaySession", "VirtualDisplay", "find_xvfb"]

_START_SECONDS = 15.0


class DisplayError(Exception):
    """Xvfb could not be started; the message says why."""


def find_xvfb() -> str | None:
    """The Xvfb executable on PATH, or None."""
    return shutil.which("Xvfb")


class VirtualDisplay:
    """One Xvfb server: `start()` returns its DISPLAY value (":N"), `stop()` ends it (safe to call twice)."""

    def __init__(self, xvfb: str) -> None:
        self.xvfb = xvfb
        self._proc: subprocess.Popen | None = None

    def start(self) -> str:
        """Start Xvfb and wait until it serves; the DISPLAY value. Raises DisplayError."""
        read_end, write_end = os.pipe()
        try:
            try:
                # Only local (Unix-socket) clients: no TCP port is opened.
                self._proc = platform.spawn_tied(
                    [self.xvfb, "-displayfd", str(write_end), "-nolisten", "tcp", "-screen", "0", "1280x720x24"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    pass_fds=(write_end,),
                )
            except OSError as exc:
                raise DisplayError(f"could not start {self.xvfb}: {exc}") from exc
            os.close(write_end)
            write_end = -1
            number = self._read_number(read_end)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        return f":{number}"

    def _read_number(self, read_end: int) -> int:
        """The display number Xvfb writes once it serves, or DisplayError (the server is then stopped)."""
        deadline = time.monotonic() + _START_SECONDS
        text = b""
        while not text.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready = select.select([read_end], [], [], max(0.0, remaining))[0] if remaining > 0 else []
            chunk = os.read(read_end, 64) if ready else b""
            if not chunk:
                self.stop()
                raise DisplayError(f"{self.xvfb} did not start a display within {_START_SECONDS:g} s")
            text += chunk
        try:
            return int(text.strip())
        except ValueError:
            self.stop()
            raise DisplayError(f"{self.xvfb} named no display number ({text!r})") from None

    def stop(self) -> None:
        """End the server (and anything left in its group)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            platform.kill_child(proc)
            # Killed with its group: a server that still has not gone after 10 s is left to the kernel.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


class DisplaySession(BlenderSession):
    """A Blender session on a virtual display of its own: Xvfb starts with the session and stops with it."""

    def __init__(self, *args: Any, xvfb: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.display = VirtualDisplay(xvfb)

    def start(self) -> None:
        """Start Xvfb, then Blender on it; raises SessionError when either cannot start."""
        try:
            self.extra_env = {"DISPLAY": self.display.start()}
        except DisplayError as exc:
            raise SessionError(f"no virtual display for Blender: {exc}") from None
        try:
            super().start()
        except BaseException:
            self.display.stop()
            raise

    def close(self, grace: float = 5.0) -> None:
        """Close Blender, then its display."""
        try:
            super().close(grace)
        finally:
            self.display.stop()
