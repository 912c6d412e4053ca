"""Build the scene of renderq/blender_scripts/make_scene.py for the image-format and scene/camera tests, and save
it. Runs INSIDE Blender:

    blender -b --factory-startup -Y --python make_format_scene.py -- --out scene.blend [options]

Standalone on purpose (only `bpy` and the standard library). On top of the demo's scene it can set the render
engine, the output's colour depth, add view layers with passes (for multilayer EXR), a second camera and a second
scene with a camera of its own, and turn off the metadata Blender writes that differs from one render to the next
(date, time, render time, the .blend's path), so that two renders of one frame are byte for byte the same file.
Cycles also writes its render and synchronization times per view layer into the metadata, which no setting turns
off: frames that must be byte for byte the same are rendered with Workbench or EEVEE.
"""

import math
import os
import sys

import bpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "renderq", "blender_scripts"))
import make_scene  # importable only once its folder is on the path above


def make_parser():
    parser = make_scene.make_parser(prog="make_format_scene.py")
    parser.add_argument("--color-depth", default="", help="the output's colour depth (8, 16, 32...)")
    parser.add_argument("--engine", default="", help="BLENDER_WORKBENCH or BLENDER_EEVEE instead of Cycles, which "
                        "writes its render times into the file's metadata")
    parser.add_argument("--passes", action="store_true",
                        help="a second view layer and a few passes (Z, normal, mist) on both layers")
    parser.add_argument("--camera", default="", help="the name of a second camera in the scene, looking down")
    parser.add_argument("--scene", default="", help="the name of a second scene sharing the objects, with its own "
                        "camera (named <scene>Cam) looking from the side")
    return parser


def steady_metadata(scene: bpy.types.Scene) -> None:
    """Leave out of the file's metadata what differs between two renders of the same frame, or between machines."""
    render = scene.render
    for name in ("use_stamp_date", "use_stamp_time", "use_stamp_render_time", "use_stamp_filename",
                 "use_stamp_memory", "use_stamp_hostname"):
        if hasattr(render, name):
            setattr(render, name, False)


def add_camera(scene: bpy.types.Scene, name: str, location, rotation_degrees) -> bpy.types.Object:
    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    camera.location = location
    camera.rotation_euler = tuple(math.radians(value) for value in rotation_degrees)
    scene.collection.objects.link(camera)
    return camera


def add_passes(scene: bpy.types.Scene) -> None:
    first = scene.view_layers[0]
    first.use_pass_z = True
    first.use_pass_normal = True
    second = scene.view_layers.new("Background")
    second.use_pass_mist = True
    second.use_pass_z = True


def add_scene(main: bpy.types.Scene, name: str) -> None:
    """A second scene with the same objects, render settings copied, seen by its own camera."""
    other = bpy.data.scenes.new(name)
    for obj in main.collection.objects:
        if obj.type != "CAMERA":
            other.collection.objects.link(obj)
    other.world = main.world
    other.render.engine = main.render.engine
    other.eevee.taa_render_samples = main.eevee.taa_render_samples
    other.cycles.device = "CPU"
    other.cycles.samples = main.cycles.samples
    other.cycles.use_denoising = False
    other.render.resolution_x, other.render.resolution_y = main.render.resolution_x, main.render.resolution_y
    other.render.resolution_percentage = 100
    other.render.filepath = main.render.filepath
    other.render.image_settings.file_format = main.render.image_settings.file_format
    other.frame_start, other.frame_end = main.frame_start, main.frame_end
    other.camera = add_camera(other, f"{name}Cam", (7.0, 0.0, 2.0), (80, 0, 90))
    steady_metadata(other)


if __name__ == "__main__":
    arguments = make_parser().parse_args(make_scene.script_args(sys.argv))
    built_scene, _torus = make_scene.build(arguments)
    steady_metadata(built_scene)
    if arguments.engine:
        built_scene.render.engine = arguments.engine
        built_scene.eevee.taa_render_samples = 4
    if arguments.color_depth:
        built_scene.render.image_settings.color_depth = arguments.color_depth
    if arguments.passes:
        add_passes(built_scene)
    if arguments.camera:
        add_camera(built_scene, arguments.camera, (0.0, 0.0, 9.0), (0, 0, 0))
    if arguments.scene:
        add_scene(built_scene, arguments.scene)
    make_scene.save(arguments.out)
