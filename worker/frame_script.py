"""Renders frames on request inside one long-lived Blender process. Runs INSIDE Blender:

    RENDERQ_SESSION_TOKEN=T blender -b -Y FILE.blend [-t N] --python frame_script.py -- --port P --output-dir DIR
        [--allow-python] [--scene NAME] [--camera NAME] [--device TYPE [--gpu N ...]] [--task-device GPU|CPU]

Standalone on purpose: imports only `bpy`, the standard library and blender_devices.py next to it, since
Blender's own Python runs it. --device enables exactly that type's Cycles devices (or those at --gpu N) for the
session; --task-device sets the scene's Cycles device as the task asks.

Python stored in the .blend (text blocks registered to run on load, scripted drivers, the handlers such scripts
add) never runs by default: Blender always starts with -Y. Before anything is rendered this script lists the Python
it finds in the file and sends that list in the hello. Only with --allow-python does it open the file again with
scripts allowed (the `use_scripts` option of the open operator), so the file's Python runs from then on while the
command line keeps -Y.

Side channel: a TCP connection to 127.0.0.1:P opened by the worker's BlenderSession, carrying JSON objects, one
per line, each with a "type". The worker never reads Blender's console to learn frame times; it reads these.

    script -> worker  hello     {token, protocol, blender_version, pid, scene, blend_file, output_path,
                                 output_dir, frame_start, frame_end, file_format, is_movie,
                                 python_found: [plain sentence, ...], python_allowed}
    worker -> script  render    {frame, tile?: {columns, rows, number}}
    script -> worker  started   {frame, time}                     from render_pre
    script -> worker  written   {frame, path, time, render_seconds}   from render_write, the file is on disk
    script -> worker  canceled  {frame, time}                     from render_cancel
    script -> worker  finished  {frame, ok, error, path, canceled, preview}   once the render operator has returned
    worker -> script  quit      {}

`time` is the wall clock (time.time()); `render_seconds` is measured with a monotonic clock from render_pre to
render_write. `error` is the render operator's error text, if it raised. The hello carries the token the worker put
in Blender's environment (not on the command line, which every local user can read), so no other local process can
pose as this script. On `quit`, or when the connection closes, the script returns and Blender exits.

`preview` is the path of a small 8-bit PNG of the frame (at most PREVIEW_WIDTH pixels wide, the scene's view
transform applied), saved from the render result for a format a browser cannot show as it is (EXR, HDR, TIFF,
16-bit PNG, ...); None for 8-bit PNG, JPEG and WebP frames, which are their own preview.

With `tile`, only that tile of the frame renders (tile_rects.py: the render border on whole pixels, not cropped, so
the file is the full frame with only the tile in it), and the file is renamed with the tile's mark (`path` is the
new name); a tile has no preview: the merged still is what is shown.

`--scene` renders that scene of the file instead of the one it was saved with; `--camera` renders through that
camera object. A name the file lacks fails every frame with a sentence listing the names it has.

Before `finished` the script prints a sync line (SYNC_PREFIX + frame) on stdout, so the worker knows it has read
every console line Blender printed for the frame.
"""

import argparse
import contextlib
import functools
import json
import os
import socket
import sys
import time

import bpy
from bpy.app.handlers import persistent

PROTOCOL = 1
# Previews are at most this wide (never wider than the frame); their height keeps the frame's aspect.
PREVIEW_WIDTH = 256
# Formats a browser shows as they are: such a frame is its own preview. (file_format, color_depth or None for any)
BROWSER_FORMATS = (("PNG", "8"), ("JPEG", None), ("WEBP", None))
TOKEN_ENV = "RENDERQ_SESSION_TOKEN"
SYNC_PREFIX = "\x1erenderq-frame-done "


