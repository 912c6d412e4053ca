"""Build a small animated Cycles scene and save it as a .blend. Runs INSIDE Blender:

    blender -b --factory-startup -Y --python make_scene.py -- --out scene.blend [options]

Standalone on purpose (only `bpy` and the standard library): Blender's own Python runs it, not ours.
`renderq.scenes.make_scene` is the wrapper that builds this command line.
"""

import argparse
import math
import os
import sys

import bpy

# Keys stored on the scene so that tests (and people) can see how the file was made.
FAIL_FRAMES_KEY = "renderq_fail_frames"
FAIL_MECHANISM_KEY = "renderq_fail_mechanism"
PYTHON_MARKER_KEY = "renderq_python_marker"
HANG_FRAMES_KEY = "renderq_hang_frames"
FRAME_SAMPLES_KEY = "renderq_frame_samples"

# A text block registered to run when the file is opened (only where scripts are allowed). It leaves a marker file
# per frame rendered, and gives the scripted driver the function it calls, which leaves a marker per frame too.
# Markers go into the folder named by RENDERQ_TEST_MARKER_DIR, which Blender inherits from whoever started it.
MARKER_SCRIPT = """\
# RenderQ test scene: proves that this file's own Python ran. It must not, unless scripts were allowed.
import os

import bpy


def renderq_mark(name):
    folder = os.environ.get("RENDERQ_TEST_MARKER_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "a") as marker:
            marker.write(f"{os.getpid()}\\n")


def renderq_marker_render_pre(scene, *_args):
    renderq_mark(f"frame_{scene.frame_current:04d}")


def renderq_marker_driver(frame):
    renderq_mark(f"driver_{int(frame):04d}")
    return 0.0


bpy.app.driver_namespace["renderq_marker_driver"] = renderq_marker_driver
bpy.app.handlers.render_pre.append(renderq_marker_render_pre)
"""

# A text block registered to run when the file is opened that hangs the frames listed, the first time only: each
# hang is recorded as a marker file first, so a retried frame renders.
HANG_SCRIPT = """\
# RenderQ test scene: hangs frames {frames} the first time they are set, to test a farm's time limits.
import os
import time

import bpy

HANG_FRAMES = {frames}
PRINT_SECONDS = {print_seconds}


def renderq_hang(scene, *_args):
    frame = scene.frame_current
    if frame not in HANG_FRAMES:
        return
    folder = os.environ.get("RENDERQ_TEST_MARKER_DIR")
    if not folder:
        print(f"renderq test scene: RENDERQ_TEST_MARKER_DIR is not set; frame {{frame}} does not hang", flush=True)
        return
    marker = os.path.join(folder, f"hang_{{frame:04d}}")
    if os.path.exists(marker):
        return
    os.makedirs(folder, exist_ok=True)
    with open(marker, "w") as record:
        record.write(f"{{os.getpid()}}\\n")
    print(f"renderq test scene: hanging on frame {{frame}}", flush=True)
    while True:
        time.sleep(PRINT_SECONDS or 60)
        if PRINT_SECONDS:
            print(f"renderq test scene: still hanging on frame {{frame}}", flush=True)


bpy.app.handlers.frame_change_pre.append(renderq_hang)
"""

# Heavy frames must take well over a minute yet still stop within a second or two when Blender is told to
# cancel: Cycles checks for cancel between samples, so many cheap samples beat a few expensive ones.
HEAVY_SAMPLES = 1_000_000
FAIL_MECHANISMS = ("denoiser_missing", "stereo_multilayer")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the options that follow `--` on Blender's command line."""
    argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="make_scene.py")
    parser.add_argument("--out", required=True, help="where to save the .blend")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--resolution", type=int, nargs=2, default=(320, 180), metavar=("X", "Y"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--output", default="//render/f_", help="the scene's render output path")
    parser.add_argument("--file-format", default="PNG")
    parser.add_argument("--fail-frames", default="", help="comma-separated frames that must fail to render")
    parser.add_argument("--fail-mechanism", default="auto", choices=("auto", *FAIL_MECHANISMS))
    parser.add_argument("--heavy", action="store_true")
    parser.add_argument("--python-marker", action="store_true",
                        help="add a text block run on load and a scripted driver that leave marker files")
    parser.add_argument("--hang-frames", default="", help="comma-separated frames whose first try hangs")
    parser.add_argument("--hang-print-seconds", type=float, default=0.0,
                        help="while hanging, print a line this often (0: stay silent)")
    parser.add_argument("--frame-samples", default="",
                        help="comma-separated Cycles samples of frames 1, 2, ...: keyed per frame, so frame cost "
                             "varies")
    return parser.parse_args(argv)


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


def set_constant_interpolation(scene: bpy.types.Scene, data_path: str) -> None:
    for fcurve in scene.animation_data.action.fcurves:
        if fcurve.data_path == data_path:
            for point in fcurve.keyframe_points:
                point.interpolation = "CONSTANT"


