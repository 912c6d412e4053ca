"""Farm overhead: one worker renders N frames through the farm, against plain `blender -b FILE -a`.

Both sides render the same scene, frames and thread count, and both pay Blender's start-up and scene load
once. The two are timed alternately so that drift in the machine's speed hits both. Prints the figures and
exits 1 when farm / plain is above the target.

    python benchmarks/farm_overhead.py [--frames 24] [--rounds 1] [--target 1.10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import Farm  # noqa: E402

from renderq.scenes import make_scene  # noqa: E402
from worker.blender_session import find_blender  # noqa: E402


def plain_render(blender: str, blend: str, frames: int, threads: int, out_dir: str) -> float:
    """Seconds for `blender -b FILE -a` over frames 1..N, start-up included."""
    command = [blender, "-b", "-Y", blend, "-o", os.path.join(out_dir, "f_"), "-t", str(threads),
               "-s", "1", "-e", str(frames), "-a"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    rendered = [name for name in os.listdir(out_dir) if name.startswith("f_")]
    if len(rendered) != frames:
        raise SystemExit(f"plain Blender wrote {len(rendered)} frames, expected {frames}")
    return elapsed


def farm_render(farm: Farm, blend: str, frames: int) -> tuple[float, list[float]]:
    """Seconds from submit until the farm has every frame, and the exact per-frame render times."""
    sha = farm.api.upload_blend(blend)  # the upload is not part of rendering; plain Blender reads a local file
    started = time.perf_counter()
    task_id = farm.api.post("/submit_task", {"name": "overhead", "blend_sha256": sha,
                                             "blend_filename": os.path.basename(blend), "frame_start": 1,
                                             "frame_end": frames})["task_id"]
    while True:
        task = farm.api.task(task_id)
        if task["status"] in ("done", "failed", "canceled"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if task["status"] != "done":
        raise SystemExit(f"the farm task ended {task['status']}")
    return elapsed, [f["render_seconds"] for f in task["frames"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24, help="frames per render (default 24)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating farm/plain rounds (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="render threads on both sides (default 1)")
    parser.add_argument("--target", type=float, default=1.10, help="largest acceptable farm/plain ratio")
    args = parser.parse_args()

    blender = find_blender()
    with tempfile.TemporaryDirectory(prefix="renderq-overhead-") as root:
        blend = make_scene(os.path.join(root, "overhead.blend"), blender=blender, frames=args.frames)
        farm = Farm(os.path.join(root, "farm"), blender=blender)
        os.makedirs(farm.root, exist_ok=True)
        farm.start_coordinator()
        farm.start_worker("bench", threads=args.threads)
        farm_times, plain_times, frame_times = [], [], []
        try:
            for round_number in range(args.rounds):
                out_dir = tempfile.mkdtemp(dir=root)
                if round_number % 2 == 0:
                    plain_times.append(plain_render(blender, blend, args.frames, args.threads, out_dir))
                    farm_elapsed, frame_times = farm_render(farm, blend, args.frames)
                    farm_times.append(farm_elapsed)
                else:
                    farm_elapsed, frame_times = farm_render(farm, blend, args.frames)
                    farm_times.append(farm_elapsed)
                    plain_times.append(plain_render(blender, blend, args.frames, args.threads, out_dir))
        finally:
            farm.stop()

    farm_seconds = statistics.median(farm_times)
    plain_seconds = statistics.median(plain_times)
    ratio = farm_seconds / plain_seconds
    print(f"frames: {args.frames}, threads: {args.threads}, rounds: {args.rounds}")
    print(f"plain blender -b FILE -a: {plain_seconds:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in plain_times)})")
    print(f"farm, one worker:         {farm_seconds:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in farm_times)})")
    print(f"sum of exact frame times: {sum(frame_times):.2f} s  (mean {statistics.mean(frame_times):.3f} s/frame)")
    print(f"farm / plain: {ratio:.3f}  (target <= {args.target:.2f}) {'OK' if ratio <= args.target else 'MISSED'}")
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
