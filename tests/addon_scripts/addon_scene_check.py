"""Runs INSIDE Blender (3.4 in CI) with the file to submit open: install the add-on from a zip (as addon_check.py
does), make the scene named by --scene the window's current scene, submit from the add-on and print the task id
on a line starting with RENDERQ_RESULT.

    HOME=$(mktemp -d) blender -b FILE.blend -Y --python addon_scene_check.py -- --zip Z --url U --scene NAME
"""

import argparse
import json
import os
import sys
import time

import bpy

RESULT_PREFIX = "RENDERQ_RESULT "
DRAIN_TIMEOUT = 180.0


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="addon_scene_check.py")
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--scene", required=True)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    bpy.ops.preferences.addon_install(filepath=args.zip, overwrite=True)
    bpy.ops.preferences.addon_enable(module="renderq_addon")
    from renderq_addon import jobs, state

    preferences = bpy.context.preferences.addons["renderq_addon"].preferences
    preferences.coordinator_url = args.url
    preferences.token = os.environ.get("RENDERQ_TEST_TOKEN", "")
    # What an artist does by picking another scene in the window's scene selector.
    bpy.context.window_manager.windows[0].scene = bpy.data.scenes[args.scene]
    assert bpy.context.scene.name == args.scene
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while not jobs.drain(0.5):
        assert time.monotonic() < deadline, "the submit job did not end"
    assert state.last_error() is None, state.last_error()
    result = {"task_id": state.last_submitted_task_id(), "camera": bpy.context.scene.camera.name}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


main()
