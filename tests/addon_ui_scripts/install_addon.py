"""In Blender (background): install and enable the add-on's zip, point it at a coordinator and save the
preferences, so that a later Blender started with the same HOME has the add-on, as a user's Blender would.

Run as `blender -b --factory-startup --python install_addon.py -- --zip Z --url URL [--token T]`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common


def main() -> None:
    args = common.parse_args(common.farm_parser())

    common.allow_online_access()
    module = common.connect_addon(args.zip, args.url, args.token)
    result = bpy.ops.wm.save_userpref()
    if result != {"FINISHED"}:
        raise RuntimeError(f"saving the preferences gave {result}")
    common.report(module=module, userpref=bpy.utils.user_resource("CONFIG"))


common.run(main)
