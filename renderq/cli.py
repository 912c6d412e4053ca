"""The `renderq` command: run a coordinator or a worker, submit and follow tasks, manage workers.

The argument types, the task display, and `submit` live in their own modules; this one builds the parser and
runs the small commands.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from renderq import __version__
from renderq.cli_args import (
    blender_version_arg,
    notify_url_arg,
    parse_frames,
    port_number,
    positive_int,
    priority_arg,
    seconds_arg,
    tags_arg,
    task_id_arg,
    tiles_arg,
)
from renderq.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    make_client,
    print_json,
)
from renderq.cli_workers import cmd_worker_enable, cmd_worker_tags, cmd_workers
from renderq.http_client import CoordinatorError, Forbidden, Unauthorized
from renderq.model import DEFAULT_RENDER_ORDER, RENDER_ORDERS, VIDEO_CONTAINERS, TaskStatus, status_label
from renderq.progress import (
    ProgressLine,
    format_bytes,
    format_table,
    printable,
)
from renderq.submit_cmd import cmd_submit
from renderq.units import format_eta
from renderq.task_view import (
    FINAL_STATUSES,
    POLL_SECONDS,
    download_done_frames,
    download_video,
    print_task_detail,
    progress_of,
    waiting_text,
)

DEFAULT_COORDINATOR = "http://127.0.0.1:5000"


# -- commands --------------------------------------------------------------------------------------------------------


TOKEN_HINT = "pass the token with --token TOKEN or set RENDERQ_TOKEN"


def rows_to_show(args: argparse.Namespace, answer: dict, key: str, nothing: str) -> list[dict]:
    """The list under `key` in a listing answer, for a table; empty once it is dealt with (printed whole as JSON
    with --json, or `nothing` said because the list is empty)."""
    if args.json:
        print_json(answer)
        return []
    items = answer.get(key, [])
    if not items:
        print(nothing)
    return items


def cmd_status(args: argparse.Namespace) -> int:
    """Show all tasks, or one task with its frames."""
    client = make_client(args)
    if args.task is None:
        tasks = rows_to_show(args, client.request("GET", "/tasks", params={"status": args.filter}), "tasks",
                             "no tasks")
        if not tasks:
            return EXIT_OK
        rows = []
        for task in tasks:
            progress = progress_of(task)
            eta = "-" if task.get("status") in FINAL_STATUSES else format_eta(
                progress.get("eta_seconds"), progress.get("eta_low_seconds"), progress.get("eta_high_seconds"))
            rows.append([
                task.get("task_id"), task.get("name", ""), task.get("owner") or "-",
                status_label(task.get("status", "")), f"{progress['done']}/{progress['total']}",
                f"{progress['percent']:.0f}%", eta, progress["failed"],
            ])
        # OWNER is who submitted (from their token); the free-text submitted_by label is in the task's details.
        print(format_table(["ID", "NAME", "OWNER", "STATUS", "DONE", "%", "ETA", "FAILED"], rows,
                           right=(0, 4, 5, 6, 7)))
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


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a task whose scout frames are done: its held frames render."""
    task = make_client(args).approve_task(args.task)
    progress = progress_of(task)
    left = progress["total"] - progress["done"] - progress["failed"] - progress["canceled"]
    print(f"task {task.get('task_id', args.task)} ({task.get('name', '')}) is approved: its {left} frame(s) left "
          f"render now")
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
    task = client.get_task(args.task, frames_status="done")
    if args.video:
        return download_video(client, task, args.dir)
    try:
        fetched = download_done_frames(client, task, args.dir, ProgressLine())
    except OSError as error:
        raise UsageError(f"cannot write to {args.dir}: {error.strerror or error}") from None
    if not fetched.paths and not fetched.skipped:
        print(f"task {args.task} has no rendered frames yet")
        return EXIT_OK
    if fetched.paths:
        kept = f" ({fetched.kept} already there)" if fetched.kept else ""
        print(f"{len(fetched.paths)} frame(s) of task {args.task} are in {args.dir}{kept}")
    return EXIT_FAILED if fetched.skipped else EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a task's log, and with --follow keep printing what is appended."""
    client = make_client(args)
    offset = 0
    try:
        while True:
            answer = client.get_log(args.task, offset)
            text = answer.get("text") or ""
            if text:
                sys.stdout.write(printable(text, multiline=True))  # Blender's output, and whatever a scene printed
                sys.stdout.flush()
            next_offset = int(answer.get("next_offset", offset))
            if text and next_offset > offset:
                offset = next_offset
                continue  # more may be waiting beyond one answer's worth
            if not args.follow:
                return EXIT_OK
            status = client.get_task(args.task, with_frames=False).get("status")
            if status in FINAL_STATUSES:
                # One more read: lines may have arrived between the last read and the task ending.
                final = client.get_log(args.task, offset)
                sys.stdout.write(printable(final.get("text") or "", multiline=True))
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
    """Run the local demo farm (renderq/demo.py), or with --cluster its cluster (renderq/demo_cluster.py)."""
    if args.cluster:
        from renderq import demo_cluster

        return demo_cluster.run(args)
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
        help=f"the coordinator's address, or a cluster's as a comma-separated list (the next is used when one stops "
        f"answering; default: $RENDERQ_COORDINATOR, else {DEFAULT_COORDINATOR})",
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
    add_submit_arguments(submit)

    add_task_and_worker_commands(add)

    demo = add("demo", "run a coordinator and local workers, render a small animation, show the times",
               cmd_demo, client=False)
    add_demo_arguments(demo)
    return parser


