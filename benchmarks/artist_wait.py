"""Artist's wait: `renderq submit FILE --wait` against plain `blender -b FILE -a`, as an artist runs them.

One real coordinator and one real worker (real Blender, one render thread) on this machine. The scene is the farm
benchmarks' Blender-made Cycles scene (about a second a frame at one thread), 12 frames, padded to about 8 MB with
a packed image of noise that nothing renders (real data both sides load). Each round runs, in alternating order,
plain `blender -b FILE -t 1 -a` and `renderq submit FILE --wait --output DIR` twice: a first submit of a file the
coordinator has never seen (each round has its own copy, with other noise, so every byte goes up), then a re-submit
of the same file (0 bytes go up). Every run is timed from the command's start to the last frame file on disk in the
folder the artist asked for (the files' modification times: the same measure both sides). The target is on the
median over the rounds of submit / plain within each round, for the first submit and for the re-submit.

Where the farm's time goes comes from the CLI's `--timings` lines and the coordinator's frame times: start-up
(the command's start to packing; reading the frame range is in it), pack (trace and hash), upload (with the
question of what the coordinator lacks, and the submit), first claim (submit to the worker's claim), Blender start
(claim to the first frame's render_pre), frames (first render_pre to last render_write), download (last
render_write to the last file on disk). The load average is shown: on a busy machine the figures are noise.

Exits 1 when a ratio is above the target; --quick renders 3 frames in one round and enforces no target.

    python benchmarks/artist_wait.py [--frames 12] [--rounds 5] [--target 1.05] [--quick] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, add_arguments, renderq_env
from harness import Farm
from renders import load_average, runs_note

from renderq.blender_path import find_blender
from renderq.scenes import make_scene

# A packed image of noise (it does not compress), kept by a fake user and used by nothing: the file's size is real
# data that Blender reads on load, the render does not change. One copy per round, each with its own noise.
_PAD_EXPR = """
import array, bpy, random, sys
args = sys.argv[sys.argv.index("--") + 1:]
side, paths = int(args[0]), args[1:]
image = bpy.data.images.new("renderq_padding", side, side, alpha=True)
image.use_fake_user = True
for seed, path in enumerate(paths):
    noise = random.Random(seed).randbytes(side * side * 4)
    image.pixels.foreach_set(array.array("f", [value / 255.0 for value in noise]))
    image.update()
    image.pack()
    bpy.ops.wm.save_as_mainfile(filepath=path, copy=True, compress=False)
"""
_TIMING_LINE = re.compile(r"^timing: (?P<step>[\w -]+?) at \+[\d.]+ s \(epoch (?P<epoch>[\d.]+)\)")
_TASK_LINE = re.compile(r"^submitted task (?P<task>\d+) ")


@dataclasses.dataclass
class Run:
    """One timed command: seconds from its start to the last frame file on disk, and what the farm's side says."""

    total: float
    parts: dict[str, float] = dataclasses.field(default_factory=dict)


def padded_scenes(root: str, blender: str, frames: int, copies: int, side: int) -> list[str]:
    """`copies` padded copies of the scene, each `shot.blend` in its own folder (their frames go to its render/)."""
    base = make_scene(os.path.join(root, "base", "shot.blend"), blender=blender, frames=frames)
    paths = [os.path.join(root, f"copy{index}", "shot.blend") for index in range(copies)]
    for path in paths:
        os.makedirs(os.path.dirname(path))
    subprocess.run([blender, "-b", "--factory-startup", "-Y", base, "--python-exit-code", "1", "--python-expr",
                    _PAD_EXPR, "--", str(side), *paths], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=600)
    return paths


