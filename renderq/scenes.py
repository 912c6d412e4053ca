"""The small animated Cycles scene of `renderq demo`, made by Blender itself.

It lives in the kernel because `renderq demo` ships it; it needs only the standard library and the kernel's
Blender finder, never the worker. The tests' scenes (frames that fail, hang or take long) are built in tests/ on
top of this one (tests/scenes.py), by a script that accepts the same options and more.

`make_scene` runs Blender with `blender_scripts/make_scene.py`, which builds and saves the scene. At the default
settings a frame takes about a second on one CPU thread.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from renderq.blender_path import BlenderNotFoundError, find_blender

__all__ = ["MAKE_SCENE_SCRIPT", "SceneError", "make_scene"]

MAKE_SCENE_SCRIPT = Path(__file__).with_name("blender_scripts") / "make_scene.py"
_OUTPUT_TAIL_LINES = 40


class SceneError(RuntimeError):
    """Blender could not be found, or could not build or save the scene."""


def make_scene(
    path: str,
    *,
    blender: str | None = None,
    frames: int = 24,
    resolution: tuple[int, int] = (320, 180),
    samples: int = 16,
    output: str = "//render/f_",
    file_format: str = "PNG",
    timeout: float = 300.0,
    script: Path = MAKE_SCENE_SCRIPT,
    script_options: Sequence[str] = (),
) -> str:
    """Build a small animated Cycles scene (a turning torus over a floor, a camera, a sun) and save it at `path`.

    Frames 1..`frames` at `resolution` and `samples`, CPU only, denoising off, rendering to `output` in
    `file_format`. Returns the absolute path of the saved .blend. `script` is a Blender script that takes these
    options and, after them, `script_options` (the tests' builder); by default the demo's.
    """
    if frames < 1:
        raise ValueError("frames must be at least 1")
    width, height = (int(value) for value in resolution)
    if width < 1 or height < 1:
        raise ValueError("resolution must be positive")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    try:
        executable = find_blender(blender)
    except BlenderNotFoundError as exc:
        raise SceneError(str(exc)) from None
    out = os.path.abspath(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    command = [
        executable, "-b", "--factory-startup", "-Y",
        "--python-exit-code", "1",
        "--python", str(script),
        "--",
        "--out", out,
        "--frames", str(frames),
        "--resolution", str(width), str(height),
        "--samples", str(samples),
        "--output", output,
        "--file-format", file_format,
        *script_options,
    ]
    _run_blender(command, out, timeout, executable)
    return out


def _run_blender(command: list[str], out: str, timeout: float, executable: str) -> None:
    """Run the scene script; SceneError with the tail of Blender's output when no scene was saved at `out`."""
    try:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SceneError(f"Blender did not build the scene {out} within {timeout:g} s") from exc
    except OSError as exc:
        raise SceneError(f"Could not run Blender ({executable}): {exc}") from exc
    if completed.returncode != 0 or not os.path.isfile(out):
        tail = "\n".join(completed.stdout.decode("utf-8", "replace").splitlines()[-_OUTPUT_TAIL_LINES:])
        raise SceneError(
            f"Blender could not build the scene {out} (exit code {completed.returncode})\n"
            f"--- last lines of Blender's output ---\n{tail}"
        )