def add_task_and_worker_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The commands that look at and change tasks and workers; `add(name, help, handler)` makes each one."""
    status = add("status", "show tasks, or one task with its frames", cmd_status)
    status.add_argument("task", nargs="?", type=task_id_arg, metavar="TASK", help="a task id (default: all tasks)")
    status.add_argument("--status", dest="filter", metavar="STATUS",
                        choices=TaskStatus.values(),
                        help=f"list only tasks with this status ({', '.join(TaskStatus.values())})")
    status.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")

    workers = add("workers", "show the workers, or one worker: what it offers and renders, its latest frames and "
                  "failures", cmd_workers)
    workers.add_argument("name", nargs="?", metavar="NAME", help="a worker's name (default: every worker)")
    workers.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")

    enable = add("worker-enable", "switch a worker ON: it takes frames again",
                 lambda args: cmd_worker_enable(args, True))
    enable.add_argument("name", metavar="NAME", help="the worker's name")
    disable = add("worker-disable", "switch a worker OFF: it finishes its frame and takes no more",
                  lambda args: cmd_worker_enable(args, False))
    disable.add_argument("name", metavar="NAME", help="the worker's name")
    tags = add("worker-tags", "set a worker's tags (admin): tasks with tags go only to workers with all of them",
               cmd_worker_tags)
    tags.add_argument("name", metavar="NAME", help="the worker's name")
    tags.add_argument("tags", metavar="TAG", nargs="*", type=tags_arg, help="its tags, replacing the ones it has")
    tags.add_argument("--clear", action="store_true", help="take every tag off the worker")

    cancel = add("cancel", "cancel a task's frames that are not rendered yet", cmd_cancel)
    cancel.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

    approve = add("approve", "render the rest of a task whose scout frames are done (it waits for approval)",
                  cmd_approve)
    approve.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")

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
    download.add_argument("--video", action="store_true",
                          help="download only the task's video (the frames and the video come down without it)")

    logs = add("logs", "print a task's render log", cmd_logs)
    logs.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines until the task ends (Ctrl-C stops)")

    disk = add("disk", "show the coordinator's disk use, per task", cmd_disk)
    disk.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")

    delete_files = add("delete-files", "delete an ended task's frames and the input files no other task uses",
                       cmd_delete_files)
    delete_files.add_argument("task", type=task_id_arg, metavar="TASK", help="the task id")


def add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    """The flags of `renderq submit`."""
    submit.add_argument("file", metavar="FILE.blend", help="the .blend file to render")
    submit.add_argument("--name", help="the task's name (default: the file name without .blend)")
    submit.add_argument(
        "--frames", type=parse_frames, metavar="A-B",
        help="the frames to render, one number or a range such as 1-250 "
             "(default: the scene's range, read from the file)",
    )
    submit.add_argument("--step", type=positive_int, metavar="N",
                        help="render every Nth frame of the range (default: the scene's step, else 1)")
    submit.add_argument("--scene", metavar="NAME",
                        help="render this scene of the file, with its frame range (default: the scene the file was "
                             "saved with)")
    submit.add_argument("--camera", metavar="NAME",
                        help="render through this camera object (default: the scene's active camera)")
    submit.add_argument("--worker", action="append", metavar="NAME",
                        help="only let this worker render the task; repeat for several (default: any worker)")
    submit.add_argument("--priority", type=int, default=0, metavar="P",
                        help="higher priorities render first (default: %(default)s)")
    submit.add_argument("--wait", action="store_true",
                        help="show progress until the task ends, then download its frames")
    submit.add_argument("--output", metavar="DIR",
                        help="with --wait: where to put the frames (default: ./renderq-TASK_ID)")
    submit.add_argument("--timings", action="store_true",
                        help="print on stderr when each step ended (start-up, pack, submit, each frame on disk, "
                             "download): where the wait goes")
    submit.add_argument("--allow-missing", action="store_true",
                        help="submit even when assets the file refers to are missing (they are recorded on the task)")
    submit.add_argument("--allow-outside", action="store_true",
                        help="upload files from outside the project folder (the .blend's folder) and the targets of "
                             "links in it that lead out of it; without it the submit lists them and stops. Hidden "
                             "files are never uploaded: a name starting with '.' below the project folder, else "
                             "below your home folder, else anywhere in the path (~/.ssh/id_rsa, .env, .git/...)")
    submit.add_argument("--frame-timeout", type=seconds_arg, metavar="SECONDS",
                        help="stop and retry a frame that renders longer than this (default: the coordinator's "
                             "setting, usually no limit)")
    submit.add_argument("--no-progress-timeout", type=seconds_arg, metavar="SECONDS",
                        help="stop and retry a frame when Blender prints nothing for this long (default: the "
                             "coordinator's setting, usually 600)")
    submit.add_argument("--needs-python", action="store_true",
                        help="the file's own Python (drivers, registered scripts) must run to render it right; only "
                             "workers started with --allow-blend-python take it (workers also detect this themselves)")
    submit.add_argument("--tag", type=tags_arg, action="extend", metavar="TAG",
                        help="only workers with this tag render the task; repeat for several, all of which a worker "
                             "must have (default: any worker)")
    submit.add_argument("--device", type=str.upper, choices=("GPU", "CPU"),
                        help="render Cycles on GPU (only workers with a GPU enabled take it) or CPU (default: the "
                             "file's own choice)")
    submit.add_argument("--video", choices=VIDEO_CONTAINERS,
                        help="once every frame is done, a worker with FFmpeg encodes a video of them (H.264 in mp4, "
                             "ProRes in mov, VP9 in webm) at the scene's frame rate, with the scene's sound strips; "
                             "the task is done when the video is (default: none, or the scene's own FFmpeg settings "
                             "when its output is a movie)")
    submit.add_argument("--notify", type=notify_url_arg, action="append", metavar="URL",
                        help="post the task's events (done, failed, awaiting approval) to this http:// or https:// "
                             "URL as signed JSON; repeat for several (the coordinator may also tell a farm-wide URL; "
                             "see the README's Webhooks)")
    submit.add_argument("--order", choices=RENDER_ORDERS, default=DEFAULT_RENDER_ORDER,
                        help="the order frames are handed out in: sampled (the first and last frame, then frames "
                             "spread evenly over the whole range, then the gaps filled in: the whole shot shows "
                             "early and the ETA is right early) or sequential (lowest number first); default "
                             f"{DEFAULT_RENDER_ORDER}")
    submit.add_argument("--scout", type=positive_int, metavar="N",
                        help="render N frames spread over the range first (the first, the last, the rest evenly "
                             "between), then wait: the task shows their images and an estimate of the rest's time "
                             "(and cost) until you approve it (`renderq approve TASK`) or cancel it (default: none)")
    submit.add_argument("--tiles", type=tiles_arg, metavar="CxR",
                        help="split the one frame into columns x rows tiles (each 1 to 8) that workers render at "
                             "once; one of them then merges them into the whole image, equal to a render of the "
                             "whole frame (a still only, and not a denoised scene; default: render it whole)")
    submit.add_argument("--blender-version", type=blender_version_arg, metavar="X.Y",
                        help="render only on workers with exactly this Blender major.minor "
                             "(default: the version that saved the file, or newer)")


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    """The flags of `renderq demo`."""
    demo.add_argument("--workers", type=positive_int, default=2, metavar="N",
                      help="how many local workers to start (default: %(default)s)")
    demo.add_argument("--frames", type=positive_int, default=24, metavar="N",
                      help="how many frames the animation has (default: %(default)s)")
    demo.add_argument("--port", type=port_number, default=0, metavar="PORT",
                      help="the coordinator's port on 127.0.0.1; with --cluster, the first of three (default: free "
                           "ones)")
    demo.add_argument("--cluster", action="store_true",
                      help="run the farm as a cluster: a throwaway PostgreSQL and SeaweedFS (an S3 object store), "
                           "three coordinators sharing them, and workers given all three addresses (needs what "
                           "`bash scripts/demo.sh --cluster` installs; see docs/cluster.md)")
    demo.add_argument("--blender", metavar="PATH",
                      help="the Blender binary (default: $RENDERQ_BLENDER, else blender on PATH, else where the "
                           "official installers put it)")
    demo.add_argument("--output", metavar="DIR", default="renderq-demo",
                      help="where to put the rendered frames (default: ./%(default)s)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's scratch folder (coordinator data, worker folders, logs) and print where")


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
        print(f"renderq: {printable(error)}", file=sys.stderr)
        return EXIT_USAGE
    except CoordinatorError as error:
        message = printable(error)
        token_refused = isinstance(error, Unauthorized) and not isinstance(error, Forbidden)
        print(f"renderq: {message}; {TOKEN_HINT}" if token_refused else f"renderq: {message}", file=sys.stderr)
        return EXIT_FAILED
    except PartMissing as error:
        print(f"renderq: {printable(error)}", file=sys.stderr)
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
        print(f"renderq: {printable(error.strerror or error)}{printable(where)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
