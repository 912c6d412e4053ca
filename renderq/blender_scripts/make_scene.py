"""Build a small animated Cycles scene and save it as a .blend. Runs INSIDE Blender:

    blender -b --factory-startup -Y --python make_scene.py -- --out scene.blend [options]

Standalone on purpose (only `bpy` and the standard library): Blender's own Python runs it, not ours.
`renderq.scenes.make_scene` is the wrapper that builds this command line. The tests' scene builder
(tests/blender_scripts/make_test_scene.py) imports this file and adds what only tests need to the same scene.
"""

import argparse
import math
import os
import sys

import bpy


def make_parser(prog: str = "make_scene.py") -> argparse.ArgumentParser:
    """The options of the scene; a script that builds on this one adds its own."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--out", required=True, help="where to save the .blend")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--resolution", type=int, nargs=2, default=(320, 180), metavar=("X", "Y"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--output", default="//render/f_", help="the scene's render output path")
    parser.add_argument("--file-format", default="PNG")
    return parser


def script_args(argv: list[str]) -> list[str]:
    """The options that follow `--` on Blender's command line."""
    return argv[argv.index("--") + 1:] if "--" in argv else []


def clear_scene(scene: bpy.types.Scene) -> None:
    """Remove the factory startup's objects so the scene is exactly what this script builds."""
    for obj in list(scene.collection.all_objects):
        bpy.data.objects.remove(obj, do_unlink=True)
    for datablocks in (bpy.data.meshes, bpy.data.cameras, bpy.data.lights, bpy.data.materials):
        for block in list(datablocks):
            if block.users == 0:
                datablocks.remove(block)


def make_material(name: str, color: tuple[float, float, float], roughness: float) -> bpy.types.Material:
    """A Principled BSDF material of one colour."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    bsdf = material.node_tree.nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return material


def add_mesh_object(scene: bpy.types.Scene, name: str, build, material: bpy.types.Material) -> bpy.types.Object:
    """Create an object whose mesh is filled by `build(mesh)`, linked to the scene, with one material."""
    mesh = bpy.data.meshes.new(name)
    build(mesh)
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def build_plane(size: float):
    def build(mesh: bpy.types.Mesh) -> None:
        half = size / 2
        verts = [(-half, -half, 0), (half, -half, 0), (half, half, 0), (-half, half, 0)]
        mesh.from_pydata(verts, [], [(0, 1, 2, 3)])
    return build


def build_torus(major: float, minor: float, rings: int, segments: int):
    def build(mesh: bpy.types.Mesh) -> None:
        verts = []
        for ring in range(rings):
            u = 2 * math.pi * ring / rings
            for seg in range(segments):
                v = 2 * math.pi * seg / segments
                radius = major + minor * math.cos(v)
                verts.append((radius * math.cos(u), radius * math.sin(u), minor * math.sin(v)))
        faces = []
        for ring in range(rings):
            for seg in range(segments):
                a = ring * segments + seg
                b = ring * segments + (seg + 1) % segments
                c = ((ring + 1) % rings) * segments + (seg + 1) % segments
                d = ((ring + 1) % rings) * segments + seg
                faces.append((a, b, c, d))
        mesh.from_pydata(verts, [], faces)
        for polygon in mesh.polygons:
            polygon.use_smooth = True
    return build


def animate(obj: bpy.types.Object, frames: int) -> None:
    """Move the object across the view and turn it, keyed at the first and last frame."""
    last = max(frames, 2)
    obj.location = (-1.5, 0.0, 1.0)
    obj.rotation_euler = (math.radians(60), 0.0, 0.0)
    obj.keyframe_insert("location", frame=1)
    obj.keyframe_insert("rotation_euler", frame=1)
    obj.location = (1.5, 0.0, 1.0)
    obj.rotation_euler = (math.radians(60), math.radians(180), math.radians(90))
    obj.keyframe_insert("location", frame=last)
    obj.keyframe_insert("rotation_euler", frame=last)


def build(args: argparse.Namespace) -> tuple[bpy.types.Scene, bpy.types.Object]:
    """Build the scene in the open file (not saved): returns the scene and its animated torus."""
    scene = bpy.context.scene
    clear_scene(scene)

    floor = make_material("Floor", (0.55, 0.55, 0.6), 0.6)
    paint = make_material("Paint", (0.8, 0.25, 0.1), 0.3)
    add_mesh_object(scene, "Floor", build_plane(12.0), floor)
    torus = add_mesh_object(scene, "Torus", build_torus(0.8, 0.3, 48, 24), paint)
    animate(torus, args.frames)

    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location = (0.0, -7.0, 3.0)
    camera.rotation_euler = (math.radians(72), 0.0, 0.0)
    scene.collection.objects.link(camera)
    scene.camera = camera

    light_data = bpy.data.lights.new("Sun", "SUN")
    light_data.energy = 3.0
    light_data.angle = math.radians(5)
    light = bpy.data.objects.new("Sun", light_data)
    light.rotation_euler = (math.radians(40), math.radians(20), math.radians(30))
    scene.collection.objects.link(light)

    world = scene.world or bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.06, 0.08, 1.0)

    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = args.samples
    scene.cycles.use_denoising = False
    # Few bounces are plenty for one object on a floor, and keep frame times steady.
    scene.cycles.max_bounces = 4
    scene.cycles.diffuse_bounces = 2
    scene.cycles.glossy_bounces = 2
    render.resolution_x, render.resolution_y = args.resolution
    render.resolution_percentage = 100
    render.filepath = args.output
    render.image_settings.file_format = args.file_format
    scene.frame_start = 1
    scene.frame_end = args.frames
    scene.frame_current = 1
    return scene, torus


def save(out: str) -> None:
    """Save the open file at `out` (its folder made first)."""
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=out, check_existing=False)
    print(f"renderq: saved {out}")


if __name__ == "__main__":
    arguments = make_parser().parse_args(script_args(sys.argv))
    build(arguments)
    save(arguments.out)
