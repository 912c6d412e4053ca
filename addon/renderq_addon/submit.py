"""Submitting the open file: checks on the main thread, then packing and upload in a job.

The artist's file, path, dirty flag and settings are never changed. When the session has unsaved changes, the
current state is saved as a copy (`save_as_mainfile(copy=True)`) beside the original, under a hidden temporary
name, so that `//` paths resolve the same; the copy is packed, named after the original in the manifest, and
removed when the job ends. Never-saved files are refused before anything is packed; missing assets are listed
before anything is uploaded. A scene whose output is a movie is submitted unchanged: its frames render as PNG and
the farm makes the movie from them with the scene's own FFmpeg settings (the task's video).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import bpy

from renderq import capabilities, exposure, packing, tiles
from renderq import submit as pipeline
from renderq.model import DEFAULT_RENDER_ORDER

from . import client, jobs, notify, props, state, text

JOB_KEY = "submit"
# Formats that write one file for the whole range: the farm renders their frames as PNG and makes the movie itself.
MOVIE_FORMATS = frozenset({"FFMPEG", "AVI_JPEG", "AVI_RAW"})
COPY_PREFIX = ".renderq-"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Copies of unsaved changes not yet removed; removed at exit should Blender quit during a submit.
_pending_copies: set[str] = set()
_pending_lock = threading.Lock()


Refused = client.Refused


@dataclass(frozen=True)
class SubmitRequest:
    """Everything the job needs, read from Blender on the main thread."""

    settings: client.Settings
    blend_to_pack: str
    """The file BAT traces: the saved original, or the copy of the unsaved state."""
    copy_path: str | None
    """The temporary copy to remove when done, if one was made."""
    original_name: str
    """The original's file name: the main file is named so in the manifest."""
    task_name: str
    frame_start: int
    frame_end: int
    frame_step: int
    priority: int
    workers: list[str]
    allow_missing: bool
    allow_outside: bool
    blender_version: str
    submitted_by: str
    scene: str = ""
    """The scene the artist is looking at, which the farm renders (the file may have been saved with another)."""
    camera: str = ""
    """Its active camera's object name; empty when it has none."""
    # What a worker must offer: its tags, the scene's engine, and a GPU for device "GPU" ("" keeps the file's).
    tags: list[str] = field(default_factory=list)
    render_engine: str = ""
    device: str = ""
    video: dict[str, str] | None = None
    """The video asked for ({"container": ...}), or None."""
    notify: list[str] = field(default_factory=list)
    """URLs told of the task's events (the coordinator checks them and says why it refuses one)."""
    order: str = DEFAULT_RENDER_ORDER
    """The order the frames are handed out in (renderq.model.RENDER_ORDERS)."""
    scout_frames: int = 0
    """Frames rendered first before the task waits for approval; 0 for none."""
    tiles: str = ""
    """"CxR" to split the one frame into tiles (renderq.tiles), or ""."""


@dataclass
class SubmitOutcome:
    """What the job did: a task, or what stopped it before upload (missing assets, files from outside the project
    folder, hidden files)."""

    task: dict | None
    missing: list[str] = field(default_factory=list)
    refusal: str = ""
    """Why files from outside the project folder or hidden files stopped it (see renderq.exposure)."""
    outside: list[str] = field(default_factory=list)
    """What the panel then lists: hidden files, files from outside the project folder, links leading out of it."""
    files_total: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0


# -- main thread -------------------------------------------------------------------------------------------------


def blender_major_minor() -> str:
    """The running Blender's major.minor, e.g. "3.4"."""
    major, minor = bpy.app.version[:2]
    return f"{major}.{minor}"


def is_movie_output(scene: bpy.types.Scene) -> bool:
    """Whether the scene's output is one movie file rather than images."""
    render = scene.render
    return render.image_settings.file_format in MOVIE_FORMATS or bool(getattr(render, "is_movie_format", False))


def video_request(scene: bpy.types.Scene) -> dict[str, str] | None:
    """The task's video: the container picked when Make a Video is ticked, else the scene's own movie settings
    when its output is a movie, else None."""
    if scene.renderq.make_video:
        return {"container": scene.renderq.video_container.lower()}
    if is_movie_output(scene):
        return {"container": "scene"}
    return None


