"""Shared by the Blender-side scripts of the add-on tests; runs inside Blender 3.4 or the bpy 5 module.

Installs the add-on the way a user would, finds its module wherever Blender put it (`renderq_addon` as a legacy
add-on, `bl_ext.user_default.renderq_addon` as an extension), and reports to the test as one line of JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from types import ModuleType
from typing import Any

import addon_utils
import bpy

ADDON = "renderq_addon"
RESULT_PREFIX = "RENDERQ_TEST_RESULT "
# Blender 4.2 turned add-ons into extensions, installed from a repository instead of the add-ons folder.
EXTENSIONS = bpy.app.version >= (4, 2, 0)


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse what follows `--` (Blender's own options come before it; a plain Python passes it on too)."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    return parser.parse_args(argv)


def farm_parser(*, blend: bool = False) -> argparse.ArgumentParser:
    """The options every scenario that talks to a coordinator takes: the add-on's zip, the farm's URL and token
    (and the .blend to save the scene as, with `blend`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    if blend:
        parser.add_argument("--blend", required=True)
    return parser


def connect_addon(zip_path: str, url: str, token: str) -> str:
    """Install the add-on's zip and point its preferences at the farm; returns the add-on's module name."""
    module = install_addon(zip_path)
    preferences = addon_preferences()
    preferences.coordinator_url = url
    preferences.token = token
    return module


def report(**values: Any) -> None:
    print(RESULT_PREFIX + json.dumps(values), flush=True)


def _raise(error: BaseException) -> None:
    raise error


def allow_online_access() -> None:
    """What a user does once in Preferences > System: allow online access, which extensions must respect."""
    if EXTENSIONS:
        bpy.context.preferences.system.use_online_access = True


def install_addon(zip_path: str) -> str:
    """Install the built zip and enable it, as from Preferences; return the add-on's module name."""
    if EXTENSIONS:
        result = bpy.ops.extensions.package_install_files(
            repo="user_default", filepath=zip_path, enable_on_install=True)
        if result != {"FINISHED"}:
            raise RuntimeError(f"installing {zip_path} as an extension gave {result}")
    else:
        result = bpy.ops.preferences.addon_install(filepath=zip_path)
        if result != {"FINISHED"}:
            raise RuntimeError(f"installing {zip_path} gave {result}")
        # handle_error re-raises: the default one prints the error and goes on with the add-on disabled.
        addon_utils.enable(ADDON, default_set=True, handle_error=_raise)
    return addon_name()


def addon_name() -> str:
    """The enabled add-on's module name (also its key in the preferences' add-ons)."""
    for addon in bpy.context.preferences.addons:
        if addon.module.rsplit(".", 1)[-1] == ADDON:
            return addon.module
    raise RuntimeError(f"the add-on {ADDON} is not enabled")


def addon_module(submodule: str = "") -> ModuleType:
    """The add-on's package, or one of its modules ("jobs", "state")."""
    name = addon_name()
    return importlib.import_module(f"{name}.{submodule}" if submodule else name)


def addon_preferences() -> Any:
    return bpy.context.preferences.addons[addon_name()].preferences


def drain(timeout: float) -> bool:
    """Deliver finished network jobs to the main thread; True when none is left running."""
    return bool(addon_module("jobs").drain(timeout))


def make_tiny_scene(path: str, frames: int = 2) -> str:
    """Turn the current scene into a tiny, quick Cycles animation and save it at `path`."""
    scene = bpy.context.scene
    if scene.camera is None:
        camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
        camera.location = (0.0, -6.0, 2.0)
        camera.rotation_euler = (1.2, 0.0, 0.0)
        scene.collection.objects.link(camera)
        scene.camera = camera
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = 64, 36
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = "//render/f_"
    scene.frame_start, scene.frame_end = 1, frames
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(path))
    return os.path.abspath(path)


def run(main: Any) -> None:
    """Run `main`, and make any error the process's exit status (a bpy script would otherwise just go on)."""
    try:
        main()
    except BaseException:  # noqa: BLE001 - any failure, SystemExit too, must become the exit status
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit: sys.exit inside Blender's --python is caught and ignored without --python-exit-code.
        os._exit(1)
