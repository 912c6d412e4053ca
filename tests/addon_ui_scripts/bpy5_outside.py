"""In the bpy 5 module: install the add-on's zip as an extension, open the attack project of
tests/blender_scripts/make_exposed_project.py and submit it: refused with the list of files from outside the project
folder and the hidden key, also once "Allow Files Outside the Project Folder" is ticked; then the same project without
the key: refused until the box is ticked, then submitted.

Run as `PYTHON bpy5_outside.py -- --zip Z --url URL --token T --attack A.blend --clean C.blend`; reports, for each
submit, the add-on's last error, what it listed and the task id.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common


def submit_and_drain() -> dict:
    """Submit the open file and wait for the job; what the add-on then says and lists."""
    state = common.addon_module("state")
    if bpy.ops.renderq.submit() != {"FINISHED"}:
        raise RuntimeError("the submit operator did not start")
    if not common.drain(120.0):
        raise RuntimeError("the submit job did not finish in 120 s")
    return {"error": state.last_error(), "listed": list(state.SESSION.outside_files),
            "task_id": state.last_submitted_task_id()}


def main() -> None:
    parser = common.farm_parser()
    parser.add_argument("--attack", required=True)
    parser.add_argument("--clean", required=True)
    args = common.parse_args(parser)

    common.connect_addon(args.zip, args.url, args.token)
    common.allow_online_access()

    bpy.ops.wm.open_mainfile(filepath=args.attack)
    refused = submit_and_drain()
    bpy.context.scene.renderq.allow_outside = True
    refused_hidden = submit_and_drain()
    bpy.ops.wm.open_mainfile(filepath=args.clean)
    box_after_open = bpy.context.scene.renderq.allow_outside
    clean_refused = submit_and_drain()
    bpy.context.scene.renderq.allow_outside = True
    allowed = submit_and_drain()
    common.report(refused=refused, refused_hidden=refused_hidden, box_after_open=box_after_open,
                  clean_refused=clean_refused, allowed=allowed, blender=bpy.app.version_string)


common.run(main)
