"""The `renderq` command: run a coordinator or a worker, submit and follow tasks, manage workers."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from renderq import __version__
from renderq.http_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnreachable,
    file_sha256,
    safe_file_name,
)
from renderq.progress import (
    ProgressLine,
    bar,
    format_bytes,
    format_duration,
    format_frame_list,
    format_table,
    format_time,
)

if TYPE_CHECKING:
    from renderq.packing import PackedFile, PackResult

DEFAULT_COORDINATOR = "http://127.0.0.1:5000"
FINAL_STATUSES = ("done", "failed", "canceled")
POLL_SECONDS = 1.0
# Files above this size get an upload progress line; small ones go up before a line would be readable.
UPLOAD_PROGRESS_MIN_BYTES = 8 * 1024 * 1024
# How long a waiting command keeps retrying a coordinator that stopped answering before it gives up.
UNREACHABLE_PATIENCE = 120.0
BLENDER_READ_TIMEOUT = 120.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user: printed as one sentence, exit status 2."""


# -- argument types --------------------------------------------------------------------------------------------------


def parse_frames(text: str) -> tuple[int, int]:
    """'12' -> (12, 12); '1-250' -> (1, 250). Raises argparse.ArgumentTypeError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame or a frame range; write 12 or 1-250")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) is not None else start
    if end < start:
        raise argparse.ArgumentTypeError(f"the range {text!r} ends before it starts; write the first frame first")
    return start, end


def positive_int(text: str) -> int:
    """An integer of at least 1, for counts and steps."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; it must be at least 1")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0 meaning "pick a free one"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def blender_version_arg(text: str) -> str:
    """A Blender major.minor such as 4.2, as `--blender-version` takes it."""
    match = re.fullmatch(r"\s*(\d{1,3})\.(\d{1,3})\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Blender version; write major.minor, e.g. 4.2")
    return f"{int(match.group(1))}.{int(match.group(2))}"


def priority_arg(text: str) -> int:
    """A task priority: a whole number, higher first."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a priority; priorities are whole numbers") from None


def task_id_arg(text: str) -> int:
    """A task id as printed by `renderq submit` and `renderq status`."""
    try:
        value = int(text.lstrip("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id; task ids are numbers") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a task id; task ids start at 1")
    return value


# -- Blender ---------------------------------------------------------------------------------------------------------


def find_blender(explicit: str | None = None) -> str | None:
    """The Blender binary to use: the one given, else $RENDERQ_BLENDER, else `blender` on PATH."""
    candidate = explicit or os.environ.get("RENDERQ_BLENDER")
    if candidate:
        return shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
    return shutil.which("blender")


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


# -- task display and waiting ----------------------------------------------------------------------------------------


def progress_of(task: dict) -> dict:
    """The task's progress block, with zeros when the coordinator left it out."""
    progress = dict(task.get("progress") or {})
    for key in ("total", "done", "failed", "rendering", "queued"):
        progress.setdefault(key, 0)
    progress.setdefault("percent", 100.0 * progress["done"] / progress["total"] if progress["total"] else 0.0)
    return progress


def task_progress_text(task: dict) -> str:
    """One line: bar, frames done/total, percent, ETA, rendering and failed counts."""
    progress = progress_of(task)
    total = progress["total"]
    fraction = progress["done"] / total if total else 0.0
    eta = "-" if task.get("status") in FINAL_STATUSES else format_duration(progress.get("eta_seconds"))
    return (
        f"task {task.get('task_id')} {bar(fraction)} {progress['done']}/{total} "
        f"{progress['percent']:5.1f}%  ETA {eta}  rendering {progress.get('rendering', 0)}  "
        f"failed {progress['failed']}  {task.get('status', '?')}"
    )