class Channel:
    """JSON lines over a TCP socket. Sending after the worker went away is silently ignored."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.open = True

    def send(self, message_type: str, **fields) -> None:
        if not self.open:
            return
        fields["type"] = message_type
        try:
            self.sock.sendall((json.dumps(fields) + "\n").encode("utf-8"))
        except OSError:
            self.open = False

    def receive(self):
        """The next message, or None once the worker closed the connection."""
        if not self.open:
            return None
        try:
            line = self.reader.readline()
        except OSError:
            line = b""
        if not line:
            self.open = False
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return {"type": "invalid"}
        return message if isinstance(message, dict) else {"type": "invalid"}

    def close(self) -> None:
        self.open = False
        try:
            self.sock.close()
        except OSError:
            pass


class FrameState:
    """What the handlers saw of the frame being rendered."""

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self.started_monotonic: float | None = None
        self.written_path: str | None = None
        self.canceled = False


channel: Channel  # opened by main() before any handler is registered
current: FrameState | None = None


def expected_path(scene: bpy.types.Scene, frame: int) -> str:
    return os.path.abspath(bpy.path.abspath(scene.render.frame_path(frame=frame)))


def reporting_handler(handler):
    """Make `handler(scene)` a persistent Blender render handler that reports only.

    An exception in a handler does not fail the render, so a handler must never raise either: its error is printed.
    """

    @functools.wraps(handler)
    def guarded(scene, *_args) -> None:
        try:
            handler(scene)
        except Exception as error:  # noqa: BLE001 - a handler reports only; it must never raise into Blender
            event = handler.__name__.removeprefix("on_")
            print(f"renderq: {event} handler failed: {error}", flush=True)

    return persistent(guarded)


@reporting_handler
def on_render_pre(scene) -> None:
    # Only the first: a scene strip or compositor render of another scene fires the handler again.
    if current is not None and current.started_monotonic is None:
        current.started_monotonic = time.monotonic()
        channel.send("started", frame=current.frame, time=time.time())


@reporting_handler
def on_render_write(scene) -> None:
    if current is not None:
        now_wall, now_monotonic = time.time(), time.monotonic()
        path = expected_path(scene, current.frame)
        current.written_path = path
        seconds = now_monotonic - current.started_monotonic if current.started_monotonic is not None else None
        channel.send("written", frame=current.frame, path=path, time=now_wall, render_seconds=seconds)


@reporting_handler
def on_render_cancel(scene) -> None:
    if current is not None:
        current.canceled = True
        channel.send("canceled", frame=current.frame, time=time.time())


HANDLERS = (
    (bpy.app.handlers.render_pre, on_render_pre),
    (bpy.app.handlers.render_write, on_render_write),
    (bpy.app.handlers.render_cancel, on_render_cancel),
)


def output_filepath(original: str, output_dir: str) -> str:
    """The scene's own output naming (prefix, `#` padding) moved into `output_dir`.

    A path that names only a folder, like `//render/`, has an empty base name, which leaves Blender's default
    naming (`0003.png`).
    """
    base = original.replace("\\", "/").rsplit("/", 1)[-1]
    if base in (".", ".."):
        base = ""
    return os.path.join(os.path.abspath(output_dir), "") + base


def frames_instead_of_movie(scene: bpy.types.Scene) -> str | None:
    """A scene whose output is a movie renders PNG frames here (the farm renders each frame on its own; its video
    is the task's encode job, made with the scene's own FFmpeg settings); returns the movie format it had, or None.

    The image settings the movie output leaves unused (colour mode, depth) are kept where PNG has them.
    """
    settings = scene.render.image_settings
    if not scene.render.is_movie_format:
        return None
    movie = settings.file_format
    settings.file_format = "PNG"
    return movie


def _data_blocks():
    """Every data-block of the open file, with the node trees and shape keys embedded in them."""
    for name in dir(bpy.data):
        collection = getattr(bpy.data, name, None)
        if not isinstance(collection, bpy.types.bpy_prop_collection):
            continue
        for block in collection:
            if not isinstance(block, bpy.types.ID):
                break
            yield block
            for embedded in (getattr(block, "node_tree", None), getattr(block, "shape_keys", None)):
                if isinstance(embedded, bpy.types.ID):
                    yield embedded


def python_in_file() -> list:
    """Plain sentences naming the Python the open file would run if scripts were allowed; empty when none.

    Looks at text blocks registered to run on load, scripted drivers that are not simple expressions (Blender
    evaluates those without Python), and whatever Blender itself refused to run while opening the file.
    """
    found = []
    for text in bpy.data.texts:
        if text.use_module:
            found.append(f"the text block {text.name!r} is registered to run when the file is opened")
    drivers = 0
    example = None
    for block in _data_blocks():
        animation = getattr(block, "animation_data", None)
        if animation is None:
            continue
        for fcurve in animation.drivers:
            driver = fcurve.driver
            if driver.type == "SCRIPTED" and not driver.is_simple_expression:
                drivers += 1
                if example is None:
                    example = f"{driver.expression!r} on {type(block).__name__} {block.name!r}"
    if drivers:
        plural = "s" if drivers > 1 else ""
        found.append(f"{drivers} scripted driver{plural} need{'' if plural else 's'} Python (e.g. {example})")
    if not found and bpy.app.autoexec_fail:
        message = bpy.app.autoexec_fail_message or "something in the file"
        found.append(f"Blender refused to run Python in the file ({message})")
    return found


def open_with_scripts(path: str) -> None:
    """Open the file again with its Python allowed: its registered text blocks run and its drivers work."""
    bpy.ops.wm.open_mainfile(filepath=path, use_scripts=True)


def remove_leftover(path: str) -> None:
    """Remove what an earlier attempt left at `path`, a symbolic link included (never followed)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)


