"""In the bpy 5 module: install the add-on's zip as an extension, build a tiny scene, try to submit it with online
access off (as Blender starts), then allow online access as a user would and submit it to a coordinator.

Run as `PYTHON bpy5_submit.py -- --zip Z --url URL [--token T] --blend PATH [--name N]`; reports the submitted task
id, the add-on's last error, the refusal while offline and what Blender says about online access.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common


def main() -> None:
    parser = common.farm_parser(blend=True)
    parser.add_argument("--name", default="bpy5-shot")
    args = common.parse_args(parser)

    module = common.connect_addon(args.zip, args.url, args.token)
    blend = common.make_tiny_scene(args.blend, frames=2)
    settings = bpy.context.scene.renderq
    settings.task_name = args.name
    settings.use_scene_range = True

    # Blender starts with online access off; an extension must then stay off the network and say so.
    online_before = bpy.app.online_access
    try:
        bpy.ops.renderq.submit()
        refusal = None
    except RuntimeError as error:
        refusal = str(error)
    common.allow_online_access()

    result = bpy.ops.renderq.submit()
    finished = common.drain(120.0)
    state = common.addon_module("state")
    common.report(
        module=module, blend=blend, operator=sorted(result), finished=finished,
        task_id=state.last_submitted_task_id(), error=state.last_error(),
        online_access_before=online_before, refusal_offline=refusal, online_access=bpy.app.online_access,
        blender=bpy.app.version_string,
    )


common.run(main)