def wait_for_task(
    client: CoordinatorClient,
    task_id: int,
    line: ProgressLine,
    *,
    poll_seconds: float = POLL_SECONDS,
    still_running: Callable[[], str | None] | None = None,
) -> dict:
    """Poll the task until it is done, failed or canceled, redrawing the progress line; return the last answer.

    `still_running`, when given, is asked each round and may return a sentence that stops the wait with an error
    (the demo uses it to notice a coordinator process that died).
    """
    unreachable_since: float | None = None
    task: dict = {}
    while True:
        if still_running is not None:
            problem = still_running()
            if problem:
                line.finish()
                raise CoordinatorError(0, problem)
        try:
            task = client.get_task(task_id)
            unreachable_since = None
        except CoordinatorUnreachable as error:
            # A coordinator restart should not end a long wait; a coordinator that is gone for good should.
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > UNREACHABLE_PATIENCE:
                line.finish()
                raise
            line.update(f"task {task_id}: {error.message}; retrying")
            time.sleep(poll_seconds)
            continue
        line.update(task_progress_text(task))
        if task.get("status") in FINAL_STATUSES:
            line.finish()
            return task
        time.sleep(poll_seconds)


def download_done_frames(
    client: CoordinatorClient, task: dict, dest_dir: str, line: ProgressLine | None = None
) -> tuple[list[str], int]:
    """Download the task's done frames into `dest_dir` under their Blender names.

    Files already there with the same SHA-256 are kept. Returns (paths of all done frames, number skipped).
    """
    done = [frame for frame in task.get("frames") or [] if frame.get("status") == "done"]
    if done:
        os.makedirs(dest_dir, exist_ok=True)
    paths: list[str] = []
    skipped = 0
    for index, frame in enumerate(done, start=1):
        name = frame.get("output")
        expected = frame.get("output_sha256")
        if line is not None:
            line.update(f"downloading {bar(index / len(done))} {index}/{len(done)} frames to {dest_dir}")
        if name and safe_file_name(name) and expected:
            existing = os.path.join(dest_dir, name)
            # A link is never read through nor kept: download_frame refuses to write there.
            if not os.path.islink(existing) and os.path.isfile(existing) and file_sha256(existing) == expected:
                paths.append(existing)
                skipped += 1
                continue
        paths.append(client.download_frame(task["task_id"], frame["frame"], dest_dir, expected_sha256=expected))
    if line is not None and done:
        line.finish()
    return paths, skipped


def not_rendered_frames(task: dict) -> list[int]:
    """Frame numbers of the task that did not end done."""
    frames = task.get("frames")
    if frames is None:
        return list(task.get("failed_frames") or [])
    return [frame["frame"] for frame in frames if frame.get("status") != "done"]


def report_outcome(task: dict, dest_dir: str, paths: list[str], out: Any = None) -> int:
    """Say where the frames are and what did not render; exit status 0 only when every frame rendered."""
    out = out or sys.stdout
    progress = progress_of(task)
    if paths:
        print(f"{len(paths)} frame(s) of task {task['task_id']} are in {dest_dir}", file=out)
    missing = not_rendered_frames(task)
    if task.get("status") == "done" and not missing:
        return EXIT_OK
    failed = list(task.get("failed_frames") or []) or [
        frame["frame"] for frame in task.get("frames") or [] if frame.get("status") == "failed"
    ]
    print(
        f"task {task['task_id']} ended {task.get('status')}: {progress['done']} of {progress['total']} frames rendered",
        file=sys.stderr,
    )
    if failed:
        print(f"failed frames: {format_frame_list(failed)}", file=sys.stderr)
    others = sorted(set(missing) - set(failed))
    if others:
        print(f"frames not rendered: {format_frame_list(others)}", file=sys.stderr)
    return EXIT_FAILED


# -- commands --------------------------------------------------------------------------------------------------------


TOKEN_HINT = "pass the token with --token TOKEN or set RENDERQ_TOKEN"


def make_client(args: argparse.Namespace) -> CoordinatorClient:
    """The client for --coordinator (with --token, when given); a malformed URL is a usage error."""
    try:
        return CoordinatorClient(args.coordinator, token=getattr(args, "token", None) or None)
    except ValueError as error:
        raise UsageError(str(error)) from None


def print_json(answer: Any) -> None:
    """Print an API answer as indented JSON."""
    print(json.dumps(answer, indent=2, sort_keys=True))


def timeouts_and_python(args: argparse.Namespace) -> dict[str, Any]:
    """The optional submit fields given on the command line (the coordinator's defaults apply to the rest)."""
    fields: dict[str, Any] = {}
    if args.frame_timeout is not None:
        fields["frame_timeout"] = args.frame_timeout
    if args.no_progress_timeout is not None:
        fields["no_progress_timeout"] = args.no_progress_timeout
    if args.needs_python:
        fields["needs_python"] = True
    return fields


