"""Showing a task to the user: its progress and details, waiting for it to end, fetching its frames, the outcome."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from renderq.capabilities import engine_label
from renderq.cli_common import EXIT_FAILED, EXIT_OK
from renderq.frame_download import FetchedFrames, FrameFetcher
from renderq.http_client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable
from renderq.model import TASK_APPROVABLE, TASK_FINAL, Frame, FrameStatus, Progress, TaskStatus, status_label
from renderq.tiles import tiles_progress
from renderq.progress import (
    ProgressLine,
    bar,
    format_bytes,
    format_duration,
    format_frame_list,
    format_table,
    format_time,
    printable_answer,
)
from renderq.units import estimate_text, format_eta

# The model's set, under the name the command line imports it by.
FINAL_STATUSES = TASK_FINAL
POLL_SECONDS = 1.0
# While frames finish faster than POLL_SECONDS, the wait polls this many times per expected frame completion (never
# more often than QUICKEST_POLL_SECONDS): the last frame is then noticed a small fraction of a frame after it ends.
POLLS_PER_FRAME = 8
QUICKEST_POLL_SECONDS = 0.1
# How long a waiting command keeps retrying a coordinator that stopped answering before it gives up.
UNREACHABLE_PATIENCE = 120.0


def progress_of(task: dict) -> dict:
    """The task's progress block, with zeros (and a percent) for what the coordinator left out."""
    return Progress.from_dict(task.get("progress") or {}).to_dict()


def task_progress_text(task: dict) -> str:
    """One line: bar, frames done/total, percent, ETA, rendering and failed counts."""
    progress = progress_of(task)
    total = progress["total"]
    fraction = progress["done"] / total if total else 0.0
    eta = "-" if task.get("status") in FINAL_STATUSES else format_eta(
        progress.get("eta_seconds"), progress.get("eta_low_seconds"), progress.get("eta_high_seconds"))
    counted = tiles_progress(task["tiles"], progress["done"], total) if task.get("tiles") \
        else f"{progress['done']}/{total}"
    return (
        f"task {task.get('task_id')} {bar(fraction)} {counted} "
        f"{progress['percent']:5.1f}%  ETA {eta}  rendering {progress.get('rendering', 0)}  "
        f"failed {progress['failed']}  {status_label(task.get('status', '?'))}"
    )


