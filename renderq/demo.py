"""`renderq demo`: a whole farm on this machine (a coordinator and N workers) rendering a small animation."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from renderq import submit
from renderq.blender_path import BlenderNotFoundError, find_blender
from renderq.cli_common import EXIT_FAILED, EXIT_INTERRUPTED
from renderq.http_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnreachable,
)
from renderq.ports import free_port
from renderq.progress import ProgressLine, format_table
from renderq.scenes import make_scene
from renderq.task_view import download_done_frames, report_outcome, wait_for_task

START_TIMEOUT = 30.0
REGISTER_TIMEOUT = 60.0
# Workers get this long after SIGINT to give back their frames before they are killed.
WORKER_STOP_TIMEOUT = 20.0
COORDINATOR_STOP_TIMEOUT = 10.0
DEMO_POLL_SECONDS = 0.5


class DemoError(Exception):
    """Something the demo needs did not work; printed as one sentence."""


@dataclass
class Child:
    """A process the demo started, with the log file its output goes to."""

    label: str
    process: subprocess.Popen
    log_path: str
    log_file: IO[bytes] = field(repr=False)

    def exited(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as stream:
                text = stream.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class DemoFarm:
    """What the demo started and how its clients reach it.

    `address` is one coordinator's URL or a cluster's as a comma-separated list; `servers` holds the stops of what
    the coordinators stand on (a database, an object store), run after the coordinators have stopped.
    """

    coordinators: list[Child] = field(default_factory=list)
    workers: list[Child] = field(default_factory=list)
    address: str = ""
    token_file: str = ""
    admin_token: str = ""
    servers: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


class CtrlC:
    """Ctrl-C as a KeyboardInterrupt that is also remembered. CPython drops an exception raised while a finalizer
    runs (an HTTP response closed as its connection is reused for the next poll), so a Ctrl-C landing there would be
    lost and the demo would render on; its waits look at `check` each round."""

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed, wherever its first one went."""
        if self.pressed:
            raise KeyboardInterrupt


CTRL_C = CtrlC()


# Starts the demo's coordinators (and whatever they need) into the farm, filling in its address and tokens.
StartCoordinators = Callable[[argparse.Namespace, str, DemoFarm], None]