def keys_its_own_settings(scene: bpy.types.Scene) -> bool:
    """Whether the scene animates its own settings (render, view layers, sequencer strips): keys, drivers or NLA
    on the scene itself. Objects, materials and worlds are animated by the render's own evaluation either way."""
    animation = scene.animation_data
    return animation is not None and (
        animation.action is not None or len(animation.drivers) > 0 or len(animation.nla_tracks) > 0
    )


def render_frame(scene: bpy.types.Scene, frame: int, frame_set: bool = True, tile=None) -> None:
    """Render one frame through Blender's animation render, the code path of `blender -b FILE -a`, so the pixels
    and file naming are Blender's own.

    With `frame_set`, the scene's own keyed settings are first made those of this frame, whatever frame this
    Blender rendered before: the render copies some of them (stereo views, for one) before it evaluates the frame.
    Plain -a keeps those at their value from when the file was loaded instead, so a file that keys them renders
    differently there. It costs an evaluation of the whole scene for the viewport besides the render's own (seconds
    a frame on a heavy scene), so it is only done for a scene that keys its own settings.
    """
    global current
    path = expected_path(scene, frame)
    # A leftover from an earlier attempt: with overwriting off Blender would skip the frame, and a planted link
    # would make Blender write through it.
    remove_leftover(path)
    current = FrameState(frame)
    error = None
    try:
        if frame_set:
            scene.frame_set(frame)
        scene.frame_start = frame
        scene.frame_end = frame
        with tile_border(scene, tile):
            # Named: the scene chosen with --scene need not be the window's.
            bpy.ops.render.render(animation=True, scene=scene.name)
    except RuntimeError as exc:
        error = str(exc).strip() or "the render operator failed"
    except Exception as exc:  # noqa: BLE001 - one frame's failure must never end the session
        error = f"{type(exc).__name__}: {exc}"
    state, current = current, None
    ok = error is None and state.written_path is not None and os.path.isfile(state.written_path)
    if ok and tile:
        state.written_path = set_tile_aside(str(state.written_path), tile)
    preview = make_preview(scene, str(state.written_path)) if ok and not tile and needs_preview(scene) else None
    print(f"{SYNC_PREFIX}{frame}", flush=True)
    channel.send("finished", frame=frame, ok=ok, error=error, path=state.written_path, canceled=state.canceled,
                 preview=preview)


@contextlib.contextmanager
def tile_border(scene: bpy.types.Scene, tile):
    """Render only `tile` ({columns, rows, number}) of the frame, full-size and uncropped, then put the scene's own
    border back (the session renders on with it)."""
    render = scene.render
    if not tile:
        yield
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tile_rects  # found next to this script

    saved = (render.use_border, render.use_crop_to_border, render.border_min_x, render.border_max_x,
             render.border_min_y, render.border_max_y)
    width = render.resolution_x * render.resolution_percentage // 100
    height = render.resolution_y * render.resolution_percentage // 100
    columns, rows, number = int(tile["columns"]), int(tile["rows"]), int(tile["number"])
    if render.image_settings.file_format == "OPEN_EXR_MULTILAYER":
        raise RuntimeError("a multilayer OpenEXR still cannot be split into tiles yet: its passes would not be "
                           "merged; choose OpenEXR or render it whole")
    if width < columns or height < rows:
        raise RuntimeError(f"a frame of {width}x{height} pixels cannot be split into {columns}x{rows} tiles")
    render.use_border, render.use_crop_to_border = True, False
    (render.border_min_x, render.border_max_x, render.border_min_y,
     render.border_max_y) = tile_rects.border(width, height, columns, rows, number)
    try:
        yield
    finally:
        (render.use_border, render.use_crop_to_border, render.border_min_x, render.border_max_x,
         render.border_min_y, render.border_max_y) = saved


