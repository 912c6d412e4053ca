"""Scaling: two workers with one render thread each against one worker with one thread, on the same task.

One coordinator and two real workers (`renderq worker --threads 1`) render the same Blender-made Cycles scene
(about a second a frame at one thread). For the one-worker runs the second worker is switched OFF, so it claims
nothing; both workers stay registered throughout. Runs alternate (one worker first in even rounds, two first in odd
ones); the speed-up is the ratio of the medians, each run timed from the submit request to the coordinator's record
of the last frame done.

A task's start (the claim, Blender's start and load, the first frame's kernel set-up) is paid by each worker at the
same time and cannot be split, so it caps the speed-up; the figures include that cap for the frames rendered
(the one-worker run's time to its first frame kept whole, the rest halved). The default of 48 frames keeps the cap
near 1.9: with 24 frames of a second it would be about 1.85 by itself. The exact frame times of both set-ups are
shown as well: with two Blenders on two cores, everything else the machine does (the workers, the coordinator, other
programs) takes its time from the renders. The same split is timed without the farm too (one plain `blender -b
FILE -a` of all frames, against two at once of half the frames each): the speed-up the machine itself allows two
one-thread renders, against which the farm's is shown.

Exits 1 when the speed-up is below the target; --quick renders 4 frames in one round and enforces no target.

    python benchmarks/scaling.py [--frames 48] [--rounds 2] [--target 1.85] [--quick] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, add_arguments
from harness import Farm
from renders import Timeline, farm_render, load_average, plain_animation, runs_note

from renderq.scenes import make_scene
from worker.blender_session import find_blender

WORKERS = ("one", "two")
HEARTBEAT_SECONDS = 2.0  # the coordinator's default heartbeat interval


def switch(farm: Farm, name: str, enabled: bool) -> None:
    """Switch a worker ON or OFF. A worker learns that it is ON again from its next heartbeat: give it that long,
    so that both workers start a two-worker run idle and polling alike."""
    if farm.api.workers()[name]["enabled"] == enabled:
        return
    farm.api.post("/set_worker_enabled", {"name": name, "enabled": enabled})
    if enabled:
        time.sleep(HEARTBEAT_SECONDS + 1.0)


def frames_per_worker(task: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for frame in task["frames"]:
        counts[frame["worker"]] = counts.get(frame["worker"], 0) + 1
    return counts


def finish_spread(task: dict) -> float:
    """Seconds between the first and the last worker's last render_write: how unevenly the task's end was shared."""
    last: dict[str, float] = {}
    for frame in task["frames"]:
        last[frame["worker"]] = max(last.get(frame["worker"], 0.0), float(frame["ended_at"]))
    return max(last.values()) - min(last.values()) if len(last) > 1 else 0.0


def plain_speed_up_run(blender: str, blend: str, frames: int, root: str, two: bool) -> float:
    """Seconds for plain `blender -b FILE -a` (one thread) to render frames 1..frames: in one process, or (`two`)
    in two processes at once, one rendering the first half and one the second. No farm is involved: the ratio of
    the two is what this machine itself gives two one-thread renders."""
    out_dir = tempfile.mkdtemp(dir=root)
    if not two:
        return plain_animation(blender, blend, 1, frames, 1, out_dir).total
    half = frames // 2
    totals: list[float] = []

    def render(first: int, last: int) -> None:
        totals.append(plain_animation(blender, blend, first, last, 1, out_dir).total)

    halves = [threading.Thread(target=render, args=span) for span in ((1, half), (half + 1, frames))]
    started = time.monotonic()
    for thread in halves:
        thread.start()
    for thread in halves:
        thread.join()
    if len(totals) != 2:
        raise RuntimeError("a plain Blender render of half the frames failed")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, help="frames of the task (default 48; quick 4)")
    parser.add_argument("--rounds", type=int, help="alternating one/two-worker rounds (default 2; quick 1)")
    parser.add_argument("--target", type=float, default=1.85, help="smallest acceptable speed-up")
    add_arguments(parser, "4 frames, 1 round")
    args = parser.parse_args()
    args.frames = args.frames or (4 if args.quick else 48)
    args.rounds = args.rounds or (1 if args.quick else 2)

    blender = find_blender()
    results = Results("scaling", quick=args.quick)
    runs: dict[int, list[tuple[Timeline, dict]]] = {1: [], 2: []}
    loads = [load_average()]
    with tempfile.TemporaryDirectory(prefix="renderq-scaling-") as root:
        blend = make_scene(os.path.join(root, "scaling.blend"), blender=blender, frames=args.frames)
        farm = Farm(os.path.join(root, "farm"), blender=blender)
        os.makedirs(farm.root, exist_ok=True)
        farm.start_coordinator()
        for name in WORKERS:
            farm.start_worker(name, threads=1)
        try:
            sha = farm.api.upload_blend(blend)
            for round_number in range(args.rounds):
                for workers in ((1, 2) if round_number % 2 == 0 else (2, 1)):
                    switch(farm, "two", workers == 2)
                    runs[workers].append(farm_render(farm, sha, os.path.basename(blend), 1, args.frames,
                                                     f"scaling-{workers}-{round_number}"))
                    loads.append(load_average())
        finally:
            farm.stop()
        # The same comparison without the farm, alternating the same way: the speed-up this machine allows.
        plain: dict[bool, list[float]] = {False: [], True: []}
        for round_number in range(args.rounds):
            for two in ((False, True) if round_number % 2 == 0 else (True, False)):
                plain[two].append(plain_speed_up_run(blender, blend, args.frames, root, two))
                loads.append(load_average())

    one = [timeline for timeline, _ in runs[1]]
    two = [timeline for timeline, _ in runs[2]]
    one_seconds = statistics.median(run.total for run in one)
    two_seconds = statistics.median(run.total for run in two)
    start = statistics.median(run.to_first_frame for run in one)
    cap = one_seconds / (start + (one_seconds - start) / 2)
    results.add(f"speed-up, two workers x 1 thread over one worker x 1 thread, {args.frames} frames, "
                f"median of {args.rounds} alternating round(s)", round(one_seconds / two_seconds, 3), "x",
                args.target, ">=", note=f"{os.cpu_count()} CPUs")
    results.add("one worker, submit to last frame done", round(one_seconds, 2), "s",
                note=runs_note([run.total for run in one]))
    results.add("two workers, submit to last frame done", round(two_seconds, 2), "s",
                note=runs_note([run.total for run in two]))
    results.add("speed-up the start allows (one-worker start kept whole, the rest halved)", round(cap, 3), "x",
                note=f"start (submit to first render_pre) {start:.2f} s")
    plain_speed_up = statistics.median(plain[False]) / statistics.median(plain[True])
    results.add("speed-up plain Blender itself gets here: two `blender -b FILE -a` x 1 thread of half the frames "
                "each at once, over one of all frames", round(plain_speed_up, 3), "x",
                note="one: " + runs_note(plain[False]) + "; two: " + runs_note(plain[True]))
    results.add("farm speed-up over plain Blender's own", round(one_seconds / two_seconds / plain_speed_up, 3), "")
    results.add("frame, one worker: mean exact frame time", round(statistics.median(r.mean_frame for r in one), 3),
                "s", note=runs_note([r.mean_frame for r in one], 3))
    results.add("frame, two workers: mean exact frame time", round(statistics.median(r.mean_frame for r in two), 3),
                "s", note=runs_note([r.mean_frame for r in two], 3))
    results.add("two workers: last frames' spread (first to last worker done)",
                round(statistics.median(finish_spread(task) for _, task in runs[2]), 3), "s",
                note="frames per worker: " + "; ".join(
                    ", ".join(f"{name} {count}" for name, count in sorted(frames_per_worker(task).items()))
                    for _, task in runs[2]))
    results.add("load average (1 min) before, between and after the runs", round(max(loads), 2), "",
                note="max; all: " + ", ".join(f"{load:.2f}" for load in loads))
    return results.finish(args.json_out)


if __name__ == "__main__":
    sys.exit(main())
