"""In Blender (background): install and enable the add-on's zip, point it at a coordinator and save the
preferences, so that a later Blender started with the same HOME has the add-on, as a user's Blender would.

Run as `blender -b --factory-startup --python install_addon.py -- --zip Z --url URL [--token T]`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    args = common.parse_args(parser)

    common.allow_online_access()
    module = common.install_addon(args.zip)
    preferences = common.addon_preferences()
    preferences.coordinator_url = args.url
    preferences.token = args.token
    result = bpy.ops.wm.save_userpref()
    if result != {"FINISHED"}:
        raise RuntimeError(f"saving the preferences gave {result}")
    common.report(module=module, userpref=bpy.utils.user_resource("CONFIG"))


common.run(main)