def start_child(label: str, renderq_args: list[str], log_path: str, env: dict[str, str] | None = None) -> Child:
    """Run `renderq ARGS` with this interpreter, output to `log_path`, in its own session; `env` is added to this
    process's environment.

    Its own session keeps a Ctrl-C in the terminal from reaching it directly: the demo stops its children
    itself, workers first, so they can still give their frames back to a running coordinator.
    """
    log_file = open(log_path, "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    process = subprocess.Popen(
        [sys.executable, "-m", "renderq.cli", *renderq_args],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    return Child(label, process, log_path, log_file)


def stop_child(child: Child, timeout: float) -> None:
    """SIGINT, then SIGKILL if it is still running after `timeout` seconds."""
    if child.exited() is None:
        try:
            child.process.send_signal(signal.SIGINT)
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        except ProcessLookupError:
            pass
    child.log_file.close()


def stop_together(children: list[Child], timeout: float) -> None:
    """SIGINT to all of them at once, then stop_child each within one shared `timeout`."""
    for child in children:
        if child.exited() is None:
            try:
                child.process.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for child in children:
        stop_child(child, max(0.1, deadline - time.monotonic()))


def stop_all(farm: DemoFarm) -> None:
    """Stop the workers, then the coordinators, then the servers they stand on."""
    try:
        stop_together(farm.workers, WORKER_STOP_TIMEOUT)
        stop_together(farm.coordinators, COORDINATOR_STOP_TIMEOUT)
    finally:
        farm.servers.close()


def died(child: Child) -> str:
    """A sentence about a child that exited, with the end of its log."""
    tail = child.log_tail()
    detail = f"; the end of its log ({child.log_path}):\n{tail}" if tail else f"; see {child.log_path}"
    return f"the {child.label} stopped with exit status {child.exited()}{detail}"


def wait_for_coordinator(client: CoordinatorClient, coordinator: Child) -> None:
    """Wait until GET /health answers."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if coordinator.exited() is not None:
            raise DemoError(died(coordinator))
        try:
            client.health()
            return
        except CoordinatorUnreachable:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the {coordinator.label} did not answer within {START_TIMEOUT:g} s; see {coordinator.log_path}"
                ) from None
            time.sleep(0.2)


def wait_for_workers(client: CoordinatorClient, workers: list[Child], names: list[str], line: ProgressLine) -> None:
    """Wait until every demo worker has registered and is alive."""
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while True:
        CTRL_C.check()
        for worker in workers:
            if worker.exited() is not None:
                line.finish()
                raise DemoError(died(worker))
        alive = {w["name"] for w in client.list_workers() if w.get("alive")}
        ready = [name for name in names if name in alive]
        line.update(f"workers registered: {len(ready)}/{len(names)}")
        if len(ready) == len(names):
            line.finish()
            return
        if time.monotonic() > deadline:
            line.finish()
            missing = ", ".join(sorted(set(names) - set(ready)))
            logs = os.path.dirname(workers[0].log_path)
            raise DemoError(f"{missing} did not register within {REGISTER_TIMEOUT:g} s; see the logs in {logs}")
        time.sleep(0.3)


def print_times(task: dict, submitted_at: float, finished_at: float, started_at: float) -> None:
    """Wall time and the exact time of every frame."""
    frames = [frame for frame in task.get("frames") or [] if frame.get("status") == "done"]
    wall = None
    if task.get("created_at") and task.get("ended_at"):
        wall = task["ended_at"] - task["created_at"]
    if wall is None:
        wall = finished_at - submitted_at
    whole = finished_at - started_at
    print(f"wall time: {wall:.1f} s from submit to the last frame ({whole:.1f} s for the whole demo)")
    if not frames:
        return
    rows = []
    for frame in frames:
        seconds = frame.get("render_seconds")
        rows.append([frame["frame"], frame.get("worker") or "-", f"{seconds:.2f}" if seconds is not None else "-"])
    print("render time of each frame (from Blender's render_pre to render_write):")
    print(format_table(["FRAME", "WORKER", "SECONDS"], rows, right=(0, 2)))
    times = [frame["render_seconds"] for frame in frames if frame.get("render_seconds") is not None]
    if times:
        print(
            f"frames: {len(times)}, mean {sum(times) / len(times):.2f} s, min {min(times):.2f} s, "
            f"max {max(times):.2f} s, sum {sum(times):.1f} s"
        )
    per_worker = Counter(frame.get("worker") or "-" for frame in frames)
    print("frames per worker: " + ", ".join(f"{name} {count}" for name, count in sorted(per_worker.items())))


def submit_scene(client: CoordinatorClient, blend_path: str, frames: int, scratch: str) -> dict:
    """Pack the demo scene and submit it through the pipeline the CLI and the add-on use; returns the task."""
    from renderq import packing  # BAT loads only once the demo gets here

    try:
        packed = packing.pack_project(blend_path, os.path.join(scratch, "staging"))
    except (ValueError, packing.PackError) as error:
        raise DemoError(f"could not pack the demo scene: {error}") from error
    submit_plan = submit.plan(client, packed)
    task, _uploaded = submit.execute(client, submit_plan, {
        "name": "demo", "blender_version": packed.blender_version, "frame_start": 1, "frame_end": frames,
        "frame_step": 1, "priority": 0, "workers": [], "submitted_by": "renderq demo", "settings": {},
    })
    return task


def start_workers(names: list[str], farm: DemoFarm, scratch: str, blender: str) -> None:
    """Start one worker per name, each with its own folder in `scratch`, appending each to the farm's workers as it
    starts (so that a failure halfway still stops those already running)."""
    for name in names:
        work_dir = os.path.join(scratch, name)
        os.makedirs(work_dir, exist_ok=True)
        farm.workers.append(start_child(
            name,
            ["worker", "--coordinator", farm.address, "--name", name, "--threads", "1", "--work-dir", work_dir,
             "--blender", blender, "--token-file", farm.token_file],
            os.path.join(scratch, f"{name}.log"),
        ))


def stop_all_uninterrupted(farm: DemoFarm) -> None:
    """stop_all with Ctrl-C ignored meanwhile: a second Ctrl-C must not leave children running halfway through
    shutdown (every wait in it is bounded)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be changed, and cannot arrive here either
        previous = None
    try:
        stop_all(farm)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def start_coordinator(args: argparse.Namespace, scratch: str, farm: DemoFarm) -> None:
    """The default demo's coordinator: SQLite and the blob folder in the scratch folder's data dir."""
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = os.path.join(scratch, "data")
    print(f"starting a coordinator at {url} and {args.workers} worker(s); scratch folder {scratch}")
    coordinator = start_child(
        "coordinator",
        ["coordinator", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data_dir],
        os.path.join(scratch, "coordinator.log"),
    )
    farm.coordinators.append(coordinator)
    wait_for_coordinator(CoordinatorClient(url, timeout=30.0), coordinator)
    farm.address = url
    # The demo is the farm's admin: it submits with the admin token; its workers use the worker token file.
    farm.token_file = os.path.join(data_dir, "worker_token")
    with open(os.path.join(data_dir, "admin_token"), encoding="utf-8") as handle:
        farm.admin_token = handle.read().strip()


def run(args: argparse.Namespace, start_coordinators: StartCoordinators = start_coordinator) -> int:
    """Run the demo on the coordinators `start_coordinators` starts; returns the exit status (0 when every frame
    rendered)."""
    try:
        blender = find_blender(args.blender)
    except BlenderNotFoundError as error:
        print(f"renderq: the demo needs Blender: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        # A shell that starts the demo in the background leaves SIGINT ignored, and children inherit that:
        # they would then only stop by SIGKILL, without giving their frames back.
        CTRL_C.pressed = False
        signal.signal(signal.SIGINT, CTRL_C)
    except ValueError:  # not the main thread
        pass
    started_at = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="renderq-demo-")
    keep_scratch = args.keep
    farm = DemoFarm()
    line = ProgressLine()
    try:
        start_coordinators(args, scratch, farm)
        client = CoordinatorClient(farm.address, timeout=30.0, token=farm.admin_token)
        names = [f"demo-worker-{index}" for index in range(1, args.workers + 1)]
        start_workers(names, farm, scratch, blender)

        # Build the scene while the workers start up: both take a few seconds.
        print(f"making a {args.frames}-frame Cycles animation with {blender}")
        try:
            blend_path = make_scene(os.path.join(scratch, "demo.blend"), blender=blender, frames=args.frames)
        except Exception as error:  # the scene builder runs Blender; any failure there ends the demo plainly
            raise DemoError(f"could not make the demo scene: {error}") from error
        wait_for_workers(client, farm.workers, names, line)
        status = render_and_report(args, client, farm, blend_path, scratch, line, started_at)
        if status != 0:
            keep_scratch = True
        return status
    except KeyboardInterrupt:
        line.finish()
        print("renderq: demo interrupted; stopping the workers and the coordinators", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DemoError, CoordinatorError) as error:
        line.finish()
        keep_scratch = True
        print(f"renderq: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        stop_all_uninterrupted(farm)
        if keep_scratch:
            print(f"kept the demo's scratch folder (coordinator data, worker folders, logs): {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def render_and_report(args: argparse.Namespace, client: CoordinatorClient, farm: DemoFarm, blend_path: str,
                      scratch: str, line: ProgressLine, started_at: float) -> int:
    """Submit the scene, show progress until the task ends, download its frames and print the times; returns the
    exit status."""
    task = submit_scene(client, blend_path, args.frames, scratch)
    submitted_at = time.monotonic()
    task_id = task["task_id"]
    print(f"submitted task {task_id}: frames 1-{args.frames}")

    def problem() -> str | None:
        CTRL_C.check()
        # A cluster's clients move to the next coordinator: only when none is left can the task not go on.
        if all(coordinator.exited() is not None for coordinator in farm.coordinators):
            return died(farm.coordinators[0])
        if all(worker.exited() is not None for worker in farm.workers):
            return died(farm.workers[0])
        return None

    task = wait_for_task(client, task_id, line, poll_seconds=DEMO_POLL_SECONDS, still_running=problem)
    finished_at = time.monotonic()
    output = os.path.abspath(args.output)
    fetched = download_done_frames(client, task, output, line)
    print_times(task, submitted_at, finished_at, started_at)
    return report_outcome(task, output, fetched.paths, skipped=len(fetched.skipped))