def set_tile_aside(path: str, tile) -> str:
    """Rename a rendered tile with its mark (tile_rects.tile_name), so the still's tiles never share a name."""
    import tile_rects  # on the path since tile_border

    count = int(tile["columns"]) * int(tile["rows"])
    renamed = tile_rects.tile_name(path, int(tile["number"]), count)
    remove_leftover(renamed)
    os.replace(path, renamed)
    return renamed


def render_problem(message: str, frame: int) -> None:
    """Answer a render request with `message` as the frame's error: the session cannot render what it was asked."""
    print(f"{SYNC_PREFIX}{frame}", flush=True)
    channel.send("finished", frame=frame, ok=False, error=message, path=None, canceled=False, preview=None)


# -- previews -------------------------------------------------------------------------------------------------------


def needs_preview(scene: bpy.types.Scene) -> bool:
    """Whether the scene's frames need a PNG preview: every format but those a browser shows as they are."""
    settings = scene.render.image_settings
    return not any(settings.file_format == name and depth in (None, settings.color_depth)
                   for name, depth in BROWSER_FORMATS)


def preview_path(frame_path: str) -> str:
    """Where a frame's preview is saved: beside it, under a hidden name no frame of Blender's naming can have."""
    return os.path.join(os.path.dirname(frame_path), f".renderq-preview-{os.path.basename(frame_path)}.png")


def _image_settings(settings) -> dict:
    """The scene's output format settings, every one that can be set, so they can be put back exactly."""
    values = {}
    for prop in settings.bl_rna.properties:
        if prop.is_readonly or prop.type in ("POINTER", "COLLECTION") or prop.identifier == "rna_type":
            continue
        values[prop.identifier] = getattr(settings, prop.identifier)
    return values


def _restore_image_settings(settings, values: dict) -> None:
    # The kind of file first (Blender 5's media_type, then the format): each limits what the others may be.
    for name in ("media_type", "file_format"):
        if name in values:
            setattr(settings, name, values[name])
    for name, value in values.items():
        try:
            setattr(settings, name, value)
        except (AttributeError, TypeError, ValueError):
            pass  # a setting this format does not have


def _save_render_result_png(scene: bpy.types.Scene, path: str) -> None:
    """Save the render result as an 8-bit PNG with the scene's view transform, as Blender would write a PNG frame.

    `save_render` takes the scene's own output settings (another scene has no render result to save), so they are
    switched to PNG for the save and put back exactly afterwards: the next frame is written as before.
    """
    settings = scene.render.image_settings
    saved = _image_settings(settings)
    try:
        if "media_type" in saved:
            settings.media_type = "IMAGE"
        settings.file_format = "PNG"
        settings.color_mode = "RGBA"
        settings.color_depth = "8"
        settings.compression = 0  # a temporary file: speed over size
        bpy.data.images["Render Result"].save_render(filepath=path, scene=scene)
    finally:
        _restore_image_settings(settings, saved)


def make_preview(scene: bpy.types.Scene, frame_path: str) -> str | None:
    """Save a small PNG of the frame just rendered beside it; its path, or None (printed why) when that failed.

    Made from the render result Blender holds, not from the written file, which may be a multilayer EXR no image
    loader shows as one picture. The full-size PNG is loaded, scaled down and saved again, then removed.
    """
    final = preview_path(frame_path)
    full = final + ".full.png"
    image = None
    try:
        remove_leftover(final)
        remove_leftover(full)
        _save_render_result_png(scene, full)
        image = bpy.data.images.load(full, check_existing=False)
        width, height = image.size
        if width > PREVIEW_WIDTH:
            image.scale(PREVIEW_WIDTH, max(1, round(height * PREVIEW_WIDTH / width)))
        image.filepath_raw = final
        image.file_format = "PNG"
        image.save()
        return final if os.path.isfile(final) else None
    except Exception as error:  # noqa: BLE001 - a frame without a preview is still a good frame
        print(f"renderq: no preview of {os.path.basename(frame_path)}: {error}", flush=True)
        return None
    finally:
        if image is not None:
            bpy.data.images.remove(image)
        if os.path.isfile(full):
            os.remove(full)