def last_frame_time(folder: str, frames: int) -> float:
    """The modification time of the last of `frames` files in `folder`; raises unless there are that many."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    if len(names) != frames:
        raise RuntimeError(f"{folder} holds {len(names)} files, expected {frames} frames")
    return max(os.stat(os.path.join(folder, name)).st_mtime for name in names)


def plain_run(blender: str, blend: str, frames: int) -> Run:
    """`blender -b FILE -t 1 -a`, its frames going where the scene says (render/ beside the file)."""
    out = os.path.join(os.path.dirname(blend), "render")
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    subprocess.run([blender, "-b", blend, "-t", "1", "-a"], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return Run(last_frame_time(out, frames) - started)


def farm_run(farm: Farm, blend: str, frames: int, out: str) -> Run:
    """`renderq submit FILE --wait --output OUT --timings`, broken down from its timing lines and the task."""
    started = time.time()
    completed = subprocess.run([sys.executable, "-m", "renderq", "submit", blend, "--wait", "--output", out,
                                "--timings", *farm.cli_flags()], capture_output=True, text=True, cwd=ROOT,
                               env=renderq_env(), stdin=subprocess.DEVNULL, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"renderq submit failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    last_on_disk = last_frame_time(out, frames)
    marks = {m["step"]: float(m["epoch"]) for m in map(_TIMING_LINE.match, completed.stderr.splitlines()) if m}
    task_id = next(int(m["task"]) for m in map(_TASK_LINE.match, completed.stdout.splitlines()) if m)
    return Run(last_on_disk - started, breakdown(farm.api.task(task_id), marks, started, last_on_disk))


def breakdown(task: dict, marks: dict[str, float], started: float, last_on_disk: float) -> dict[str, float]:
    """The farm run's parts (seconds), in the order they happen; each part ends where the next begins."""
    frames = task["frames"]
    # Before the frame range was read from the packed file, Blender read it first: that was start-up's end.
    points = [("start-up", marks.get("start-up", marks.get("frame range"))), ("pack", marks.get("pack")),
              ("upload", marks.get("submit")), ("first claim", task.get("started_at")),
              ("Blender start", min(float(f["started_at"]) for f in frames)),
              ("frames", max(float(f["ended_at"]) for f in frames)), ("download", last_on_disk)]
    parts, before = {}, started
    for name, at in points:
        if at is not None:
            parts[name] = float(at) - before
            before = float(at)
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, help="frames per render (default 12; quick 3)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5; quick 1)")
    parser.add_argument("--target", type=float, default=1.05, help="largest acceptable submit/plain ratio")
    parser.add_argument("--pad-side", type=int, default=1350,
                        help="side in pixels of the packed noise image (1350: about 8 MB in all)")
    add_arguments(parser, "3 frames, 1 round")
    args = parser.parse_args()
    args.frames = args.frames or (3 if args.quick else 12)
    args.rounds = args.rounds or (1 if args.quick else 5)

    blender = find_blender()
    results = Results("artist_wait", quick=args.quick)
    runs: dict[str, list[Run]] = {"plain": [], "first": [], "again": []}
    loads = [load_average()]
    with tempfile.TemporaryDirectory(prefix="renderq-artist-") as root:
        blends = padded_scenes(root, blender, args.frames, args.rounds, args.pad_side)
        size = os.path.getsize(blends[0])
        farm = Farm(os.path.join(root, "farm"), blender=blender)
        os.makedirs(farm.root, exist_ok=True)
        farm.start_coordinator()
        farm.start_worker("bench", threads=1)
        try:
            for number, blend in enumerate(blends):
                sides = ("plain", "first", "again") if number % 2 == 0 else ("first", "again", "plain")
                for side in sides:
                    if side == "plain":
                        runs[side].append(plain_run(blender, blend, args.frames))
                    else:
                        out = os.path.join(root, f"out-{side}-{number}")
                        runs[side].append(farm_run(farm, blend, args.frames, out))
                    loads.append(load_average())
                print(f"round {number + 1}: " + ", ".join(f"{side} {runs[side][-1].total:.2f} s" for side in runs),
                      flush=True)
        finally:
            farm.stop()
    report(results, runs, args, size, loads)
    return results.finish(args.json_out)


def report(results: Results, runs: dict[str, list[Run]], args: argparse.Namespace, size: int,
           loads: list[float]) -> None:
    """The figures: the two ratios with their target, the medians, and the farm's breakdown."""
    plain = [run.total for run in runs["plain"]]
    what = f"{args.frames} frames, 1 thread, {size / 1e6:.1f} MB .blend, median of {args.rounds} round(s)"
    for side, label in (("first", "first submit"), ("again", "re-submit, 0 bytes uploaded")):
        ratios = [run.total / base for run, base in zip(runs[side], plain, strict=True)]
        results.add(f"submit --wait ({label}) / plain blender -b -a, to the last frame on disk, {what}",
                    round(statistics.median(ratios), 3), "", args.target,
                    note="rounds: " + ", ".join(f"{ratio:.3f}" for ratio in ratios))
    results.add("plain blender -b FILE -t 1 -a, start to last frame on disk", round(statistics.median(plain), 2), "s",
                note=runs_note(plain))
    for side, label in (("first", "first submit"), ("again", "re-submit")):
        totals = [run.total for run in runs[side]]
        results.add(f"renderq submit --wait, {label}, start to last frame on disk", round(statistics.median(totals), 2),
                    "s", note=runs_note(totals))
        for part in runs[side][0].parts:
            values = [run.parts.get(part, 0.0) for run in runs[side]]
            results.add(f"{label}: {part}", round(statistics.median(values), 3), "s", note=runs_note(values, 3))
    results.add("load average (1 min) before, between and after the runs", round(max(loads), 2), "",
                note="max; all: " + ", ".join(f"{load:.2f}" for load in loads) + f"; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    sys.exit(main())
