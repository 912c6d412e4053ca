"""Build the scene of renderq/blender_scripts/make_scene.py with what only tests and benchmarks need, and save it.
Runs INSIDE Blender:

    blender -b --factory-startup -Y --python make_test_scene.py -- --out scene.blend [options]

Standalone on purpose (only `bpy` and the standard library): Blender's own Python runs it. It imports the product's
scene script from its folder, builds that scene, then adds frames that fail, hang or take long, and Python that
must only run where allowed. `tests/scenes.py` (`make_scene`) is the wrapper that builds this command line.
"""

import argparse
import os
import sys

import bpy

# The product's scene script, by its path in this repository (it is not a package Blender's Python can import).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "renderq", "blender_scripts"))
import make_scene  # importable only once its folder is on the path above

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

# A text block registered to run when the file is opened that makes every frame take at least this long inside
# Blender, however busy the machine is: a frame cost that the CPU's other work does not change.
FRAME_SECONDS_SCRIPT = """\
# RenderQ test scene: every frame takes {seconds} s more, to give frames a known, stable cost.
import time

import bpy


def renderq_frame_seconds(scene, *_args):
    time.sleep({seconds})


bpy.app.handlers.frame_change_pre.append(renderq_frame_seconds)
"""

# Heavy frames must take well over a minute yet still stop within a second or two when Blender is told to
# cancel: Cycles checks for cancel between samples, so many cheap samples beat a few expensive ones.
HEAVY_SAMPLES = 1_000_000
FAIL_MECHANISMS = ("denoiser_missing", "stereo_multilayer")


def make_parser() -> argparse.ArgumentParser:
    """The scene's options and the tests' own."""
    parser = make_scene.make_parser(prog="make_test_scene.py")
    parser.add_argument("--fail-frames", default="", help="comma-separated frames that must fail to render")
    parser.add_argument("--fail-mechanism", default="auto", choices=("auto", *FAIL_MECHANISMS))
    parser.add_argument("--heavy", action="store_true")
    parser.add_argument("--python-marker", action="store_true",
                        help="add a text block run on load and a scripted driver that leave marker files")
    parser.add_argument("--hang-frames", default="", help="comma-separated frames whose first try hangs")
    parser.add_argument("--hang-print-seconds", type=float, default=0.0,
                        help="while hanging, print a line this often (0: stay silent)")
    parser.add_argument("--frame-seconds", type=float, default=0.0,
                        help="every frame takes this many seconds more (the file's Python: scripts must be allowed)")
    parser.add_argument("--frame-samples", default="",
                        help="comma-separated Cycles samples of frames 1, 2, ...: keyed per frame, so frame cost "
                             "varies")
    return parser


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


def make_heavy(scene: bpy.types.Scene) -> None:
    """Every frame takes hours, yet stops within a second or two when Blender is told to cancel."""
    scene.cycles.samples = HEAVY_SAMPLES
    # Adaptive sampling would stop early on this simple scene; a time limit would end the frame.
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.time_limit = 0.0


def frame_list(text: str) -> list[int]:
    return sorted({int(frame) for frame in text.split(",") if frame.strip()})


def add_test_options(args: argparse.Namespace, scene: bpy.types.Scene, torus: bpy.types.Object) -> None:
    """What the tests' options ask of the built scene."""
    if args.heavy:
        make_heavy(scene)
    fail_frames = frame_list(args.fail_frames)
    if fail_frames:
        scene[FAIL_FRAMES_KEY] = fail_frames
        scene[FAIL_MECHANISM_KEY] = add_fail_frames(scene, fail_frames, args.frames, args.fail_mechanism)
    if args.python_marker:
        add_python_marker(scene, torus)
    hang_frames = frame_list(args.hang_frames)
    if hang_frames:
        add_hang_frames(scene, hang_frames, args.hang_print_seconds)
    if args.frame_seconds > 0:
        add_text_module("renderq_frame_seconds.py", FRAME_SECONDS_SCRIPT.format(seconds=float(args.frame_seconds)))
    frame_samples = [int(value) for value in args.frame_samples.split(",") if value.strip()]
    if frame_samples:
        key_frame_samples(scene, frame_samples)


if __name__ == "__main__":
    arguments = make_parser().parse_args(make_scene.script_args(sys.argv))
    built_scene, built_torus = make_scene.build(arguments)
    add_test_options(arguments, built_scene, built_torus)
    make_scene.save(arguments.out)
