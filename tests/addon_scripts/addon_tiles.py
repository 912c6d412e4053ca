"""Drive the add-on's "Split into Tiles" inside a real Blender, for tests/test_tiles.py (the arguments of
addon_check.py; --case is unused):

    blender -b scene.blend -Y --python-exit-code 1 --python addon_tiles.py -- --zip ZIP --url URL --case tiles

The open scene is a one-frame still. Refused with a sentence: Split into Tiles over two frames, and a denoised
scene. Then the still is submitted split 2x2 and the task's id printed in `RENDERQ_RESULT {json}`.
"""

import argparse
import json
import os
import sys
import time

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from addon_check import install

RESULT_PREFIX = "RENDERQ_RESULT "


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="addon_tiles.py")
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--case", default="tiles")
    return parser.parse_args(argv)


def refusal() -> str:
    """Submit, which must be refused at once; the sentence it gave."""
    from renderq_addon import state

    try:
        bpy.ops.renderq.submit()
    except RuntimeError:
        return state.last_error() or ""
    raise AssertionError("the submit was not refused")


def main() -> None:
    args = parse_args()
    install(args.zip, args.url)
    from renderq_addon import jobs, state

    scene = bpy.context.scene
    settings = scene.renderq
    settings.use_scene_range = False
    settings.frame_start, settings.frame_end = 1, 2
    settings.split_tiles = True
    many_frames = refusal()
    settings.frame_end = 1
    scene.cycles.use_denoising = True
    denoised = refusal()
    scene.cycles.use_denoising = False
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    deadline = time.monotonic() + 120
    while not jobs.drain(0.5):
        assert time.monotonic() < deadline, "the submit did not end"
    assert state.last_error() is None, state.last_error()
    print(RESULT_PREFIX + json.dumps({"many_frames": many_frames, "denoised": denoised,
                                      "task_id": state.last_submitted_task_id()}), flush=True)


main()
