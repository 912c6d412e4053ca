"""Farm overhead: one worker renders N frames through the farm, against plain `blender -b FILE -a`.

Both sides render the same Blender-made Cycles scene, frames and thread count, and both pay Blender's start-up and
scene load once. Plain Blender is timed from its process start to its exit; the farm from the submit request to the
coordinator's record of the last frame done (upload and report included). The two are timed alternately (plain
first in even rounds, the farm first in odd ones), so each round is a pair run back to back under the same machine
speed. The target is on the median over the rounds of farm / plain within each round: a shared machine's speed
drifts by more than the 3% measured here from one minute to the next, and a pair run back to back sees less of
that drift than runs minutes apart. Nine rounds by default: on a shared 2-core virtual machine the median of five
still moved between 0.97 and 1.06 from one run of the script to the next. The ratio of the medians of all runs is
shown too, and every run is listed.

Each side is also broken down into the same parts: start (submit or process start to the first frame's
`render_pre`; for the farm the claim's pickup is shown apart), the exact frame times (`render_pre` to `render_write`,
both sides), the gaps between frames, and the end (the last `render_write` to done or exit). The farm's frames are
compared pixel for pixel with plain Blender's. The load average is shown: on a busy machine the figures are noise.

Exits 1 when farm / plain is above the target or a frame differs; --quick renders 3 frames in one round and
enforces no target.

    python benchmarks/farm_overhead.py [--frames 24] [--rounds 9] [--threads 1] [--target 1.03] [--quick]
        [--json-out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, add_arguments, cpu_seconds
from harness import Farm
from renders import farm_render, load_average, plain_animation, runs_note, same_pixels

from renderq.scenes import make_scene
from worker.blender_session import find_blender


def farm_cpu(farm: Farm) -> float:
    """CPU seconds used so far by the farm's own processes: the coordinator and the worker agents (their Blender
    children are not counted; they are the render being compared)."""
    processes = [farm.coordinator, *farm.workers.values()]
    return sum(cpu_seconds(process.pid) for process in processes if process is not None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, help="frames per render (default 24; quick 3)")
    parser.add_argument("--rounds", type=int, help="alternating plain/farm rounds (default 9; quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="render threads on both sides (default 1)")
    parser.add_argument("--target", type=float, default=1.03, help="largest acceptable farm/plain ratio")
    add_arguments(parser, "3 frames, 1 round")
    args = parser.parse_args()
    args.frames = args.frames or (3 if args.quick else 24)
    args.rounds = args.rounds or (1 if args.quick else 9)

    blender = find_blender()
    results = Results("farm_overhead", quick=args.quick)
    plain_runs, farm_runs, loads = [], [], [load_average()]
    farm_cpu_runs: list[float] = []
    pixels_same, pixels_problem = args.frames, ""
    with tempfile.TemporaryDirectory(prefix="renderq-overhead-") as root:
        blend = make_scene(os.path.join(root, "overhead.blend"), blender=blender, frames=args.frames)
        farm = Farm(os.path.join(root, "farm"), blender=blender)
        os.makedirs(farm.root, exist_ok=True)
        farm.start_coordinator()
        farm.start_worker("bench", threads=args.threads)
        try:
            # The upload is not part of rendering: plain Blender reads a local file too.
            sha = farm.api.upload_blend(blend)
            for round_number in range(args.rounds):
                out_dir = tempfile.mkdtemp(dir=root)
                sides = ("plain", "farm") if round_number % 2 == 0 else ("farm", "plain")
                for side in sides:
                    if side == "plain":
                        plain_runs.append(plain_animation(blender, blend, 1, args.frames, args.threads, out_dir))
                    else:
                        cpu_before = farm_cpu(farm)
                        timeline, task = farm_render(farm, sha, os.path.basename(blend), 1, args.frames,
                                                     f"overhead-{round_number}")
                        farm_runs.append((timeline, task))
                        farm_cpu_runs.append(farm_cpu(farm) - cpu_before)
                    loads.append(load_average())
                # Every round's frames, not only the last: a difference may come and go.
                same, problem = same_pixels(farm, farm_runs[-1][1], out_dir)
                pixels_same = min(pixels_same, same)
                pixels_problem = pixels_problem or problem
        finally:
            farm.stop()

    farms = [timeline for timeline, _ in farm_runs]
    plain_seconds = statistics.median(run.total for run in plain_runs)
    farm_seconds = statistics.median(run.total for run in farms)
    paired = [farm.total / plain.total for farm, plain in zip(farms, plain_runs, strict=True)]
    size = f"{args.frames} frames, {args.threads} thread(s), median over {args.rounds} alternating round(s)"
    results.add(f"farm / plain blender -b FILE -a within a round, {size}", round(statistics.median(paired), 3), "",
                args.target, note="rounds: " + ", ".join(f"{ratio:.3f}" for ratio in paired))
    results.add("farm / plain, median of all farm runs over median of all plain runs",
                round(farm_seconds / plain_seconds, 3), "")
    results.add("plain blender -b FILE -a, process start to exit", round(plain_seconds, 2), "s",
                note=runs_note([run.total for run in plain_runs]))
    results.add("farm, one worker, submit to last frame done", round(farm_seconds, 2), "s",
                note=runs_note([run.total for run in farms]))

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    results.add("start, plain: process start to first render_pre", median([r.to_first_frame for r in plain_runs]),
                "s", note=runs_note([r.to_first_frame for r in plain_runs]))
    results.add("start, farm: submit to first render_pre", median([r.to_first_frame for r in farms]), "s",
                note=f"of which submit to claim {median([r.pickup or 0.0 for r in farms]):.3f} s; "
                + runs_note([r.to_first_frame for r in farms]))
    results.add("frame, plain: mean exact frame time", median([r.mean_frame for r in plain_runs]), "s",
                note=runs_note([r.mean_frame for r in plain_runs], 3))
    results.add("frame, farm: mean exact frame time", median([r.mean_frame for r in farms]), "s",
                note=runs_note([r.mean_frame for r in farms], 3))
    results.add("between frames, plain: mean render_write to next render_pre", median([r.mean_gap for r in plain_runs]),
                "s", note=runs_note([r.mean_gap for r in plain_runs], 3))
    results.add("between frames, farm: mean render_write to next render_pre", median([r.mean_gap for r in farms]),
                "s", note=runs_note([r.mean_gap for r in farms], 3))
    results.add("end, plain: last render_write to exit", median([r.tail for r in plain_runs]), "s",
                note=runs_note([r.tail for r in plain_runs], 3))
    results.add("end, farm: last render_write to done", median([r.tail for r in farms]), "s",
                note=runs_note([r.tail for r in farms], 3))
    results.add("CPU of the farm itself per farm run: coordinator and worker agent, Blender excluded",
                median(farm_cpu_runs), "s", note=runs_note(farm_cpu_runs, 3))
    results.add("farm frames with exactly plain Blender's pixels", pixels_same, f"of {args.frames}", args.frames,
                ">=", note=pixels_problem)
    results.add("load average (1 min) before, between and after the runs", round(max(loads), 2), "",
                note="max; all: " + ", ".join(f"{load:.2f}" for load in loads) + f"; {os.cpu_count()} CPUs")
    return results.finish(args.json_out)


if __name__ == "__main__":
    sys.exit(main())
