"""The tests' and benchmarks' scenes: the demo's scene (renderq.scenes) with frames that fail, hang or take long,
and Python that must run only where allowed.

Not a test file: tests import it (`from scenes import make_scene`), and benchmarks too, with tests/ on their path.
`make_scene` runs Blender with `blender_scripts/make_test_scene.py`, which builds the demo's scene and adds these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from renderq.scenes import SceneError
from renderq.scenes import make_scene as make_demo_scene

__all__ = ["MAKE_FORMAT_SCENE_SCRIPT", "MAKE_TEST_SCENE_SCRIPT", "SceneError", "make_format_scene", "make_scene"]

MAKE_TEST_SCENE_SCRIPT = Path(os.path.dirname(os.path.abspath(__file__))) / "blender_scripts" / "make_test_scene.py"


def make_scene(
    path: str,
    *,
    fail_frames: Sequence[int] = (),
    heavy: bool = False,
    fail_mechanism: str = "auto",
    python_marker: bool = False,
    hang_frames: Sequence[int] = (),
    hang_print_seconds: float = 0.0,
    frame_samples: Sequence[int] = (),
    frame_seconds: float = 0.0,
    **scene: Any,
) -> str:
    """The demo's scene (`scene`: renderq.scenes.make_scene's options) saved at `path`, with these test options.

    `fail_frames` fail inside Blender while the other frames render; `heavy` makes every frame take hours (until
    canceled). Fail frames use real Blender failures keyed per frame: on a build without OpenImageDenoise, denoising
    is keyed on for them ("Build without OpenImageDenoiser"); on other builds the output becomes a MultiLayer EXR and
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
    sampling off), so that render cost varies by frame as chosen: heavy frames, drift. `frame_seconds` makes every
    frame take that much longer, slept inside Blender (a text block's frame_change_pre handler, so only where the
    file's Python may run): a cost the machine's other work does not change.
    """
    options: list[str] = []
    if fail_frames:
        options += ["--fail-frames", ",".join(str(int(frame)) for frame in fail_frames)]
        options += ["--fail-mechanism", fail_mechanism]
    if heavy:
        options.append("--heavy")
    if python_marker:
        options.append("--python-marker")
    if hang_frames:
        options += ["--hang-frames", ",".join(str(int(frame)) for frame in hang_frames)]
        options += ["--hang-print-seconds", str(float(hang_print_seconds))]
    if frame_seconds > 0:
        options += ["--frame-seconds", str(float(frame_seconds))]
    if frame_samples:
        if any(int(count) < 1 for count in frame_samples):
            raise ValueError("frame_samples must all be at least 1")
        options += ["--frame-samples", ",".join(str(int(count)) for count in frame_samples)]
    return make_demo_scene(path, script=MAKE_TEST_SCENE_SCRIPT, script_options=options, **scene)


MAKE_FORMAT_SCENE_SCRIPT = MAKE_TEST_SCENE_SCRIPT.with_name("make_format_scene.py")


def make_format_scene(path: str, *, engine: str = "", color_depth: str = "", passes: bool = False,
                      camera: str = "", scene_name: str = "", **scene: Any) -> str:
    """The demo's scene (`scene`: renderq.scenes.make_scene's options, file_format among them) saved at `path`,
    with none of the metadata that differs between two renders of a frame, so a frame rendered twice is the same
    file. `engine` renders with BLENDER_WORKBENCH or BLENDER_EEVEE instead of Cycles (whose render times go into
    the file's metadata, so two Cycles renders of a frame always differ there). `color_depth` sets the output's
    depth; `passes` adds a second view layer ("Background") and Z, normal and mist passes; `camera` a second
    camera of that name looking down; `scene_name` a second scene of that name with the same objects and its own
    camera (`<scene_name>Cam`)."""
    options: list[str] = ["--engine", engine] if engine else []
    if color_depth:
        options += ["--color-depth", color_depth]
    if passes:
        options.append("--passes")
    if camera:
        options += ["--camera", camera]
    if scene_name:
        options += ["--scene", scene_name]
    return make_demo_scene(path, script=MAKE_FORMAT_SCENE_SCRIPT, script_options=options, **scene)


def with_engine(path: str, engine: str, out: str, blender: str) -> str:
    """The scene at `path` saved at `out` rendering with `engine` (BLENDER_EEVEE, BLENDER_WORKBENCH, ...), with the
    fewest samples each engine takes, so a test frame renders in a moment."""
    import subprocess

    script = (
        "import bpy; s = bpy.context.scene; s.render.engine = " + repr(engine) + "; "
        "s.eevee.taa_render_samples = 4; "
        "bpy.ops.wm.save_as_mainfile(filepath=" + repr(os.path.abspath(out)) + ")"
    )
    done = subprocess.run([blender, "-b", "-Y", "-noaudio", path, "--python-expr", script], capture_output=True,
                          timeout=120, check=False)
    if done.returncode != 0 or not os.path.isfile(out):
        raise SceneError(f"could not save {out} with {engine}: {done.stdout.decode(errors='replace')[-2000:]}")
    return os.path.abspath(out)
