"""In Blender 3.4 (`blender -b --python`) or the bpy 5 module: install the add-on, build a tiny scene rendering
with EEVEE, set the panel's Tags and Device, and submit it; then try a tag the farm refuses.

Run as `... submit_requirements.py -- --zip Z --url URL --token T --blend PATH`; reports the task id, the add-on's
last error and the refusal of the bad tag.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common


def main() -> None:
    args = common.parse_args(common.farm_parser(blend=True))

    common.connect_addon(args.zip, args.url, args.token)
    common.allow_online_access()
    blend = common.make_tiny_scene(args.blend, frames=1)
    bpy.context.scene.render.engine = "BLENDER_EEVEE" if bpy.app.version < (4, 2) or bpy.app.version >= (5, 0) \
        else "BLENDER_EEVEE_NEXT"
    bpy.ops.wm.save_mainfile()
    settings = bpy.context.scene.renderq
    settings.tags = "Lighting, gpu"
    settings.device = "CPU"
    result = bpy.ops.renderq.submit()
    finished = common.drain(120.0)
    state = common.addon_module("state")
    task_id, error = state.last_submitted_task_id(), state.last_error()

    settings.tags = "no/slashes"
    try:
        bpy.ops.renderq.submit()
        refusal = None
    except RuntimeError as exc:
        refusal = str(exc)
    common.report(blend=blend, operator=sorted(result), finished=finished, task_id=task_id, error=error,
                  refusal=refusal, engine=bpy.context.scene.render.engine)


common.run(main)