def seconds_arg(text: str) -> float:
    """A number of seconds from 1 to 7 days, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 second and 7 days")
    return value


def cmd_submit(args: argparse.Namespace) -> int:
    """Pack a .blend with its assets, upload what the coordinator lacks, submit the task; with --wait follow it
    and fetch the frames."""
    blend = Path(args.file)
    if not blend.is_file():
        raise UsageError(f"{args.file} is not a file")
    step = args.step
    if args.frames is not None:
        frame_start, frame_end = args.frames
    else:
        blender = find_blender()
        if blender is None:
            raise UsageError(
                "cannot read the frame range without Blender; give --frames (e.g. --frames 1-250) "
                "or set RENDERQ_BLENDER to a Blender binary"
            )
        found = read_frame_range(str(blend), blender)
        if found is None:
            raise UsageError(f"Blender could not read the frame range of {blend}; give --frames (e.g. --frames 1-250)")
        frame_start, frame_end, scene_step = found
        if frame_end < frame_start:
            raise UsageError(f"the scene in {blend} ends at frame {frame_end} before it starts; give --frames")
        step = step or max(1, scene_step)
    client = make_client(args)
    line = ProgressLine()

    # The staging folder holds only the .blend files BAT rewrote; it goes away once the task is submitted.
    with tempfile.TemporaryDirectory(prefix="renderq-submit-") as staging:
        try:
            packed = pack_for_submit(str(blend), staging, line)
        except KeyboardInterrupt:
            line.finish()
            print("packing interrupted; nothing was submitted", file=sys.stderr)
            return EXIT_INTERRUPTED
        print_preflight(blend, packed)
        if packed.missing and not args.allow_missing:
            raise UsageError(
                f"{len(packed.missing)} asset(s) are missing (listed above); relink them in Blender, "
                "or submit anyway with --allow-missing"
            )
        try:
            upload_missing_files(client, packed, line)
        except KeyboardInterrupt:
            line.finish()
            print("upload interrupted; nothing was submitted", file=sys.stderr)
            return EXIT_INTERRUPTED

        blender_version = args.blender_version or packed.blender_version
        task = client.submit_task(
            name=args.name or blend.stem,
            manifest=packed.manifest(),
            main_file=packed.main_file,
            blender_version=blender_version,
            blender_version_exact=args.blender_version is not None,
            missing_assets=list(packed.missing),
            frame_start=frame_start,
            frame_end=frame_end,
            frame_step=step or 1,
            priority=args.priority,
            workers=list(args.worker or []),
            submitted_by=current_user(),
            settings={},
            **timeouts_and_python(args),
        )
    task_id = task["task_id"]
    frames_text = f"{frame_start}-{frame_end}" if frame_end != frame_start else str(frame_start)
    if (step or 1) > 1:
        frames_text += f" step {step}"
    exact = " exactly" if args.blender_version is not None else " or newer"
    print(
        f"submitted task {task_id} ({task.get('name', args.name or blend.stem)}, frames {frames_text}, "
        f"Blender {blender_version}{exact})"
    )
    sys.stdout.flush()
    if not args.wait:
        return EXIT_OK

    try:
        task = wait_for_task(client, task_id, line)
    except KeyboardInterrupt:
        line.finish()
        print(
            f"stopped waiting; task {task_id} stays on the farm "
            f"(see renderq status {task_id}; renderq cancel {task_id} stops it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    dest_dir = args.output or f"renderq-{task_id}"
    paths, _ = download_done_frames(client, task, dest_dir, line)
    return report_outcome(task, dest_dir, paths)


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


def print_preflight(blend: Path, packed: PackResult) -> None:
    """One line about the packed tree; the missing assets, one per line, on stderr."""
    rewritten = f", {len(packed.rewritten)} .blend rewritten" if packed.rewritten else ""
    print(
        f"{blend.name}: {len(packed.files)} file(s), {format_bytes(packed.total_bytes)}{rewritten}, "
        f"saved by Blender {packed.blender_version}"
    )
    if packed.missing:
        print(f"missing assets ({len(packed.missing)}), referenced but not on disk:", file=sys.stderr)
        for asset in packed.missing:
            print(f"  {asset}", file=sys.stderr)
    sys.stdout.flush()


def upload_missing_files(client: CoordinatorClient, packed: PackResult, line: ProgressLine) -> tuple[int, int]:
    """Upload the files of the packed tree that the coordinator lacks, each content once, on one progress line.

    Prints e.g. "uploaded 2 of 7 files (1.2 MB); 5 already on the coordinator". Returns (files, bytes) uploaded.
    """
    by_hash: dict[str, PackedFile] = {}
    for packed_file in packed.files:
        by_hash.setdefault(packed_file.sha256, packed_file)
    needed = [by_hash[sha256] for sha256 in client.missing_files(list(by_hash)) if sha256 in by_hash]
    total_bytes = sum(f.size for f in needed)
    show = bool(needed) and (line.is_tty or total_bytes >= UPLOAD_PROGRESS_MIN_BYTES)
    sent_before = 0
    for index, packed_file in enumerate(needed, start=1):

        def progress(sent: int, _total: int, index: int = index) -> None:
            if show:
                fraction = (sent_before + sent) / total_bytes if total_bytes else 1.0
                line.update(
                    f"uploading {bar(fraction)} {index}/{len(needed)} files, "
                    f"{format_bytes(sent_before + sent)} of {format_bytes(total_bytes)}"
                )

        try:
            client.upload_file(packed_file.source, packed_file.sha256, progress=progress)
        except CoordinatorUnreachable:
            if show:
                line.finish()
            raise
        except CoordinatorError as error:
            if show:
                line.finish()
            hint = " (did it change while it was being uploaded?)" if error.status == 400 else ""
            message = f"could not upload {packed_file.path}: {error.message}{hint}"
            raise CoordinatorError(error.status, message) from None
        sent_before += packed_file.size
    if show:
        line.finish()
    already = len(by_hash) - len(needed)
    text = f"uploaded {len(needed)} of {len(by_hash)} files ({format_bytes(total_bytes)})"
    if already:
        text += f"; {already} already on the coordinator"
    print(text)
    sys.stdout.flush()
    return len(needed), total_bytes


def current_user() -> str:
    """The login name recorded as the task's submitter; empty when it cannot be found."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def cmd_status(args: argparse.Namespace) -> int:
    """Show all tasks, or one task with its frames."""
    client = make_client(args)
    if args.task is None:
        answer = client.request("GET", "/tasks", params={"status": args.filter})
        if args.json:
            print_json(answer)
            return EXIT_OK
        tasks = answer.get("tasks", [])
        if not tasks:
            print("no tasks")
            return EXIT_OK
        rows = []
        for task in tasks:
            progress = progress_of(task)
            eta = "-" if task.get("status") in FINAL_STATUSES else format_duration(progress.get("eta_seconds"))
            rows.append([
                task.get("task_id"), task.get("name", ""), task.get("status", ""),
                f"{progress['done']}/{progress['total']}", f"{progress['percent']:.0f}%", eta, progress["failed"],
            ])
        print(format_table(["ID", "NAME", "STATUS", "DONE", "%", "ETA", "FAILED"], rows, right=(0, 3, 4, 5, 6)))
        for task in tasks:
            if task.get("waiting_reason"):
                print(f"task {task.get('task_id')}: {waiting_text(task['waiting_reason'])}")
        return EXIT_OK

    task = client.get_task(args.task)
    if args.json:
        print_json(task)
        return EXIT_OK
    print_task_detail(task)
    return EXIT_OK