def wait_for_task(
    client: CoordinatorClient,
    task_id: int,
    line: ProgressLine,
    *,
    poll_seconds: float = POLL_SECONDS,
    still_running: Callable[[], str | None] | None = None,
    on_summary: Callable[[dict], None] | None = None,
) -> dict:
    """Poll the task's summary until it is done, failed or canceled, redrawing the progress line; return the task
    then, with all its frames.

    `still_running`, when given, is asked each round and may return a sentence that stops the wait with an error
    (the demo uses it to notice a coordinator process that died). `on_summary`, when given, gets each summary read
    (the last one too, before the frames are read): `submit --wait` downloads the frames done so far in it.
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
            task = client.get_task(task_id, with_frames=False)
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
        if on_summary is not None:
            on_summary(task)
        if task.get("status") in FINAL_STATUSES:
            line.finish()
            # The frames once, at the end (page by page): polling them every round would cost a big task dearly.
            return client.get_task(task_id)
        time.sleep(next_poll_seconds(task, poll_seconds))


def next_poll_seconds(task: dict, longest: float) -> float:
    """How long to wait before reading the task's summary again: `longest`, or less while frames finish more often
    than that (from the task's finish estimate), so that the wait ends soon after the last frame."""
    progress = progress_of(task)
    remaining = progress["total"] - progress["done"] - progress["failed"] - progress.get("canceled", 0)
    eta = progress.get("eta_seconds")
    if not isinstance(eta, (int, float)) or eta <= 0 or remaining <= 0:
        return longest
    return min(longest, max(QUICKEST_POLL_SECONDS, eta / remaining / POLLS_PER_FRAME))


def waiting_text(reason: str) -> str:
    """The coordinator's waiting reason as shown: 'waiting: no worker with Blender >= 4.2'."""
    reason = reason.strip()
    return reason if reason.lower().startswith("waiting") else f"waiting: {reason}"


def print_task_detail(task: dict) -> None:
    """A task's settings, progress and frame table."""
    task = printable_answer(task)  # whichever client fetched it: other people's text reaches the terminal clean
    progress = progress_of(task)
    step = task.get("frame_step", 1)
    workers = ", ".join(task.get("workers") or []) or "any"
    print(f"task {task.get('task_id')}: {task.get('name')}  [{status_label(task.get('status', '?'))}]")
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
    needs = [f"engine {engine_label(task['render_engine'])}"] if task.get("render_engine") else []
    needs += [f"device {task['device']}"] if task.get("device") else []
    needs += [f"tags {', '.join(task['tags'])}"] if task.get("tags") else []
    if needs:
        print(f"  needs      {'; '.join(needs)}")
    missing_assets = task.get("missing_assets") or []
    if missing_assets:
        print(f"  missing    {len(missing_assets)} asset(s): {', '.join(missing_assets)}")
    order = f", {task['order']} order" if task.get("order") else ""
    print(f"  frames     {task.get('frame_start')}-{task.get('frame_end')}" + (f" step {step}" if step != 1 else "")
          + order)
    label = f"   (submitted as \"{task['submitted_by']}\")" if task.get("submitted_by") else ""
    print(f"  owner      {task.get('owner') or '-'}{label}")
    print(f"  priority   {task.get('priority', 0)}   workers: {workers}")
    print(
        f"  times      created {format_time(task.get('created_at'))}, started {format_time(task.get('started_at'))},"
        f" ended {format_time(task.get('ended_at'))}"
    )
    print(f"  progress   {task_progress_text(task)}")
    if task.get("video"):
        print(f"  video      {video_text(task)}")
    if task.get("scout_frames"):
        print(f"  scouts     {task['scout_frames']} frame(s) render first; {progress.get('held', 0)} held")
    estimate = estimate_text(task.get("estimate"))
    if estimate:
        print(f"  estimate   the frames left: {estimate}")
    if task.get("status") in TASK_APPROVABLE:
        print(f"  waiting for approval: look at the scouts, then `renderq approve {task.get('task_id')}` renders the "
              f"rest (or `renderq cancel {task.get('task_id')}`)")
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


def not_rendered_frames(task: dict) -> list[int]:
    """Frame numbers of the task that did not end done."""
    frames = task.get("frames")
    if frames is None:
        return list(task.get("failed_frames") or [])
    return [frame.frame for frame in map(Frame.from_dict, frames) if not frame.is_done]


def download_done_frames(
    client: CoordinatorClient, task: dict, dest_dir: str, line: ProgressLine | None = None,
    fetcher: FrameFetcher | None = None,
) -> FetchedFrames:
    """Download the task's done frames into `dest_dir` under their Blender names, keeping files already there with
    the same SHA-256; with a `fetcher` that already fetched frames while the task rendered, only the rest. A frame
    that cannot be saved under its name is skipped: one line each on stderr."""

    def on_frame(index: int, count: int) -> None:
        if line is not None:
            line.update(f"downloading {bar(index / count)} {index}/{count} frames to {dest_dir}")

    fetcher = fetcher or FrameFetcher(client, task["task_id"], dest_dir)
    fetched = fetcher.fetch(task.get("frames") or [], on_frame)
    if line is not None and (fetched.paths or fetched.skipped):
        line.finish()
    for number, why in fetched.skipped:
        print(f"renderq: frame {number} of task {task['task_id']} skipped: {why}", file=sys.stderr)
    if fetched.skipped:
        done = len(fetched.skipped) + len(fetched.paths)
        print(f"renderq: {len(fetched.skipped)} of the {done} rendered frame(s) of task {task['task_id']} skipped",
              file=sys.stderr)
    return fetched


def video_text(task: dict) -> str:
    """The task's video in a few words: what was asked for and where it stands."""
    asked = str((task.get("video") or {}).get("container") or "")
    asked = "as the scene's movie output" if asked == "scene" else asked
    videos = [Frame.from_dict(frame) for frame in task.get("frames") or [] if Frame.from_dict(frame).is_video]
    if not videos:
        return f"{asked}, made once every frame is done"
    video = videos[0]
    if video.is_done:
        return f"{asked}: {video.output} ({format_bytes(video.output_size or 0)}), by {video.worker or '?'}"
    if video.status == FrameStatus.FAILED:
        return f"{asked}: failed: {video.error or 'no reason given'}"
    return f"{asked}: {video.status}" + (f" on {video.worker}" if video.worker else "")


def download_video(client: CoordinatorClient, task: dict, dest_dir: str) -> int:
    """Download only the task's video (its encode job's output) into `dest_dir`; says where it is, or why there is
    none."""
    videos = [frame for frame in task.get("frames") or [] if Frame.from_dict(frame).is_video]
    task_id = task["task_id"]
    if not videos:
        why = ("it asked for none (submit --video)" if not task.get("video")
               else f"it is {task.get('status')} and its video is not made yet")
        print(f"task {task_id} has no video: {why}", file=sys.stderr)
        return EXIT_FAILED
    try:
        fetched = FrameFetcher(client, task_id, dest_dir).fetch(videos)
    except OSError as error:
        print(f"renderq: cannot write to {dest_dir}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    for _, why in fetched.skipped:
        print(f"renderq: the video of task {task_id} was not saved: {why}", file=sys.stderr)
    for path in fetched.paths:
        print(f"the video of task {task_id} is {path}")
    return EXIT_OK if fetched.paths else EXIT_FAILED


def report_outcome(task: dict, dest_dir: str, paths: list[str], out: Any = None, skipped: int = 0) -> int:
    """Say where the frames are and what did not render; exit status 0 only when every frame rendered and none of
    them was `skipped` by the download."""
    out = out or sys.stdout
    progress = progress_of(task)
    if paths:
        print(f"{len(paths)} frame(s) of task {task['task_id']} are in {dest_dir}", file=out)
    missing = not_rendered_frames(task)
    if task.get("status") == TaskStatus.DONE and not missing:
        return EXIT_FAILED if skipped else EXIT_OK
    failed = list(task.get("failed_frames") or []) or [
        frame["frame"] for frame in task.get("frames") or [] if frame.get("status") == FrameStatus.FAILED
    ]
    print(
        f"task {task['task_id']} ended {task.get('status')}: {progress['done']} of {progress['total']} frames rendered",
        file=sys.stderr,
    )
    video = next((Frame.from_dict(f) for f in task.get("frames") or [] if Frame.from_dict(f).is_video), None)
    if video is not None and video.status == FrameStatus.FAILED:
        print(f"its video could not be made: {video.error or 'no reason given'}", file=sys.stderr)
        failed = [number for number in failed if number != video.frame]
        missing = [number for number in missing if number != video.frame]
    if failed:
        print(f"failed frames: {format_frame_list(failed)}", file=sys.stderr)
    others = sorted(set(missing) - set(failed))
    if others:
        print(f"frames not rendered: {format_frame_list(others)}", file=sys.stderr)
    return EXIT_FAILED