def denoises(scene: bpy.types.Scene) -> bool:
    """Whether Cycles denoises the scene's render: its own denoising on, and a view layer's too."""
    cycles = getattr(scene, "cycles", None)
    if scene.render.engine != "CYCLES" or cycles is None or not cycles.use_denoising:
        return False
    return any(getattr(getattr(layer, "cycles", None), "use_denoising", True) for layer in scene.view_layers)


def tiles_request(scene: bpy.types.Scene, frame_count: int, video: dict[str, str] | None) -> str:
    """The task's tiles ("CxR") when Split into Tiles is ticked, else ""; Refused for a scene it cannot split."""
    settings = scene.renderq
    if not settings.split_tiles:
        return ""
    text = f"{settings.tile_columns}x{settings.tile_rows}"
    try:
        tiles.parse_tiles(text)
    except ValueError as error:
        raise Refused(f"Split into Tiles: {error}") from None
    if frame_count != 1:
        raise Refused(f"Split into Tiles renders a single frame, and the range has {frame_count} frames: set the "
                      "range to one frame")
    if video:
        raise Refused("Split into Tiles makes a still: untick Make a Video (or choose an image output)")
    if scene.render.image_settings.file_format == "OPEN_EXR_MULTILAYER":
        raise Refused("A multilayer OpenEXR cannot be split into tiles yet: its passes would not be merged; choose "
                      "OpenEXR or render it whole")
    if denoises(scene):
        raise Refused("This scene is denoised, so it cannot be split into tiles: each tile denoised alone leaves "
                      "seams, and RenderQ does not yet denoise the merged image; turn denoising off or render it "
                      "whole")
    return text


def output_note(scene: bpy.types.Scene) -> str | None:
    """What the panel says about a movie output (it is no reason to refuse), else None."""
    if not is_movie_output(scene) or scene.renderq.make_video:
        return None
    return (f"The output is a movie ({scene.render.image_settings.file_format}): the frames render as PNG and the "
            "farm makes the movie from them with these settings")


def check(context: bpy.types.Context) -> SubmitRequest:
    """Every check that needs no packing, then the request; raises Refused. Saves nothing.

    What the artist must fix in the file comes first, then what concerns the connection.
    """
    if jobs.is_running(JOB_KEY):
        raise Refused("A submit is already running; wait until it is finished")
    filepath = bpy.data.filepath
    if not filepath:
        raise Refused("Save the file first: the farm renders the saved .blend together with the files next to it")
    folder = os.path.dirname(filepath)
    if not os.path.isdir(folder):
        raise Refused(f"The file's folder {folder} does not exist any more; save the file again")
    scene = context.scene
    frame_start, frame_end, frame_step = props.frame_range(scene)
    if frame_end < frame_start:
        raise Refused(f"The frame range {frame_start}-{frame_end} ends before it starts")
    settings_of_scene = scene.renderq
    workers: list[str] = []
    if settings_of_scene.assignment == "MANUAL":
        workers = props.picked_workers(scene)
        if not workers:
            raise Refused("Pick at least one worker, or set the assignment to Automatic")
    original_name = os.path.basename(filepath)
    task_name = settings_of_scene.task_name.strip() or os.path.splitext(original_name)[0]
    if "/" in task_name or ".." in task_name or len(task_name) > 64:
        raise Refused(f"The task name {task_name!r} is not usable: at most 64 characters, no '/' and no '..'")
    try:
        tags = capabilities.parse_tags([settings_of_scene.tags])
    except ValueError as error:
        raise Refused(f"Tags: {error}") from None
    video = video_request(scene)
    tiled = tiles_request(scene, len(range(frame_start, frame_end + 1, frame_step)), video)
    settings = client.checked_settings(context)
    return SubmitRequest(
        settings=settings,
        blend_to_pack=filepath,
        copy_path=None,
        original_name=original_name,
        task_name=task_name,
        frame_start=frame_start,
        frame_end=frame_end,
        frame_step=frame_step,
        priority=settings_of_scene.priority,
        workers=workers,
        allow_missing=settings_of_scene.allow_missing,
        allow_outside=settings_of_scene.allow_outside,
        blender_version=blender_major_minor(),
        submitted_by=client.current_user(),
        scene=scene.name,
        camera=scene.camera.name if scene.camera is not None else "",
        tags=tags,
        render_engine=scene.render.engine,
        device="" if settings_of_scene.device == "FILE" else settings_of_scene.device,
        video=None if tiled else video,
        tiles=tiled,
        notify=[settings_of_scene.notify_url.strip()] if settings_of_scene.notify_url.strip() else [],
        order=settings_of_scene.render_order,
        scout_frames=settings_of_scene.scout_frames,
    )