def waiting_text(reason: str) -> str:
    """The coordinator's waiting reason as shown: 'waiting: no worker with Blender >= 4.2'."""
    reason = reason.strip()
    return reason if reason.lower().startswith("waiting") else f"waiting: {reason}"


def print_task_detail(task: dict) -> None:
    """A task's settings, progress and frame table."""
    progress = progress_of(task)
    step = task.get("frame_step", 1)
    workers = ", ".join(task.get("workers") or []) or "any"
    print(f"task {task.get('task_id')}: {task.get('name')}  [{task.get('status')}]")
    if task.get("main_file"):
        count = task.get("files_count")
        size = task.get("files_bytes")
        tree = f"{count} file(s)" if count is not None else ""
        if size is not None:
            tree += (", " if tree else "") + format_bytes(size)
        print(f"  file       {task['main_file']}" + (f" ({tree})" if tree else ""))
    else:
        print(f"  file       {task.get('blend_filename')} ({str(task.get('blend_sha256', ''))[:12]})")
    if task.get("blender_version"):
        rule = "exactly" if task.get("blender_version_exact") else "or newer"
        print(f"  blender    {task['blender_version']} {rule}")
    missing_assets = task.get("missing_assets") or []
    if missing_assets:
        print(f"  missing    {len(missing_assets)} asset(s): {', '.join(missing_assets)}")
    print(f"  frames     {task.get('frame_start')}-{task.get('frame_end')}" + (f" step {step}" if step != 1 else ""))
    print(f"  priority   {task.get('priority', 0)}   workers: {workers}   by: {task.get('submitted_by') or '-'}")
    print(
        f"  times      created {format_time(task.get('created_at'))}, started {format_time(task.get('started_at'))},"
        f" ended {format_time(task.get('ended_at'))}"
    )
    print(f"  progress   {task_progress_text(task)}")
    if task.get("waiting_reason"):
        print(f"  {waiting_text(task['waiting_reason'])}")
    for current in progress.get("current") or []:
        since = current.get("started_at")
        running = f" for {format_duration(time.time() - since)}" if since else ""
        print(f"  rendering  frame {current.get('frame')} on {current.get('worker')}{running}")
    if task.get("failed_frames"):
        print(f"  failed     {format_frame_list(task['failed_frames'])}")
    blocked = task.get("blocked_workers") or []
    if blocked:
        names = ", ".join(f"{b.get('worker')} ({b.get('failures')} failures)" for b in blocked)
        print(f"  blocked    {names}; `renderq retry {task.get('task_id')}` unblocks them")
    frames = task.get("frames") or []
    if not frames:
        return
    rows = []
    for frame in frames:
        seconds = frame.get("render_seconds")
        note = frame.get("error") or frame.get("output") or ""
        rows.append([
            frame.get("frame"), frame.get("status", ""), frame.get("worker") or "-", frame.get("attempts", 0),
            f"{seconds:.2f}" if isinstance(seconds, (int, float)) else "-", note.splitlines()[0] if note else "",
        ])
    print()
    print(format_table(["FRAME", "STATUS", "WORKER", "TRIES", "SECONDS", "OUTPUT / ERROR"], rows, right=(0, 3, 4)))


