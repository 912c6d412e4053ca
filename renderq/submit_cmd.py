"""The `renderq submit` command: find the frame range with Blender, pack the .blend, upload what the coordinator
lacks, submit the task and, with --wait, follow it and fetch the frames."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderq import exposure, submit
from renderq.blend_header import read_render_engine
from renderq.blender_path import BlenderNotFoundError, find_blender
from renderq.cli_common import EXIT_INTERRUPTED, EXIT_OK, UsageError, make_client
from renderq.frame_download import FrameFetcher
from renderq.http_client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable
from renderq.model import FrameStatus
from renderq.progress import ProgressLine, StepTimes, bar, format_bytes, printable
from renderq.task_view import download_done_frames, progress_of, report_outcome, wait_for_task

if TYPE_CHECKING:
    from renderq.blend_scenes import BlendScenes
    from renderq.packing import PackResult

# Files above this size get an upload progress line; small ones go up before a line would be readable.
UPLOAD_PROGRESS_MIN_BYTES = 8 * 1024 * 1024
BLENDER_READ_TIMEOUT = 120.0


_RANGE_MARK = "RENDERQ_FRAME_RANGE"
_RANGE_SCRIPT = (
    "import bpy; s = bpy.context.scene; "
    f"print('{_RANGE_MARK}', s.frame_start, s.frame_end, s.frame_step, flush=True)"
)


def read_frame_range(blend_path: str, blender: str) -> tuple[int, int, int] | None:
    """The active scene's (start, end, step) as Blender reads it from the file, or None when that fails."""
    command = [
        blender, "--background", "--factory-startup", "--disable-autoexec", "-noaudio",
        blend_path, "--python-expr", _RANGE_SCRIPT,
    ]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=BLENDER_READ_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == _RANGE_MARK:
            try:
                return int(parts[1]), int(parts[2]), int(parts[3])
            except ValueError:
                return None
    return None


