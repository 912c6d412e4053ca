"""Small animated Cycles scenes made by Blender itself, for demos, benchmarks and tests.

It lives in the kernel because `renderq demo` ships it; it needs only the standard library and the kernel's
Blender finder, never the worker.

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
    fail_frames: Sequence[int] = (),
    heavy: bool = False,
    fail_mechanism: str = "auto",
    python_marker: bool = False,
    hang_frames: Sequence[int] = (),
    hang_print_seconds: float = 0.0,
    frame_samples: Sequence[int] = (),
    timeout: float = 300.0,
) -> str:
    """Build a small animated Cycles scene (a turning torus over a floor, a camera, a sun) and save it at `path`.

    Frames 1..`frames` at `resolution` and `samples`, CPU only, denoising off, rendering to `output` in
    `file_format`. `fail_frames` fail inside Blender while the other frames render; `heavy` makes every frame
    take hours (until canceled). Returns the absolute path of the saved .blend.

    Fail frames use real Blender failures keyed per frame: on a build without OpenImageDenoise, denoising is keyed
    on for them ("Build without OpenImageDenoiser"); on other builds the output becomes a MultiLayer EXR and
    stereo views are keyed on for them, so Blender writes no file although `render_write` fires. `fail_mechanism`
    ("auto", "denoiser_missing" or "stereo_multilayer") forces one; the scene records the one used in its
    `renderq_fail_mechanism` property.

    The next options put Python in the file, which runs only where scripts are allowed (a worker with
    --allow-blend-python, for a task marked as needing Python). Their marker files go into the folder named by the
    RENDERQ_TEST_MARKER_DIR environment variable of the Blender that runs them (inherited from the worker).
    `python_marker` adds a text block registered to run on load that writes `frame_NNNN` for every frame rendered,
    and a scripted driver that writes `driver_NNNN`. `hang_frames` makes those frames hang forever the first time
    only: a text block's frame_change_pre handler records `hang_NNNN` and then sleeps, and skips frames whose marker
    exists, so a retried frame renders. While hanging it prints a line every `hang_print_seconds` (0: silent).

    `frame_samples` keys Cycles' sample count per frame (frame 1 + i renders frame_samples[i] samples, adaptive
    sampling off), so that render cost varies by frame as chosen: heavy frames, drift.
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
        "--python", str(MAKE_SCENE_SCRIPT),
        "--",
        "--out", out,
        "--frames", str(frames),
        "--resolution", str(width), str(height),
        "--samples", str(samples),
        "--output", output,
        "--file-format", file_format,
    ]
    command += _test_options(fail_frames, fail_mechanism, heavy, python_marker, hang_frames, hang_print_seconds,
                             frame_samples)
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


def _test_options(fail_frames: Sequence[int], fail_mechanism: str, heavy: bool, python_marker: bool,
                  hang_frames: Sequence[int], hang_print_seconds: float, frame_samples: Sequence[int]) -> list[str]:
    """The make_scene.py flags for make_scene's options of the same names (see its docstring)."""
    command: list[str] = []
    if fail_frames:
        command += ["--fail-frames", ",".join(str(int(frame)) for frame in fail_frames)]
        command += ["--fail-mechanism", fail_mechanism]
    if heavy:
        command.append("--heavy")
    if python_marker:
        command.append("--python-marker")
    if hang_frames:
        command += ["--hang-frames", ",".join(str(int(frame)) for frame in hang_frames)]
        command += ["--hang-print-seconds", str(float(hang_print_seconds))]
    if frame_samples:
        if any(int(count) < 1 for count in frame_samples):
            raise ValueError("frame_samples must all be at least 1")
        command += ["--frame-samples", ",".join(str(int(count)) for count in frame_samples)]
    return command
