"""What this Blender can offer a render farm: run INSIDE Blender by worker/probe.py, prints one JSON line.

    blender -b -noaudio --python probe_script.py -- --out FILE [--device TYPE [--gpu N ...]] [--engine NAME ...]

Standalone on purpose, like frame_script.py: only `bpy`, the standard library and blender_devices.py next to it.
It lists the Cycles devices Blender sees, enables the asked ones as a frame session would, and renders one tiny
frame (8x8) with each built-in engine this version has (or those named), in a scene of its own (the user's
startup file may be heavy). It writes FILE as JSON lines, each flushed at once, because a Blender that cannot get
an OpenGL context may abort rather than fail the render: an engine with a "start" line and no result crashed it.

    {"blender_version", "devices": [{name, type, id, use}], "compute_device_type", "enabled": [{name, type, id}]}
    {"engine": ENGINE, "start": true}
    {"engine": ENGINE, "error": null | "why it failed"}          (an engine this version lacks gets no lines)
"""

import argparse
import json
import os
import sys
import tempfile
import time

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blender_devices  # found next to this script, once the folder is on the path

# EEVEE is BLENDER_EEVEE_NEXT in Blender 4.2 to 4.4 and BLENDER_EEVEE before and after.
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")


def tiny_scene():
    """A scene of its own: a camera looking at a cube, 8x8 pixels, the fewest samples."""
    scene = bpy.data.scenes.new("renderq-probe")
    mesh = bpy.data.meshes.new("renderq-probe")
    mesh.from_pydata([(-1, -1, -1), (1, -1, -1), (1, 1, -1), (-1, 1, -1)], [], [(0, 1, 2, 3)])
    scene.collection.objects.link(bpy.data.objects.new("renderq-probe", mesh))
    camera = bpy.data.objects.new("renderq-probe-camera", bpy.data.cameras.new("renderq-probe-camera"))
    camera.location = (0.0, 0.0, 5.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.render.resolution_x = scene.render.resolution_y = 8
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.cycles.samples = 1
    scene.eevee.taa_render_samples = 1
    return scene


def render_with(scene, engine: str, folder: str):
    """None when a frame renders with `engine` and is written, else why not (a sentence)."""
    scene.render.engine = engine
    if engine == "CYCLES":
        scene.cycles.device = "GPU" if blender_devices.compute_device_type() != "CPU" else "CPU"
        scene.cycles.use_denoising = False
    path = os.path.join(folder, engine + ".png")
    scene.render.filepath = path
    try:
        bpy.ops.render.render(write_still=True, scene=scene.name)
    except RuntimeError as error:
        return str(error).strip() or "the render failed"
    if not os.path.isfile(path):
        return "the render wrote no file"
    return None


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="probe_script.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="")
    parser.add_argument("--gpu", type=int, action="append", default=[])
    parser.add_argument("--engine", action="append", default=[])
    args = parser.parse_args(argv)
    with open(args.out, "w", encoding="utf-8") as out:
        def write(**fields) -> None:
            out.write(json.dumps(fields) + "\n")
            out.flush()

        enabled = blender_devices.enable_devices(args.device, args.gpu) if args.device else []
        write(blender_version=".".join(str(part) for part in bpy.app.version),
              devices=blender_devices.seen_devices(), enabled=enabled,
              compute_device_type=blender_devices.compute_device_type())
        if args.device and not enabled:
            return  # the worker refuses to start: nothing else matters
        scene = tiny_scene()
        with tempfile.TemporaryDirectory(prefix="renderq-probe-") as folder:
            for engine in args.engine or ENGINES:
                try:
                    scene.render.engine = engine
                except TypeError:
                    continue  # this version has no such engine
                write(engine=engine, start=True)
                started = time.monotonic()
                write(engine=engine, error=render_with(scene, engine, folder))
                print(f"renderq probe: {engine} {time.monotonic() - started:.2f} s", flush=True)


main()