# -- scenes and cameras -----------------------------------------------------------------------------------------


def _names(collection) -> str:
    return ", ".join(repr(item.name) for item in collection) or "none"


def chosen_scene(name: str) -> tuple[bpy.types.Scene, str | None]:
    """The scene to render (the named one, else the one the file was saved with) and a sentence when the file has
    no scene of that name."""
    if not name:
        return bpy.context.scene, None
    scene = bpy.data.scenes.get(name)
    if scene is None:
        return bpy.context.scene, f"the file has no scene {name!r}; its scenes: {_names(bpy.data.scenes)}"
    return scene, None


def choose_camera(scene: bpy.types.Scene, name: str) -> str | None:
    """Make the named camera object the scene's camera; a sentence when the file has no camera of that name."""
    if not name:
        return None
    cameras = [obj for obj in bpy.data.objects if obj.type == "CAMERA"]
    camera = next((obj for obj in cameras if obj.name == name), None)
    if camera is None:
        return f"the file has no camera {name!r}; its cameras: {_names(cameras)}"
    scene.camera = camera
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="frame_script.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--allow-python", action="store_true", help="let the file's own Python run")
    parser.add_argument("--scene", default="", help="the scene to render; the file's own by default")
    parser.add_argument("--camera", default="", help="the camera object to render through; the scene's by default")
    parser.add_argument("--device", default="", help="enable Cycles' devices of this type only")
    parser.add_argument("--gpu", type=int, action="append", default=[], help="only the device at this index")
    parser.add_argument("--task-device", default="", choices=("", "GPU", "CPU"), help="scene.cycles.device")
    return parser.parse_args(argv)


def use_devices(scene: bpy.types.Scene, device: str, gpus: list, task_device: str) -> None:
    """Enable the worker's Cycles devices for this session, and set the scene's device as the task asks."""
    if device:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import blender_devices  # found next to this script

        enabled = blender_devices.enable_devices(device, gpus)
        print(f"renderq: Cycles renders on {', '.join(d['name'] for d in enabled) or 'no device'}", flush=True)
    if task_device and hasattr(scene, "cycles"):
        scene.cycles.device = task_device


def main() -> None:
    global channel
    args = parse_args(sys.argv)
    channel = Channel(args.port)
    # Looked at before the file's Python could run (Blender opened it with -Y), so it names what the file holds.
    python_found = python_in_file()
    if args.allow_python:
        open_with_scripts(bpy.data.filepath)
    scene, problem = chosen_scene(args.scene)
    problem = problem or choose_camera(scene, args.camera)
    use_devices(scene, args.device, args.gpu, args.task_device)
    original_output = scene.render.filepath
    os.makedirs(args.output_dir, exist_ok=True)
    scene.render.filepath = output_filepath(original_output, args.output_dir)
    movie_format = frames_instead_of_movie(scene)
    animated_settings = keys_its_own_settings(scene)
    for handlers, handler in HANDLERS:
        handlers.append(handler)
    channel.send(
        "hello",
        token=os.environ.get(TOKEN_ENV, ""),
        protocol=PROTOCOL,
        blender_version=".".join(str(part) for part in bpy.app.version),
        pid=os.getpid(),
        scene=scene.name,
        blend_file=bpy.data.filepath,
        output_path=original_output,
        output_dir=os.path.abspath(args.output_dir),
        frame_start=scene.frame_start,
        frame_end=scene.frame_end,
        file_format=scene.render.image_settings.file_format,
        is_movie=movie_format is not None,
        python_found=python_found,
        python_allowed=bool(args.allow_python),
    )
    try:
        while True:
            message = channel.receive()
            if message is None or message.get("type") == "quit":
                break
            if message.get("type") == "render" and problem:
                render_problem(problem, int(message["frame"]))
            elif message.get("type") == "render":
                render_frame(scene, int(message["frame"]), frame_set=animated_settings, tile=message.get("tile"))
    finally:
        for handlers, handler in HANDLERS:
            if handler in handlers:
                handlers.remove(handler)
        channel.close()
    # Returning ends the script; with -b and nothing after it on the command line, Blender then quits.


if __name__ == "__main__":
    main()