def build_has_denoiser() -> bool:
    """Whether this Blender's Cycles can denoise on the CPU (distribution builds often lack OpenImageDenoise)."""
    try:
        import _cycles
    except ImportError:
        return True
    return bool(getattr(_cycles, "with_openimagedenoise", True))


def add_fail_frames(scene: bpy.types.Scene, fail_frames: list[int], last_frame: int, mechanism: str) -> str:
    """Make exactly `fail_frames` fail inside Blender, using settings Blender itself evaluates per frame.

    Render settings such as the border are not animatable, but Cycles' own settings are. On a build without
    OpenImageDenoise, keying `cycles.use_denoising` on for a frame makes the render operator fail with
    "Build without OpenImageDenoiser". Elsewhere, keying stereo multi-view on for a frame whose output is a
    MultiLayer EXR makes Blender print "Stereo 3D not supported for MultiLayer image" and write no file even
    though `render_write` fires. `mechanism` "auto" picks the first that works on this build. Returns the name of
    the mechanism used.
    """
    fail = set(fail_frames)
    keyed = range(min([1, *fail]), max([last_frame, *fail]) + 2)
    if mechanism == "auto":
        mechanism = "stereo_multilayer" if build_has_denoiser() else "denoiser_missing"
    if mechanism == "denoiser_missing":
        for frame in keyed:
            scene.cycles.use_denoising = frame in fail
            scene.cycles.keyframe_insert("use_denoising", frame=frame)
        scene.cycles.use_denoising = False
        set_constant_interpolation(scene, "cycles.use_denoising")
        return "denoiser_missing"

    render = scene.render
    # The Stereo 3D view format is only offered for single-layer formats, so choose it before the format.
    render.image_settings.file_format = "PNG"
    render.image_settings.views_format = "STEREO_3D"
    render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
    render.views_format = "STEREO_3D"
    for frame in keyed:
        render.use_multiview = frame in fail
        render.keyframe_insert("use_multiview", frame=frame)
    render.use_multiview = False
    set_constant_interpolation(scene, "render.use_multiview")
    return "stereo_multilayer"


def key_frame_samples(scene: bpy.types.Scene, samples: list[int]) -> None:
    """Key Cycles' sample count of frame 1 + i to samples[i] (held until the next key), so that render cost varies
    by frame the way the caller chose. Adaptive sampling is switched off so the count is what Cycles renders."""
    scene.cycles.use_adaptive_sampling = False
    for index, count in enumerate(samples):
        scene.cycles.samples = max(1, count)
        scene.cycles.keyframe_insert("samples", frame=index + 1)
    set_constant_interpolation(scene, "cycles.samples")
    scene[FRAME_SAMPLES_KEY] = samples


def add_text_module(name: str, source: str) -> bpy.types.Text:
    """A text block registered to run when the file is opened with scripts allowed (never while this runs: -Y)."""
    text = bpy.data.texts.new(name)
    text.write(source)
    text.use_module = True
    return text


def add_python_marker(scene: bpy.types.Scene, obj: bpy.types.Object) -> None:
    """The marker text block, and a scripted driver on a custom property of `obj` that calls into it."""
    add_text_module("renderq_marker.py", MARKER_SCRIPT)
    obj["renderq_driven"] = 0.0
    driver = obj.driver_add('["renderq_driven"]').driver
    driver.type = "SCRIPTED"
    driver.expression = "renderq_marker_driver(frame)"
    scene[PYTHON_MARKER_KEY] = True


def add_hang_frames(scene: bpy.types.Scene, frames: list[int], print_seconds: float) -> None:
    """The text block that hangs `frames` the first time each is set (a frame_change_pre handler)."""
    add_text_module("renderq_hang.py", HANG_SCRIPT.format(frames=set(frames), print_seconds=float(print_seconds)))
    scene[HANG_FRAMES_KEY] = frames


def build(args: argparse.Namespace) -> None:
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
    scene.cycles.samples = HEAVY_SAMPLES if args.heavy else args.samples
    if args.heavy:
        # Adaptive sampling would stop early on this simple scene; a time limit would end the frame.
        scene.cycles.use_adaptive_sampling = False
        scene.cycles.time_limit = 0.0
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

    fail_frames = sorted({int(f) for f in args.fail_frames.split(",") if f.strip()})
    if fail_frames:
        scene[FAIL_FRAMES_KEY] = fail_frames
        scene[FAIL_MECHANISM_KEY] = add_fail_frames(scene, fail_frames, args.frames, args.fail_mechanism)
    if args.python_marker:
        add_python_marker(scene, torus)
    hang_frames = sorted({int(f) for f in args.hang_frames.split(",") if f.strip()})
    if hang_frames:
        add_hang_frames(scene, hang_frames, args.hang_print_seconds)
    frame_samples = [int(value) for value in args.frame_samples.split(",") if value.strip()]
    if frame_samples:
        key_frame_samples(scene, frame_samples)

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=out, check_existing=False)
    print(f"renderq: saved {out}")


if __name__ == "__main__":
    build(parse_args(sys.argv))
