"""`renderq workers [NAME]` and the commands that change a worker: the farm's workers as a table, or one worker
with what it offers, what it renders now (with its log lines), its latest frames and its failures."""

from __future__ import annotations

import argparse
import time

from renderq.capabilities import describe_devices, engine_label
from renderq.cli_common import EXIT_OK, UsageError, make_client, print_json
from renderq.model import MERGE_FRAME, VIDEO_FRAME
from renderq.progress import format_duration, format_table, printable_answer

# Lines of the worker's log shown by `renderq workers NAME` (the coordinator sends those of the log's tail).
LOG_LINES_SHOWN = 20


def cmd_workers(args: argparse.Namespace) -> int:
    """Show the registered workers, or one worker in detail."""
    client = make_client(args)
    if args.name is not None:
        worker = client.request("GET", "/worker", params={"name": args.name})
        if args.json:
            print_json(worker)
        else:
            print_worker_detail(worker)
        return EXIT_OK
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
            f"{mean:.2f}" if isinstance(mean, (int, float)) else "-", current, *offered_columns(worker),
        ])
    headers = ["NAME", "ID", "STATE", "ALIVE", "HOST", "BLENDER", "CPUS", "DONE", "FAILED", "MEAN S", "TASK:FRAME",
               "DEVICES", "ENGINES", "VIDEO", "TAGS"]
    print(format_table(headers, rows, right=(1, 6, 7, 8, 9)))
    return EXIT_OK


def offered_columns(worker: dict) -> list[str]:
    """A worker's devices (those Cycles renders on, else all it sees), engines, video encoders and tags, for the
    table."""
    devices = worker.get("devices") or []
    used = [device for device in devices if device.get("use")] or devices
    tags = ", ".join(worker.get("tags") or []) or "-"
    return [describe_devices(used) if used else "-",
            ", ".join(engine_label(engine) for engine in worker.get("engines") or []) or "-",
            worker.get("video_encoders") or "-", tags + (" (admin)" if worker.get("tags_by_admin") else "")]


def exact_time(timestamp: float | None) -> str:
    """A Unix time as local date and time to the millisecond (a frame's times are measured so); '-' when
    missing."""
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) + f".{int(timestamp * 1000) % 1000:03d}"


def print_worker_detail(worker: dict) -> None:
    """One worker as GET /worker describes it, in aligned plain text."""
    worker = printable_answer(worker)  # names, errors and log lines are other people's text
    state = ("ON" if worker.get("enabled") else "OFF") + (", alive" if worker.get("alive") else ", offline")
    mean = worker.get("mean_frame_seconds")
    devices = worker.get("devices") or []
    facts = [
        ("state", f"{state} (last heard from {exact_time(worker.get('last_seen'))})"),
        ("host", worker.get("host") or "-"),
        ("blender", worker.get("blender_version") or "-"),
        ("cpus", str(worker.get("cpu_count", "-"))),
        ("devices", "; ".join(f"{describe_devices([d])}{' in use' if d.get('use') else ''}" for d in devices) or "-"),
        ("engines", offered_columns(worker)[1]),
        ("video", offered_columns(worker)[2]),
        ("tags", offered_columns(worker)[3]),
        ("frames", f"{worker.get('frames_done', 0)} done, {worker.get('frames_failed', 0)} failed, mean "
                   f"{format_duration(mean) if isinstance(mean, (int, float)) else '-'}"),
    ]
    for current in worker.get("current") or []:
        since = current.get("started_at")
        running = f"rendering for {format_duration(time.time() - since)}" if since else "starting"
        facts.append(("now", f"task {current.get('task_id')} ({current.get('task_name', '')}) "
                              f"{_frame_text(current.get('frame'), 'frame ')}, {running}"))
    if not worker.get("current"):
        facts.append(("now", "idle" if worker.get("enabled") else "switched OFF"))
    width = max(len(label) for label, _ in facts)
    print(f"worker {worker.get('name')}")
    for label, value in facts:
        print(f"  {label.ljust(width)}  {value}")
    log = worker.get("log") or {}
    lines = (log.get("text") or "").splitlines()[-LOG_LINES_SHOWN:]
    if lines:
        print(f"\nlog of task {log.get('task_id')} (its last {len(lines)} lines there)")
        print("\n".join(f"  {line}" for line in lines))
    _print_recent(worker)


def _frame_text(frame: object, prefix: str = "") -> str:
    """A frame number as people read it: the task's video job is "video", a tiled still's merge job "merge", not
    their rows' numbers."""
    named = {VIDEO_FRAME: "video", MERGE_FRAME: "merge"}
    return named[frame] if isinstance(frame, int) and frame in named else f"{prefix}{frame}"


def _print_recent(worker: dict) -> None:
    """The worker's latest frames and failures, as tables."""
    frames = worker.get("recent_frames") or []
    if frames:
        rows = [[f.get("task_id"), _frame_text(f.get("frame")), exact_time(f.get("started_at")),
                 exact_time(f.get("ended_at")),
                 f"{f['render_seconds']:.3f}" if isinstance(f.get("render_seconds"), (int, float)) else "-",
                 f.get("attempts", 0), f.get("output") or "-"] for f in frames]
        print(f"\nlatest {len(frames)} frames")
        print(format_table(["TASK", "FRAME", "STARTED", "ENDED", "SECONDS", "TRIES", "OUTPUT"], rows,
                           right=(0, 1, 4, 5)))
    failures = worker.get("failures") or []
    if failures:
        rows = [[exact_time(f.get("failed_at")), f.get("task_id"), _frame_text(f.get("frame")),
                 (f.get("error") or "-").splitlines()[0] if f.get("error") else "-"] for f in failures]
        print(f"\nlatest {len(failures)} failures")
        print(format_table(["WHEN", "TASK", "FRAME", "ERROR"], rows, right=(1, 2)))


def cmd_worker_tags(args: argparse.Namespace) -> int:
    """Set a worker's tags by name (the admin's, which outlast the worker's own --tag)."""
    if not args.tags and not args.clear:
        raise UsageError("name the worker's tags (e.g. renderq worker-tags node-01 gpu lighting), or --clear")
    tags = sorted({tag for group in args.tags for tag in group})
    worker = make_client(args).request("POST", "/set_worker_tags", json_body={"name": args.name, "tags": tags})
    shown = ", ".join(worker.get("tags") or []) or "none"
    print(f"worker {worker.get('name', args.name)} has the tags: {shown} (set by an admin: its own --tag no "
          "longer applies)")
    return EXIT_OK


def cmd_worker_enable(args: argparse.Namespace, enabled: bool) -> int:
    """Switch a worker ON or OFF by name."""
    worker = make_client(args).set_worker_enabled(enabled, name=args.name)
    state = "ON" if worker.get("enabled", enabled) else "OFF"
    note = "" if enabled else " (it finishes the frame it is rendering and takes no more)"
    print(f"worker {worker.get('name', args.name)} is {state}{note}")
    return EXIT_OK