def _zstandard_available() -> bool:
    return importlib.util.find_spec("zstandard") is not None


def _is_zstd_compressed(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _ZSTD_MAGIC
    except OSError:
        return False


def needs_copy(filepath: str) -> bool:
    """Whether the file on disk is not what the artist sees."""
    return bpy.data.is_dirty or not os.path.isfile(filepath)


def compression_problem(filepath: str) -> str | None:
    """A sentence when the packer cannot read the file because it is compressed, else None.

    Blender saves zstd-compressed files when "Compress" is on. Official builds bundle the zstandard module the
    packer needs to read them; some Linux distributions' builds (Debian's 3.4) do not. Saving the copy
    uncompressed instead is no way out: that would switch the session's Compress setting off.
    """
    if _zstandard_available() or not _is_zstd_compressed(filepath):
        return None
    return ("This file is saved compressed, and this Blender's Python lacks the zstandard module needed to read "
            "it for the farm: save it with Compress turned off (File > Save As, gear menu) and submit again")


def save_snapshot(filepath: str) -> str:
    """Save the current state beside `filepath` under a hidden temporary name; return the copy's path.

    `copy=True` leaves the session's file path alone (for the dirty flag see `_keep_marked_unsaved`);
    `relative_remap=False` keeps every path in memory as it is (the copy is in the same folder, so relative paths
    mean the same anyway).
    """
    folder = os.path.dirname(filepath)
    stem = os.path.splitext(os.path.basename(filepath))[0]
    while True:
        # Not created in advance: Blender would keep an existing file as a .blend1 backup.
        copy_path = os.path.join(folder, f"{COPY_PREFIX}{stem}-{secrets.token_hex(4)}.blend")
        if not os.path.exists(copy_path):
            break
    # `compress` is left out on purpose: passing it would also change the session's own Compress setting.
    options: dict[str, Any] = {"filepath": copy_path, "copy": True, "relative_remap": False}
    with _pending_lock:
        _pending_copies.add(copy_path)
    # With "Automatically Pack Resources" on, every save packs the external files into the session itself; the
    # copy does without (the packer takes the files as they are) and the session stays as it was.
    autopack = bpy.data.use_autopack
    try:
        if autopack:
            bpy.data.use_autopack = False
        try:
            result = bpy.ops.wm.save_as_mainfile(**options)
        finally:
            if autopack:
                bpy.data.use_autopack = True
    except RuntimeError as error:
        remove_copy(copy_path)
        raise Refused(f"Could not save a copy of the unsaved changes in {folder} ({str(error).strip()}); "
                      "save the file and submit again") from None
    if "FINISHED" not in result or not os.path.isfile(copy_path):
        remove_copy(copy_path)
        raise Refused(f"Could not save a copy of the unsaved changes in {folder}; save the file and submit again")
    _keep_marked_unsaved(filepath)
    return copy_path


def _keep_marked_unsaved(filepath: str) -> None:
    """Put the "unsaved changes" mark back if the copy save took it away.

    In the interface, Blender 3.4 handles the "file saved" notifier of a copy save like that of a real save and
    marks the session saved, a moment after the save returns; the artist would then lose the warning about unsaved
    changes on quit. A short timer watches for that and marks the session modified again with an undo step
    (nothing else can). Background mode handles no notifiers, so the mark never goes there.
    """
    if bpy.app.background or not bpy.data.is_dirty:
        return
    saved_stamp = _file_stamp(filepath)
    checks_left = [20]

    def check() -> float | None:
        if not bpy.data.is_dirty:
            # Unless the artist really saved meanwhile (the original changed on disk, or another file is open).
            if bpy.data.filepath == filepath and _file_stamp(filepath) == saved_stamp:
                try:
                    bpy.ops.ed.undo_push(message="RenderQ: unsaved changes")
                except RuntimeError as error:
                    print(f"RenderQ: could not keep the file marked as modified: {error}", flush=True)
            return None
        checks_left[0] -= 1
        return 0.05 if checks_left[0] > 0 else None

    bpy.app.timers.register(check, first_interval=0.0)


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def remove_copy(copy_path: str) -> None:
    """Delete a temporary copy and what Blender may have written next to it."""
    for path in (copy_path, copy_path + "@", copy_path + "1"):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            print(f"RenderQ: could not remove the temporary copy {path}: {error}", flush=True)
    with _pending_lock:
        _pending_copies.discard(copy_path)


def start(context: bpy.types.Context) -> str:
    """Check, snapshot if needed, and start the submit job; return a sentence for the artist. Raises Refused."""
    request = check(context)
    copy_path = None
    problem = compression_problem(request.blend_to_pack) if os.path.isfile(request.blend_to_pack) else None
    if problem:
        raise Refused(problem)
    if needs_copy(request.blend_to_pack):
        copy_path = save_snapshot(request.blend_to_pack)
        request = replace(request, blend_to_pack=copy_path, copy_path=copy_path)
    session = state.SESSION
    session.last_error = None
    session.missing_assets = []
    session.outside_files = []
    session.submit = state.SubmitProgress(active=True, stage="trace", text="Packing...")
    started = jobs.start(
        JOB_KEY,
        lambda progress: run(request, progress),
        on_done=lambda outcome: _on_done(request, outcome),
        on_error=lambda error: _on_error(request, error),
        on_progress=_on_progress,
    )
    if not started:  # cannot happen after check(), but a copy must never be left behind
        if copy_path:
            remove_copy(copy_path)
        session.submit = state.SubmitProgress()
        raise Refused("A submit is already running; wait until it is finished")
    what = "the unsaved state of " if copy_path else ""
    return f"Packing {what}{request.original_name} for the farm..."


# -- job (worker thread: no bpy here) ------------------------------------------------------------------------------


def run(request: SubmitRequest, progress: Callable[[Any], None]) -> SubmitOutcome:
    """Pack, stop for hidden files, files from outside the project folder and missing assets (unless allowed),
    then the shared pipeline (renderq.submit): upload what the coordinator lacks, submit the task."""

    def report(stage: str, done: int, total: int) -> None:
        progress((stage, done, total))

    try:
        with tempfile.TemporaryDirectory(prefix="renderq-submit-") as staging:
            packed = packing.pack_project(request.blend_to_pack, staging, progress=report)
            found = packed.exposure
            refusal = exposure.refusal(found, packed.project_folder, allow_outside=request.allow_outside,
                                       remedy="tick Allow Files Outside the Project Folder and submit again")
            if refusal:
                return SubmitOutcome(task=None, refusal=refusal, outside=found.hidden + found.outside + found.links)
            missing = list(packed.missing)
            if missing and not request.allow_missing:
                return SubmitOutcome(task=None, missing=missing)
            coordinator = request.settings.client(timeout=client.TRANSFER_TIMEOUT)
            # A packed copy of unsaved changes is submitted under the original's name.
            submit_plan = pipeline.plan(coordinator, packed, request.original_name if request.copy_path else None)
            task, uploaded = pipeline.execute(coordinator, submit_plan, {
                "name": request.task_name,
                "blender_version": request.blender_version,
                "blender_version_exact": False,
                "missing_assets": missing,
                "frame_start": request.frame_start,
                "frame_end": request.frame_end,
                "frame_step": request.frame_step,
                "priority": request.priority,
                "workers": list(request.workers),
                "submitted_by": request.submitted_by,
                "settings": scene_settings(request),
                "tags": request.tags,
                "render_engine": request.render_engine,
                "device": request.device,
                "order": request.order,
                **({"tiles": request.tiles} if request.tiles else {}),
                **({"video": request.video} if request.video else {}),
                **({"notify": request.notify} if request.notify else {}),
                **({"scout_frames": request.scout_frames} if request.scout_frames else {}),
            }, report)
            return SubmitOutcome(task=task, missing=missing, files_total=submit_plan.files_total,
                                 files_uploaded=uploaded.files, bytes_uploaded=uploaded.bytes)
    finally:
        if request.copy_path:
            remove_copy(request.copy_path)


def scene_settings(request: SubmitRequest) -> dict[str, str]:
    """The task's settings naming the scene and camera to render (what the worker's frame script takes)."""
    return {name: value for name, value in (("scene", request.scene), ("camera", request.camera)) if value}


# -- results, on the main thread -----------------------------------------------------------------------------------


_STAGE_TEXT = {
    "trace": lambda done, total: f"Tracing assets: {done} found",
    "verify": lambda done, total: "Checking that the packed files are complete",
    "hash": lambda done, total: f"Hashing {text.format_bytes(done)} of {text.format_bytes(total)}",
    "upload": lambda done, total: f"Uploading {text.format_bytes(done)} of {text.format_bytes(total)}",
    "submit": lambda done, total: "Creating the task",
}


def _on_progress(payload: Any) -> None:
    if not isinstance(payload, tuple) or len(payload) != 3:
        return
    stage, done, total = payload
    describe = _STAGE_TEXT.get(stage)
    state.SESSION.submit = state.SubmitProgress(
        active=True, stage=stage, done=done, total=total, text=describe(done, total) if describe else stage
    )


def _on_done(request: SubmitRequest, outcome: SubmitOutcome) -> None:
    session = state.SESSION
    session.submit = state.SubmitProgress()
    session.missing_assets = list(outcome.missing)
    session.outside_files = list(outcome.outside)
    if outcome.refusal:
        notify.tell(f"Nothing was submitted: {outcome.refusal}", "ERROR", popup=True)
        # The sentence names the first few; the console gets them all.
        for line in outcome.outside:
            print(f"RenderQ:   {line}", flush=True)
        return
    if outcome.task is None:
        count = len(outcome.missing)
        first = outcome.missing[0] if outcome.missing else ""
        notify.tell(
            f"Nothing was submitted: {count} asset(s) are missing on disk (first: {first}); relink them, "
            "or tick Allow Missing Assets to submit anyway",
            "ERROR", popup=True,
        )
        return
    task = outcome.task
    task_id = task.get("task_id")
    session.last_task_id = task_id if isinstance(task_id, int) else None
    state.remember_task(task, from_session=True)
    frames = f"{request.frame_start}-{request.frame_end}"
    if request.frame_step > 1:
        frames += f" step {request.frame_step}"
    missing = f"; {len(outcome.missing)} missing asset(s) recorded" if outcome.missing else ""
    notify.tell(
        f"Submitted task {task_id} ({request.task_name}, frames {frames}, Blender {request.blender_version}): "
        f"uploaded {outcome.files_uploaded} of {outcome.files_total} file(s), "
        f"{text.format_bytes(outcome.bytes_uploaded)}{missing}",
    )


def _on_error(request: SubmitRequest, error: BaseException) -> None:
    state.SESSION.submit = state.SubmitProgress()
    if isinstance(error, (ValueError, packing.PackError)):
        sentence = f"Cannot pack {request.original_name}: {error}"
    else:
        sentence = client.error_sentence(error)
    notify.tell(f"Nothing was submitted: {sentence}", "ERROR", popup=True)


@atexit.register
def _remove_pending_copies() -> None:
    # Blender quit during a submit: its thread is gone, so its `finally` will not run.
    with _pending_lock:
        leftovers = list(_pending_copies)
    for copy_path in leftovers:
        remove_copy(copy_path)
