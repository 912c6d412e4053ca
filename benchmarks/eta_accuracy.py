"""ETA accuracy: how close each estimate of a task's finish is to its actual finish, RenderQ's estimator against
the seed's.

The real Blender makes a scene whose frame cost varies: every 4th frame renders 3x the samples of the others, and
the samples of all of them drift from 1x to 3x over the range (keyed per frame). A real coordinator and two real
workers (one render thread each) render it, its frames claimed in the order measured (--order: sampled, the
default, or sequential), while this script polls /task. At the first poll at or past 10%, 25%,
50% and 75% of the frames done it records RenderQ's estimate (progress.eta_seconds) and computes the seed's from the
same answer: the mean of the last 8 exact frame times x the frames left / the workers rendering. When the task has
ended, each estimate's predicted finish (poll time + estimate) is compared with the actual finish (the task's
ended_at; the coordinator runs on this machine, so both use the same clock).

Errors are in percent of the time that was actually left at the poll, |predicted - actual| / (actual - poll time),
which is the honest measure: in percent of the whole render the late checkpoints would look better than they are
(the table shows that one too, for reference).

The scene renders --runs times (default 5), each on a fresh coordinator and fresh workers, so no run starts with
the speed history of the one before. One run's error at a checkpoint is a single draw: when both estimators are
within a few percent, which of them is closer changes from run to run with the machine's own speed and with
which frames the first polls have seen. So the targets are on the mean error over the runs at each checkpoint, the
error an artist meets on average: RenderQ's under 10%, and below the seed's. The mean, not the median, because an
estimator's rare large misses are part of its accuracy (the median of five would not see two of them). The median
and every run's errors are printed and kept in the figures' notes.

Frame times depend on whatever else the machine runs; the load average at the start and end is printed with the
figures.

    python benchmarks/eta_accuracy.py [--quick] [--json-out FILE] [--frames 80] [--runs 5]
                                      [--order sampled|sequential] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the tests' scenes (frames of chosen cost)
sys.path.insert(0, HERE)

from common import (
    ROOT,
    Coordinator,
    HttpClient,
    Results,
    add_arguments,
    describe_machine,
    find_blender,
    phase,
    renderq_env,
    stop_process,
)

from coordinator.eta import estimate_eta  # the seed's estimator, kept as the baseline
from renderq.model import DEFAULT_RENDER_ORDER, RENDER_ORDERS
from scenes import make_scene

CHECKPOINTS = (10, 25, 50, 75)
TARGET_PERCENT = 10.0
SEED_WINDOW = 8  # the seed's "last 8 frame times"
HEAVY_EVERY = 4
HEAVY_FACTOR = 3.0
DRIFT_TO = 3.0  # the last frame's samples over the first's, heavy frames aside
FINAL = ("done", "failed", "canceled")
WORKERS = 2


@dataclasses.dataclass
class Size:
    frames: int
    base_samples: int
    resolution: tuple[int, int]
    poll_seconds: float
    timeout: float
    runs: int


FULL = Size(frames=80, base_samples=16, resolution=(320, 180), poll_seconds=0.25, timeout=3600.0,
            runs=5)
QUICK = Size(frames=20, base_samples=4, resolution=(160, 90), poll_seconds=0.2, timeout=900.0, runs=1)


@dataclasses.dataclass
class Poll:
    """One answer of /task: when it came (this machine's clock), how far the task was, and both estimates."""

    at: float
    done: int
    total: int
    renderq_eta: float | None
    seed_eta: float | None
    status: str
    # The done frames' numbers, for the exact-cost reference.
    done_frames: frozenset[int] = frozenset()


def frame_samples(frames: int, base: int) -> list[int]:
    """Samples of frames 1..frames: drifting from base to DRIFT_TO x base, every HEAVY_EVERY-th frame HEAVY_FACTOR
    times more."""
    samples = []
    for frame in range(1, frames + 1):
        drift = 1.0 + (DRIFT_TO - 1.0) * (frame - 1) / max(1, frames - 1)
        heavy = HEAVY_FACTOR if frame % HEAVY_EVERY == 0 else 1.0
        samples.append(max(1, round(base * drift * heavy)))
    return samples


def seed_estimate(task: dict) -> float | None:
    """The seed's estimate from a /task answer: mean of the last 8 exact frame times (by end time) x frames left
    / workers rendering."""
    done = [f for f in task["frames"] if f["status"] == "done" and f["render_seconds"] is not None]
    done.sort(key=lambda f: f["ended_at"] or 0.0, reverse=True)
    recent = [f["render_seconds"] for f in done[:SEED_WINDOW]]
    progress = task["progress"]
    left = progress["queued"] + progress["leased"] + progress["rendering"]
    return estimate_eta(recent, left, progress["workers_rendering"])


def start_worker(coordinator: Coordinator, name: str, root: str, blender: str) -> subprocess.Popen:
    with open(os.path.join(root, f"worker-{name}.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "renderq", "worker", "--coordinator", coordinator.url, "--name", name,
             "--threads", "1", "--work-dir", os.path.join(root, f"work-{name}"), "--blender", blender,
             "--token-file", coordinator.token_file("worker")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=renderq_env(),
            start_new_session=True)


def wait_for_workers(client: HttpClient, names: list[str], workers: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        registered = {w["name"] for w in client.get("/list_workers")["workers"]}
        if set(names) <= registered:
            return
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker exited before registering; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not register within {timeout:g} s")
        time.sleep(0.2)


def render_and_poll(client: HttpClient, blend: str, size: Size, order: str) -> tuple[list[Poll], dict]:
    """Submit the scene's frames, claimed in `order`, and poll the task until it ends: the polls and the final
    task."""
    with open(blend, "rb") as handle:
        sha = client.post(f"/upload_blend?filename={os.path.basename(blend)}", raw=handle.read())["sha256"]
    task_id = client.post("/submit_task", {"name": "eta-accuracy", "blend_sha256": sha,
                                           "blend_filename": os.path.basename(blend), "frame_start": 1,
                                           "frame_end": size.frames, "order": order})["task_id"]
    polls: list[Poll] = []
    deadline = time.monotonic() + size.timeout
    while True:
        task = client.get(f"/task?task_id={task_id}")
        progress = task["progress"]
        polls.append(Poll(time.time(), progress["done"], progress["total"], progress["eta_seconds"],
                          seed_estimate(task), task["status"],
                          frozenset(f["frame"] for f in task["frames"] if f["status"] == "done")))
        if task["status"] in FINAL:
            return polls, task
        if time.monotonic() > deadline:
            raise RuntimeError(f"the task did not end within {size.timeout:g} s")
        time.sleep(size.poll_seconds)


def reference_estimate(poll: Poll, task: dict, samples: list[int], workers: int) -> float | None:
    """What an estimator that knew every frame's exact cost shape would say if the machine kept the speed it had so
    far: seconds = a + b x samples fitted (least squares) to the frames done at the poll, summed over the frames
    left, over the workers. How far this one is off shows how much the machine's own speed changed while the task
    rendered (other work on it), which no estimator can foresee, plus how unevenly the last frames fall to the
    workers, which it ignores (on a steady machine that is most of it at 50 and 75%)."""
    seconds = {f["frame"]: f["render_seconds"] for f in task["frames"] if f["render_seconds"] is not None}
    points = [(samples[frame - 1], seconds[frame]) for frame in poll.done_frames if frame in seconds]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    if slope <= 0:  # no usable relation yet: time proportional to samples
        slope, intercept = mean_y / mean_x, 0.0
    else:
        intercept = mean_y - slope * mean_x
    left = [samples[frame - 1] for frame in range(1, len(samples) + 1) if frame not in poll.done_frames]
    return sum(max(0.0, intercept + slope * x) for x in left) / workers


def error_percent(poll: Poll, eta: float | None, finish: float) -> float | None:
    """|poll time + eta - finish| in percent of the time actually left at the poll."""
    left = finish - poll.at
    if eta is None or left <= 0:
        return None
    return abs(poll.at + eta - finish) / left * 100.0


def load_average() -> str:
    try:
        return " / ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "?"


@dataclasses.dataclass
class Checkpoint:
    """One run's errors at one checkpoint, in % of the time actually left (None: no estimate then)."""

    percent: int
    renderq: float | None
    seed: float | None
    reference: float | None


@dataclasses.dataclass
class RunErrors:
    """What one render of the scene showed: its checkpoints, the median error over all its polls, its length."""

    checkpoints: dict[int, Checkpoint]
    median_over_polls: dict[str, float]
    render_seconds: float


def measure_run(polls: list[Poll], task: dict, samples: list[int]) -> RunErrors:
    """Print one run's checkpoint table and return its errors."""
    finish = task["ended_at"]
    started = task["started_at"] or task["created_at"]
    total_seconds = finish - started
    print(f"\nrender: {task['progress']['total']} frames in {total_seconds:.1f} s (first claim to task end)")
    header = (f"{'checkpoint':>10} {'done':>7} {'at s':>7} {'left s':>7} | {'RenderQ eta':>11} {'error':>7} | "
              f"{'seed eta':>9} {'error':>7} | {'RenderQ/seed % of total':>24} | {'exact-cost reference':>20}")
    print(header)
    print("-" * len(header))
    checkpoints: dict[int, Checkpoint] = {}
    for checkpoint in CHECKPOINTS:
        poll = next((p for p in polls if p.total and p.done * 100 >= checkpoint * p.total), None)
        if poll is None or poll.status in FINAL:
            continue
        mine = error_percent(poll, poll.renderq_eta, finish)
        seed = error_percent(poll, poll.seed_eta, finish)
        of_total = [None if e is None else abs(poll.at + e - finish) / total_seconds * 100
                    for e in (poll.renderq_eta, poll.seed_eta)]
        reference = error_percent(poll, reference_estimate(poll, task, samples, WORKERS), finish)
        print(f"{checkpoint:>9}% {poll.done:>3}/{poll.total:<3} {poll.at - started:>7.1f} {finish - poll.at:>7.1f} | "
              f"{_num(poll.renderq_eta):>11} {_pct(mine):>7} | {_num(poll.seed_eta):>9} {_pct(seed):>7} | "
              f"{_pct(of_total[0]):>11} / {_pct(of_total[1]):<10} | {_pct(reference):>20}")
        checkpoints[checkpoint] = Checkpoint(checkpoint, mine, seed, reference)
    # Over every poll while it rendered, for a picture beyond the four checkpoints.
    medians: dict[str, float] = {}
    for name, pick in (("RenderQ", lambda p: p.renderq_eta), ("seed", lambda p: p.seed_eta)):
        errors = [e for p in polls if p.status not in FINAL and p.done
                  for e in [error_percent(p, pick(p), finish)] if e is not None]
        if errors:
            medians[name] = statistics.median(errors)
    return RunErrors(checkpoints, medians, total_seconds)


def report(results: Results, runs: list[RunErrors]) -> None:
    """Add the figures over all runs: the mean error at each checkpoint (the targets), with the median and every
    run's value noted."""
    beats = 0
    for checkpoint in CHECKPOINTS:
        found = [run.checkpoints.get(checkpoint) for run in runs]
        if any(point is None for point in found):
            results.add(f"RenderQ ETA error at {checkpoint}% done, mean of {_renders(runs)}", None,
                        "% of time left", TARGET_PERCENT, note="a run had no poll at this point")
            continue
        means = {}
        for label, pick in (("RenderQ", lambda c: c.renderq), ("seed", lambda c: c.seed),
                            ("exact-cost reference", lambda c: c.reference)):
            values = [pick(point) for point in found]
            known = [value for value in values if value is not None]
            means[label] = statistics.fmean(known) if len(known) == len(values) else None
            note = f"median {_pct(statistics.median(known) if known else None)}; {_runs_note(values)}"
            if label == "exact-cost reference":
                note += "; the machine's speed change and the uneven last frames"
            results.add(f"{label} ETA error at {checkpoint}% done, mean of {_renders(runs)}", _round(means[label]),
                        "% of time left", TARGET_PERCENT if label == "RenderQ" else None, note=note)
        if means["RenderQ"] is not None and (means["seed"] is None or means["RenderQ"] < means["seed"]):
            beats += 1
    results.add("checkpoints where RenderQ's mean error is below the seed's", beats, "", len(CHECKPOINTS), ">=")
    every = sum(len(run.checkpoints) == len(CHECKPOINTS) and all(
        point.renderq is not None and point.renderq <= TARGET_PERCENT for point in run.checkpoints.values())
        for run in runs)
    results.add("runs with RenderQ within the target at every checkpoint", every, f"of {len(runs)}")
    closer = sum(point.renderq is not None and (point.seed is None or point.renderq < point.seed)
                 for run in runs for point in run.checkpoints.values())
    results.add("single checkpoints where RenderQ was closer than the seed", closer,
                f"of {sum(len(run.checkpoints) for run in runs)}")
    for name in ("RenderQ", "seed"):
        values = [run.median_over_polls.get(name) for run in runs]
        if None not in values:
            results.add(f"{name} median ETA error over all polls, median of {_renders(runs)}",
                        _round(statistics.median(values)), "% of time left", note=_runs_note(values))
    results.add("render time, median", round(statistics.median(run.render_seconds for run in runs), 1), "s",
                note="runs: " + ", ".join(f"{run.render_seconds:.1f} s" for run in runs))


def _renders(runs: list[RunErrors]) -> str:
    return f"{len(runs)} run" + ("" if len(runs) == 1 else "s")


def _runs_note(values: list[float | None]) -> str:
    return "runs: " + ", ".join(_pct(value) for value in values)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def render_once(root: str, blend: str, blender: str, size: Size, order: str) -> tuple[list[Poll], dict]:
    """One render of the scene on a fresh coordinator and fresh workers in `root`: the polls and the final task."""
    workers: list[subprocess.Popen] = []
    try:
        with Coordinator(root) as coordinator:
            client = coordinator.client("admin")
            names = [f"eta-{i}" for i in range(WORKERS)]
            workers = [start_worker(coordinator, name, root, blender) for name in names]
            wait_for_workers(client, names, workers, 120.0)
            polls, task = render_and_poll(client, blend, size, order)
            for worker in workers:
                stop_process(worker)
        # The whole record, for a look at a run afterwards (only a kept folder outlives the benchmark).
        with open(os.path.join(root, "task.json"), "w", encoding="utf-8") as handle:
            json.dump({"task": task, "polls": [dataclasses.asdict(poll) | {"done_frames": sorted(poll.done_frames)}
                                               for poll in polls]}, handle)
        return polls, task
    finally:
        for worker in workers:
            stop_process(worker)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, quick_help=f"{QUICK.frames} cheap frames, {QUICK.runs} run")
    parser.add_argument("--frames", type=int, help=f"frames of the task (default {FULL.frames}; quick "
                                                   f"{QUICK.frames})")
    parser.add_argument("--runs", type=int, help=f"renders of the scene, each on a fresh farm (default {FULL.runs}; "
                                                 f"quick {QUICK.runs})")
    parser.add_argument("--order", choices=RENDER_ORDERS, default=DEFAULT_RENDER_ORDER,
                        help=f"the order the task's frames are claimed in (default {DEFAULT_RENDER_ORDER})")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, scene, data) afterwards")
    args = parser.parse_args()
    size = dataclasses.replace(QUICK if args.quick else FULL)
    size.frames = args.frames or size.frames
    size.runs = args.runs or size.runs
    results = Results("eta_accuracy", quick=args.quick)
    blender = find_blender()
    if blender is None:
        results.fail("Blender is not installed (set RENDERQ_BLENDER or put blender on PATH)")
        return results.finish(args.json_out)
    machine = describe_machine(blender)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram']}, Blender {machine['blender']}")
    print(f"render order: {args.order}; {size.runs} run(s), each on a fresh farm")
    load_before = load_average()
    root = args.keep or tempfile.mkdtemp(prefix="renderq-eta-")
    os.makedirs(root, exist_ok=True)
    try:
        samples = frame_samples(size.frames, size.base_samples)
        with phase(f"making the scene with Blender ({size.frames} frames, samples {min(samples)}-{max(samples)})"):
            blend = make_scene(os.path.join(root, "eta.blend"), blender=blender, frames=size.frames,
                               resolution=size.resolution, frame_samples=samples)
        print("errors in % of the time actually left at the poll; 'RenderQ/seed % of total': the same errors in % "
              "of the whole render;\n'exact-cost reference': the error of an estimate that knew every frame's "
              "samples (time = a + b x samples, fitted so far) and assumed the machine kept its speed")
        runs: list[RunErrors] = []
        for number in range(1, size.runs + 1):
            with phase(f"run {number} of {size.runs}: rendering and polling"):
                polls, task = render_once(os.path.join(root, f"run-{number}"), blend, blender, size, args.order)
            if task["status"] != "done":
                results.fail(f"run {number}: the task ended {task['status']}, not done; see the logs in {root}")
                break
            runs.append(measure_run(polls, task, samples))
        else:
            report(results, runs)
    except Exception as error:  # noqa: BLE001 - a benchmark that could not run says why and exits EXIT_FAILED
        results.fail(f"{type(error).__name__}: {error}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average (1/5/15 min) at the start {load_before}, at the end {load_average()} "
          f"on {machine['cores']} cores: other work on the machine changes frame times while the task renders")
    return results.finish(args.json_out)


if __name__ == "__main__":
    sys.exit(main())