def current_user() -> str:
    """The login name recorded as the task's submitter; empty when it cannot be found."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def timeouts_and_python(args: argparse.Namespace) -> dict[str, Any]:
    """The optional submit fields given on the command line (the coordinator's defaults apply to the rest)."""
    fields: dict[str, Any] = {}
    if args.frame_timeout is not None:
        fields["frame_timeout"] = args.frame_timeout
    if args.no_progress_timeout is not None:
        fields["no_progress_timeout"] = args.no_progress_timeout
    if args.needs_python:
        fields["needs_python"] = True
    if args.tag:
        fields["tags"] = args.tag
    if args.device:
        fields["device"] = args.device
    if getattr(args, "order", None):
        fields["order"] = args.order
    if getattr(args, "scout", None):
        fields["scout_frames"] = args.scout
    return fields


def video_request(blend: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The submit's `video` field: --video's container, else, when the scene's output is a movie, the scene's own
    FFmpeg settings (its frames render as PNG and the farm encodes the movie from them)."""
    from renderq.blend_header import read_movie_output

    container = getattr(args, "video", None)
    if container:
        return {"video": {"container": container}}
    if read_movie_output(str(blend)):
        print(f"the scene in {blend.name} writes a movie: its frames render as PNG and a worker with FFmpeg makes the "
              "movie from them with the scene's own settings")
        return {"video": {"container": "scene"}}
    return {}


def tiles_request(blend: Path, args: argparse.Namespace, frame_range: tuple[int, int, int | None]) -> dict[str, Any]:
    """The submit's `tiles` field for --tiles; UsageError, before anything is packed, for a task that cannot be
    split: more than one frame, a video, or a scene Cycles denoises."""
    if not getattr(args, "tiles", None):
        return {}
    frame_start, frame_end, step = frame_range
    count = len(range(frame_start, frame_end + 1, step or 1))
    if count != 1:
        raise UsageError(f"only a single frame can be split into tiles, and this task has {count} frames; "
                         "give --frames N")
    if getattr(args, "video", None):
        raise UsageError("a task split into tiles is a still and cannot also make a video")
    found = scenes_in_file(blend, args)
    if found.multilayer.get(args.scene or found.current, False):
        raise UsageError(f"the scene in {blend.name} writes a multilayer OpenEXR, which cannot be split into tiles "
                         "yet: its passes would not be merged; choose OpenEXR or render it without --tiles")
    if found.denoising.get(args.scene or found.current, False):
        raise UsageError(f"the scene in {blend.name} is denoised, so it cannot be split into tiles: each tile "
                         "denoised alone leaves seams, and RenderQ does not yet denoise the merged image; turn "
                         "denoising off or render it without --tiles")
    return {"tiles": "{}x{}".format(*args.tiles)}


def frames_to_submit(blend: Path, args: argparse.Namespace) -> tuple[int, int, int | None]:
    """(start, end, step) from --frames and --step, else the scene's as the file says (read without Blender; with
    Blender when that fails); step None means 1."""
    # Imported here: BAT is only needed by `submit`, and other commands should start fast.
    from renderq.packing import read_frame_range as read_from_file

    step = args.step
    if args.frames is not None:
        frame_start, frame_end = args.frames
        return frame_start, frame_end, step
    named = scenes_in_file(blend, args).frame_ranges.get(args.scene) if getattr(args, "scene", None) else None
    found = named or read_from_file(str(blend)) or _frame_range_from_blender(blend)
    frame_start, frame_end, scene_step = found
    if frame_end < frame_start:
        raise UsageError(f"the scene in {blend} ends at frame {frame_end} before it starts; give --frames")
    return frame_start, frame_end, step or max(1, scene_step)


def scenes_in_file(blend: Path, args: argparse.Namespace) -> BlendScenes:
    """The file's scenes and cameras, checked against --scene and --camera: UsageError naming those it has when it
    lacks one, or when the file cannot be read to check."""
    # Imported here: BAT is only needed by `submit`, and other commands should start fast.
    from renderq.blend_scenes import read_scenes, refusal

    found = read_scenes(str(blend))
    if found is None:
        raise UsageError(f"the scenes and cameras of {blend} could not be read to check --scene and --camera")
    problem = refusal(found, blend.name, args.scene, args.camera)
    if problem:
        raise UsageError(problem)
    return found


def render_settings(blend: Path, args: argparse.Namespace) -> dict[str, str]:
    """The task's settings: the scene and camera to render, checked against the file, when given."""
    if not (args.scene or args.camera):
        return {}
    scenes_in_file(blend, args)
    return {name: value for name, value in (("scene", args.scene), ("camera", args.camera)) if value}


def _frame_range_from_blender(blend: Path) -> tuple[int, int, int]:
    """The scene's frame range as Blender reads it: for a file whose range BAT could not read."""
    try:
        blender = find_blender()
    except BlenderNotFoundError as error:
        raise UsageError(f"cannot read the frame range without Blender; give --frames (e.g. --frames 1-250): "
                         f"{error}") from None
    found = read_frame_range(str(blend), blender)
    if found is None:
        raise UsageError(f"Blender could not read the frame range of {blend}; give --frames (e.g. --frames 1-250)")
    return found


def cmd_submit(args: argparse.Namespace) -> int:
    """Pack a .blend with its assets, upload what the coordinator lacks, submit the task; with --wait follow it
    and fetch the frames as they finish."""
    blend = Path(args.file)
    if not blend.is_file():
        raise UsageError(f"{args.file} is not a file")
    timings = StepTimes(args.timings)
    settings = render_settings(blend, args)
    frame_range = frames_to_submit(blend, args)
    client = make_client(args)
    line = ProgressLine()
    submitted = pack_and_submit(blend, frame_range, args, client, line, timings, settings)
    if submitted is None:
        return EXIT_INTERRUPTED
    task_id = submitted["task_id"]
    if not args.wait:
        return EXIT_OK
    dest_dir = args.output or f"renderq-{task_id}"
    fetcher = FrameFetcher(client, task_id, dest_dir,
                           on_saved=lambda number: timings.mark("frame on disk", f"frame {number}"))
    try:
        task = wait_for_task(client, task_id, line, on_summary=fetch_as_done(client, task_id, fetcher))
    except KeyboardInterrupt:
        line.finish()
        print(
            f"stopped waiting; task {task_id} stays on the farm "
            f"(see renderq status {task_id}; renderq cancel {task_id} stops it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    fetched = download_done_frames(client, task, dest_dir, line, fetcher)
    timings.mark("download", f"{len(fetched.paths)} frames")
    return report_outcome(task, dest_dir, fetched.paths, skipped=len(fetched.skipped))


def pack_and_submit(blend: Path, frame_range: tuple[int, int, int | None], args: argparse.Namespace,
                    client: CoordinatorClient, line: ProgressLine, timings: StepTimes,
                    settings: dict[str, str] | None = None) -> dict | None:
    """Pack, refuse what must not go up, upload what the coordinator lacks and submit; the task, or None when the
    artist interrupted it (nothing was submitted then)."""
    timings.mark("start-up")
    # The staging folder holds only the .blend files BAT rewrote; it goes away once the task is submitted.
    with tempfile.TemporaryDirectory(prefix="renderq-submit-") as staging:
        tiles = tiles_request(blend, args, frame_range)
        try:
            packed = pack_for_submit(str(blend), staging, line)
        except KeyboardInterrupt:
            line.finish()
            print("packing interrupted; nothing was submitted", file=sys.stderr)
            return None
        timings.mark("pack", f"{packed.total_bytes} bytes")
        frame_start, frame_end, step = frame_range
        print_preflight(blend, packed)
        refuse_before_upload(packed, args)
        blender_version = args.blender_version or packed.blender_version
        task_fields = dict(
            name=args.name or blend.stem, blender_version=blender_version,
            blender_version_exact=args.blender_version is not None, missing_assets=list(packed.missing),
            frame_start=frame_start, frame_end=frame_end, frame_step=step or 1, priority=args.priority,
            workers=list(args.worker or []), submitted_by=current_user(), settings=dict(settings or {}),
            **timeouts_and_python(args), **(tiles or video_request(blend, args)),
            render_engine=read_render_engine(str(blend)),
        )
        if getattr(args, "notify", None):
            task_fields["notify"] = list(args.notify)
        try:
            submit_plan = submit.plan(client, packed)
            task, uploaded = submit.execute(client, submit_plan, task_fields, upload_progress(line))
        except KeyboardInterrupt:
            line.finish()
            print("upload interrupted; nothing was submitted", file=sys.stderr)
            return None
        except CoordinatorError:
            line.finish()
            raise
        timings.mark("submit", f"{uploaded.bytes} bytes uploaded")
        print_uploaded(submit_plan, uploaded)
    frames_text = f"{frame_start}-{frame_end}" if frame_end != frame_start else str(frame_start)
    if (step or 1) > 1:
        frames_text += f" step {step}"
    exact = " exactly" if args.blender_version is not None else " or newer"
    print(f"submitted task {task['task_id']} ({task.get('name', args.name or blend.stem)}, frames {frames_text}, "
          f"Blender {blender_version}{exact})")
    if task.get("scout_frames"):
        print(f"its {task['scout_frames']} scout frame(s) render first, then it waits for your approval: "
              f"`renderq approve {task['task_id']}` renders the rest")
    sys.stdout.flush()
    return task


def fetch_as_done(client: CoordinatorClient, task_id: int, fetcher: FrameFetcher) -> Callable[[dict], None]:
    """The wait's summary hook that downloads each frame as soon as the summary counts it done: the frames list is
    read only when the done count grew. A coordinator that does not answer now is left to the final download."""
    counted = 0

    def on_summary(summary: dict) -> None:
        nonlocal counted
        done = progress_of(summary)["done"]
        if done <= counted:
            return
        try:
            fetcher.fetch(client.get_task(task_id, frames_status=FrameStatus.DONE).get("frames") or [])
        except CoordinatorUnreachable:
            return
        counted = done

    return on_summary


def pack_for_submit(blend_path: str, staging_dir: str, line: ProgressLine) -> PackResult:
    """Pack the .blend with renderq.packing, showing what it does on `line`; returns the PackResult.

    Tracing and checking show on a terminal only; hashing shows when there is enough to hash for a line to be
    readable.
    """
    # Imported here: BAT is only needed by `submit`, and other commands should start fast.
    from renderq import packing

    # BAT logs each missing file as a warning; the pre-flight lists them once, in the user's terms.
    logging.getLogger("blender_asset_tracer").addHandler(logging.NullHandler())
    name = os.path.basename(blend_path)
    shown = False

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal shown
        if stage == "trace" and line.is_tty:
            line.update(f"tracing {name}: {done} asset(s) found")
            shown = True
        elif stage == "verify" and line.is_tty:
            line.update(f"checking that the packed tree of {name} is complete")
            shown = True
        elif stage == "hash" and (line.is_tty or total >= UPLOAD_PROGRESS_MIN_BYTES):
            fraction = done / total if total else 1.0
            line.update(f"hashing {bar(fraction)} {format_bytes(done)} of {format_bytes(total)}")
            shown = True

    try:
        packed = packing.pack_project(blend_path, staging_dir, progress=progress)
    except ValueError as error:
        raise UsageError(str(error)) from None
    except packing.PackError as error:
        raise UsageError(f"cannot pack {name}: {error}") from None
    finally:
        if shown and line.is_tty:
            line.clear()
        elif shown:
            line.finish()
    return packed


def refuse_before_upload(packed: PackResult, args: argparse.Namespace) -> None:
    """Raise UsageError when the packed tree must not go up: hidden files, files from outside the project folder
    without --allow-outside, missing assets without --allow-missing."""
    refusal = exposure.refusal(packed.exposure, packed.project_folder, allow_outside=args.allow_outside,
                               remedy="submit again with --allow-outside")
    if refusal:
        raise UsageError(f"nothing was uploaded: {refusal}")
    if packed.missing and not args.allow_missing:
        raise UsageError(
            f"{len(packed.missing)} asset(s) are missing (listed above); relink them in Blender, "
            "or submit anyway with --allow-missing"
        )


def print_preflight(blend: Path, packed: PackResult) -> None:
    """One line about the packed tree; the missing assets and the files from outside the project folder, one per
    line, on stderr."""
    rewritten = f", {len(packed.rewritten)} .blend rewritten" if packed.rewritten else ""
    print(
        f"{printable(blend.name)}: {len(packed.files)} file(s), {format_bytes(packed.total_bytes)}{rewritten}, "
        f"saved by Blender {packed.blender_version}"
    )
    if packed.missing:
        print(f"missing assets ({len(packed.missing)}), referenced but not on disk:", file=sys.stderr)
        for asset in packed.missing:
            print(f"  {printable(asset)}", file=sys.stderr)
    found = packed.exposure
    for title, lines in ((f"from outside the project folder {packed.project_folder}", found.outside),
                         ("links leading out of the project folder", found.links),
                         ("hidden files, never uploaded", found.hidden)):
        if lines:
            print(f"{printable(title)} ({len(lines)}):", file=sys.stderr)
            for line in lines:
                # The names come from the .blend, which someone else may have made.
                print(f"  {printable(line)}", file=sys.stderr)
    sys.stdout.flush()


def upload_progress(line: ProgressLine) -> Callable[[str, int, int], None]:
    """The pipeline's upload progress shown on `line`: on a terminal, or when there is enough to upload for a line
    to be readable."""
    shown = False

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal shown
        if stage == "upload" and total and (line.is_tty or total >= UPLOAD_PROGRESS_MIN_BYTES):
            line.update(f"uploading {bar(done / total)} {format_bytes(done)} of {format_bytes(total)}")
            shown = True
        elif stage == "submit" and shown:
            line.finish()
            shown = False

    return progress


def print_uploaded(submit_plan: submit.SubmitPlan, uploaded: submit.Uploaded) -> None:
    """E.g. "uploaded 2 of 7 files (1.2 MiB); 5 already on the coordinator"."""
    text = f"uploaded {uploaded.files} of {submit_plan.files_total} files ({format_bytes(uploaded.bytes)})"
    already = submit_plan.files_total - uploaded.files
    if already:
        text += f"; {already} already on the coordinator"
    print(text)
    sys.stdout.flush()