def cmd_workers(args: argparse.Namespace) -> int:
    """Show the registered workers."""
    client = make_client(args)
    answer = client.request("GET", "/list_workers")
    if args.json:
        print_json(answer)
        return EXIT_OK
    workers = answer.get("workers", [])
    if not workers:
        print("no workers registered")
        return EXIT_OK
    rows = []
    for worker in workers:
        current = ", ".join(f"{c.get('task_id')}:{c.get('frame')}" for c in worker.get("current") or []) or "-"
        mean = worker.get("mean_frame_seconds")
        rows.append([
            worker.get("name"), worker.get("worker_id"), "ON" if worker.get("enabled") else "OFF",
            "yes" if worker.get("alive") else "no", worker.get("host", ""), worker.get("blender_version", ""),
            worker.get("cpu_count", ""), worker.get("frames_done", 0), worker.get("frames_failed", 0),
            f"{mean:.2f}" if isinstance(mean, (int, float)) else "-", current,
        ])
    headers = ["NAME", "ID", "STATE", "ALIVE", "HOST", "BLENDER", "CPUS", "DONE", "FAILED", "MEAN S", "TASK:FRAME"]
    print(format_table(headers, rows, right=(1, 6, 7, 8, 9)))
    return EXIT_OK


def cmd_worker_enable(args: argparse.Namespace, enabled: bool) -> int:
    """Switch a worker ON or OFF by name."""
    worker = make_client(args).set_worker_enabled(enabled, name=args.name)
    state = "ON" if worker.get("enabled", enabled) else "OFF"
    note = "" if enabled else " (it finishes the frame it is rendering and takes no more)"
    print(f"worker {worker.get('name', args.name)} is {state}{note}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a task's remaining frames."""
    task = make_client(args).cancel_task(args.task)
    progress = progress_of(task)
    kept = " (they stay downloadable)" if progress["done"] else ""
    print(
        f"task {task.get('task_id', args.task)} ({task.get('name', '')}) is {task.get('status', 'canceled')}: "
        f"{progress['done']} of {progress['total']} frames were rendered{kept}"
    )
    return EXIT_OK


def cmd_priority(args: argparse.Namespace) -> int:
    """Change a task's priority."""
    task = make_client(args).set_task_priority(args.task, args.priority)
    print(f"task {task.get('task_id', args.task)} ({task.get('name', '')}) now has priority "
          f"{task.get('priority', args.priority)}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a task: no new frames start; those being rendered finish."""
    task = make_client(args).pause_task(args.task)
    rendering = progress_of(task).get("rendering", 0)
    still = f"; {rendering} frame(s) being rendered finish" if rendering else ""
    print(f"task {task.get('task_id', args.task)} ({task.get('name', '')}) is paused{still} "
          f"(renderq resume {task.get('task_id', args.task)} goes on)")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused task."""
    task = make_client(args).resume_task(args.task)
    print(f"task {task.get('task_id', args.task)} ({task.get('name', '')}) is {task.get('status', 'running')} again")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Queue a task's failed frames again."""
    task = make_client(args).retry_failed_frames(args.task)
    progress = progress_of(task)
    print(f"task {task.get('task_id', args.task)} ({task.get('name', '')}) is {task.get('status', 'running')}: "
          f"{progress['queued']} frame(s) queued, {progress['done']} of {progress['total']} done")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a task's rendered frames."""
    client = make_client(args)
    if args.zip:
        dest = os.path.join(args.dir, f"renderq-{args.task}.zip")
        try:
            client.download_frames_zip(args.task, dest)
        except OSError as error:
            raise UsageError(f"cannot write to {args.dir}: {error.strerror or error}") from None
        print(f"the frames of task {args.task} are in {dest} ({format_bytes(os.path.getsize(dest))})")
        return EXIT_OK
    task = client.get_task(args.task)
    try:
        paths, skipped = download_done_frames(client, task, args.dir, ProgressLine())
    except OSError as error:
        raise UsageError(f"cannot write to {args.dir}: {error.strerror or error}") from None
    if not paths:
        print(f"task {args.task} has no rendered frames yet")
        return EXIT_OK
    kept = f" ({skipped} already there)" if skipped else ""
    print(f"{len(paths)} frame(s) of task {args.task} are in {args.dir}{kept}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a task's log, and with --follow keep printing what is appended."""
    client = make_client(args)
    offset = 0
    try:
        while True:
            answer = client.get_log(args.task, offset)
            text = answer.get("text") or ""
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
            next_offset = int(answer.get("next_offset", offset))
            if text and next_offset > offset:
                offset = next_offset
                continue  # more may be waiting beyond one answer's worth
            if not args.follow:
                return EXIT_OK
            status = client.get_task(args.task).get("status")
            if status in FINAL_STATUSES:
                # One more read: lines may have arrived between the last read and the task ending.
                final = client.get_log(args.task, offset)
                sys.stdout.write(final.get("text") or "")
                sys.stdout.flush()
                return EXIT_OK
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_disk(args: argparse.Namespace) -> int:
    """Show the coordinator's disk: total, free, the reserve it keeps, and the bytes of each task."""
    answer = make_client(args).disk_usage()
    if args.json:
        print_json(answer)
        return EXIT_OK
    total, free, reserve = answer.get("total") or 0, answer.get("free") or 0, answer.get("reserve") or 0
    print(
        f"disk: {format_bytes(free)} free of {format_bytes(total)} "
        f"(uploads stop {format_bytes(reserve)} before full)"
    )
    tasks = answer.get("tasks") or []
    if not tasks:
        print("no task files stored")
        return EXIT_OK
    rows = [[t.get("task_id"), t.get("name", ""), t.get("status", ""), format_bytes(t.get("bytes") or 0)]
            for t in tasks]
    print(format_table(["ID", "NAME", "STATUS", "BYTES"], rows, right=(0, 3)))
    return EXIT_OK


def cmd_delete_files(args: argparse.Namespace) -> int:
    """Delete an ended task's frames and the input files no other task uses."""
    answer = make_client(args).delete_task_files(args.task)
    print(
        f"task {answer.get('task_id', args.task)}: deleted {answer.get('files_deleted', 0)} file(s), "
        f"freed {format_bytes(answer.get('bytes_freed') or 0)}"
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the local demo farm (renderq/demo.py)."""
    from renderq import demo

    return demo.run(args)


def cmd_server_part(module_name: str, label: str) -> Callable[[argparse.Namespace], int]:
    """A command that hands over to coordinator.server or worker.command_line."""

    def run(args: argparse.Namespace) -> int:
        module = _import_part(module_name, label)
        return int(module.main(args) or 0)

    return run


def _import_part(module_name: str, label: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise PartMissing(f"cannot start the {label}: {error}") from None


class PartMissing(Exception):
    """The coordinator or worker code could not be imported."""


# -- parser ----------------------------------------------------------------------------------------------------------


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser. The coordinator's and worker's own flags are only loaded when `command` names them,
    so client commands never import the server side (and Flask)."""
    parser = argparse.ArgumentParser(
        prog="renderq",
        description="RenderQ: a render farm for Blender. Run a coordinator, run workers, submit .blend files.",
        epilog="Run 'renderq COMMAND --help' for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"renderq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    client_flags = argparse.ArgumentParser(add_help=False)
    client_flags.add_argument(
        "--coordinator",
        metavar="URL",
        default=os.environ.get("RENDERQ_COORDINATOR") or DEFAULT_COORDINATOR,
        help=f"the coordinator's address (default: $RENDERQ_COORDINATOR, else {DEFAULT_COORDINATOR})",
    )
    client_flags.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get("RENDERQ_TOKEN") or None,
        help="your access token (default: $RENDERQ_TOKEN): the artist token submits, watches, downloads and "
             "cancels your own tasks; the admin token also pauses, reprioritises, switches workers and deletes. "
             "They are in the coordinator's data dir, files artist_token and admin_token",
    )

    def add(
        name: str, help_text: str, handler: Callable[[argparse.Namespace], int], client: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
            parents=[client_flags] if client else [],
        )
        sub.set_defaults(handler=handler)
        return sub

    coordinator = add("coordinator", "run the coordinator (the farm's HTTP server)",
                      cmd_server_part("coordinator.server", "coordinator"), client=False)
    worker = add("worker", "run a worker that renders frames with Blender",
                 cmd_server_part("worker.command_line", "worker"), client=False)
    if command == "coordinator":
        _import_part("coordinator.server", "coordinator").add_arguments(coordinator)
    elif command == "worker":
        _import_part("worker.command_line", "worker").add_arguments(worker)

    submit = add("submit", "pack a .blend file with its assets, upload what the coordinator lacks and queue its frames",
                 cmd_submit)
    submit.add_argument("file", metavar="FILE.blend", help="the .blend file to render")
    submit.add_argument("--name", help="the task's name (default: the file name without .blend)")
    submit.add_argument(
        "--frames", type=parse_frames, metavar="A-B",
        help="the frames to render, one number or a range such as 1-250 "
             "(default: the scene's range, read with Blender when it is installed)",
    )
    submit.add_argument("--step", type=positive_int, metavar="N",
                        help="render every Nth frame of the range (default: the scene's step, else 1)")
    submit.add_argument("--worker", action="append", metavar="NAME",
                        help="only let this worker render the task; repeat for several (default: any worker)")
    submit.add_argument("--priority", type=int, default=0, metavar="P",
                        help="higher priorities render first (default: %(default)s)")
    submit.add_argument("--wait", action="store_true",
                        help="show progress until the task ends, then download its frames")
    submit.add_argument("--output", metavar="DIR",
                        help="with --wait: where to put the frames (default: ./renderq-TASK_ID)")
    submit.add_argument("--allow-missing", action="store_true",
                        help="submit even when assets the file refers to are missing (they are recorded on the task)")
    submit.add_argument("--frame-timeout", type=seconds_arg, metavar="SECONDS",
                        help="stop and retry a frame that renders longer than this (default: the coordinator's "
                             "setting, usually no limit)")
    submit.add_argument("--no-progress-timeout", type=seconds_arg, metavar="SECONDS",
                        help="stop and retry a frame when Blender prints nothing for this long (default: the "
                             "coordinator's setting, usually 600)")
    submit.add_argument("--needs-python", action="store_true",
                        help="the file's own Python (drivers, registered scripts) must run to render it right; only "
                             "workers started with --allow-blend-python take it (workers also detect this themselves)")
    submit.add_argument("--blender-version", type=blender_version_arg, metavar="X.Y",
                        help="render only on workers with exactly this Blender major.minor "
                             "(default: the version that saved the file, or newer)")

    status = add("status", "show tasks, or one task with its frames", cmd_status)
    status.add_argument("task", nargs="?", type=task_id_arg, metavar="TASK", help="a task id (default: all tasks)")
    status.add_argument("--status", dest="filter", metavar="STATUS",
                        choices=["queued", "running", "paused", "done", "failed", "canceled"],
                        help="list only tasks with this status (queued, running, paused, done, failed, canceled)")
    status.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")

    workers = add("workers", "show the workers, their state and what they render", cmd_workers)
    workers.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")

    enable = add("worker-enable", "switch a worker ON: it takes frames again",
                 lambda args: cmd_worker_enable(args, True))
    enable.add_argument("name", metavar="NAME", help="the worker's name")
    disable = add("worker-disable", "switch a worker OFF: it finishes its frame and takes no more",
                  lambda args: cmd_worker_enable(args, False))
    disable.add_argument("name", metavar="NAME", help="the worker's name")

    cancel = add("cancel", "cancel a task's frames that are not rendered yet", cmd_cancel)
    cancel.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

    priority = add("priority", "change a task's priority (higher renders first)", cmd_priority)
    priority.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")
    priority.add_argument("priority", type=priority_arg, metavar="P", help="the new priority, e.g. 10 or -5")

    pause = add("pause", "pause a task: no new frames start, those being rendered finish", cmd_pause)
    pause.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

    resume = add("resume", "resume a paused task", cmd_resume)
    resume.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

    retry = add("retry", "queue a task's failed frames again", cmd_retry)
    retry.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

    download = add("download", "download a task's rendered frames under Blender's file names", cmd_download)
    download.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")
    download.add_argument("dir", metavar="DIR", help="the folder to put them in (files already there are kept)")
    download.add_argument("--zip", action="store_true",
                          help="download one zip of all rendered frames into DIR instead (DIR/renderq-TASK.zip)")

    logs = add("logs", "print a task's render log", cmd_logs)
    logs.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines until the task ends (Ctrl-C stops)")

    disk = add("disk", "show the coordinator's disk use, per task", cmd_disk)
    disk.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")

    delete_files = add("delete-files", "delete an ended task's frames and the input files no other task uses",
                       cmd_delete_files)
    delete_files.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

    demo = add("demo", "run a coordinator and local workers, render a small animation, show the times",
               cmd_demo, client=False)
    demo.add_argument("--workers", type=positive_int, default=2, metavar="N",
                      help="how many local workers to start (default: %(default)s)")
    demo.add_argument("--frames", type=positive_int, default=24, metavar="N",
                      help="how many frames the animation has (default: %(default)s)")
    demo.add_argument("--port", type=port_number, default=0, metavar="PORT",
                      help="the coordinator's port on 127.0.0.1 (default: a free one)")
    demo.add_argument("--blender", metavar="PATH",
                      help="the Blender binary (default: $RENDERQ_BLENDER, else blender on PATH)")
    demo.add_argument("--output", metavar="DIR", default="renderq-demo",
                      help="where to put the rendered frames (default: ./%(default)s)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's scratch folder (coordinator data, worker folders, logs) and print where")
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: the first word that is not an option."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the `renderq` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_in(argv))
    except PartMissing as error:
        print(f"renderq: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        args = parser.parse_args(argv)
        if getattr(args, "output", None) and args.command == "submit" and not args.wait:
            parser.error("--output only works with --wait")
    except SystemExit as exit_request:
        return int(exit_request.code or 0) if not isinstance(exit_request.code, str) else EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"renderq: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CoordinatorError as error:
        print(f"renderq: {error}; {TOKEN_HINT}" if error.status == 401 else f"renderq: {error}", file=sys.stderr)
        return EXIT_FAILED
    except PartMissing as error:
        print(f"renderq: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("renderq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `renderq status | head` closes the pipe early; that is not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"renderq: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
