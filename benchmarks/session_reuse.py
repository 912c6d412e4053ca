"""Session reuse: RenderQ's one Blender per task against a new Blender for every frame (what a chunk size of one
costs), on a scene that takes longer to load than to render a frame.

The scene is made by Blender: the benchmarks' Cycles scene at a small size and few samples (a frame of a few tenths
of a second), with a large mesh kept in the file by a fake user, so the file is heavy to load but the mesh is never
rendered. The two sides:

- RenderQ: one worker (`--threads 1`) renders the task's frames in one Blender process, timed from the submit
  request to the coordinator's record of the last frame done (the first run includes the worker's download of the
  file; later runs find it in the worker's cache, as on a farm);
- one Blender per frame: `blender -b FILE -s N -e N -a` (the same render as `-f N`) for each frame, one after the
  other, with no farm around it at all, which favours this side.

`blender -b FILE -a` over all frames is timed as well, for reference. Runs alternate between rounds. Each
per-frame process is also split into its start and load (process start to `render_pre`) and its frame
(`render_pre` to `render_write`), which shows the premise: loading takes longer than a frame.

Exits 1 when RenderQ is not faster; --quick renders 3 frames of a lighter file in one round and enforces nothing.

    python benchmarks/session_reuse.py [--frames 12] [--rounds 2] [--mesh-size 400] [--quick] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, add_arguments
from harness import Farm
from renders import farm_render, load_average, plain_animation, plain_frame_by_frame, runs_note

from renderq.scenes import make_scene
from worker.blender_session import find_blender

# Adds a grid mesh of N x N faces that no object uses, kept by a fake user: loaded with the file, never rendered.
HEAVY_EXPR = """\
import bpy, sys
size = int(sys.argv[sys.argv.index("--") + 1])
bpy.ops.mesh.primitive_grid_add(x_subdivisions=size, y_subdivisions=size, size=2)
grid = bpy.context.active_object
grid.data.name = "renderq_load_weight"
grid.data.use_fake_user = True
bpy.data.objects.remove(grid, do_unlink=True)
bpy.ops.wm.save_mainfile(compress=False)
"""


def make_heavy_scene(path: str, blender: str, frames: int, mesh_size: int) -> str:
    """The small, cheap-to-render scene with a mesh of mesh_size^2 faces that only weighs on the load."""
    make_scene(path, blender=blender, frames=frames, resolution=(160, 90), samples=4)
    if mesh_size > 0:
        subprocess.run([blender, "-b", "--factory-startup", "-Y", path, "--python-exit-code", "1",
                        "--python-expr", HEAVY_EXPR, "--", str(mesh_size)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, help="frames of the task (default 12; quick 3)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 2; quick 1)")
    parser.add_argument("--mesh-size", type=int, help="faces per side of the unused mesh that makes the file heavy "
                        "(default 400, about 20 MB; quick 100)")
    parser.add_argument("--target", type=float, default=1.0,
                        help="smallest acceptable speed-up of RenderQ over one Blender per frame (default 1: faster)")
    add_arguments(parser, "3 frames, a lighter file, 1 round")
    args = parser.parse_args()
    args.frames = args.frames or (3 if args.quick else 12)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.mesh_size = args.mesh_size if args.mesh_size is not None else (100 if args.quick else 400)

    blender = find_blender()
    results = Results("session_reuse", quick=args.quick)
    farm_runs, per_frame_runs, animation_runs, loads = [], [], [], [load_average()]
    with tempfile.TemporaryDirectory(prefix="renderq-reuse-") as root:
        blend = make_heavy_scene(os.path.join(root, "reuse.blend"), blender, args.frames, args.mesh_size)
        file_mb = os.path.getsize(blend) / 1_000_000
        farm = Farm(os.path.join(root, "farm"), blender=blender)
        os.makedirs(farm.root, exist_ok=True)
        farm.start_coordinator()
        farm.start_worker("bench", threads=1)
        frames = list(range(1, args.frames + 1))
        try:
            sha = farm.api.upload_blend(blend)
            for round_number in range(args.rounds):
                sides = ("per_frame", "farm", "animation")
                for side in sides if round_number % 2 == 0 else sides[::-1]:
                    out_dir = tempfile.mkdtemp(dir=root)
                    if side == "farm":
                        timeline, _ = farm_render(farm, sha, os.path.basename(blend), 1, args.frames,
                                                  f"reuse-{round_number}")
                        farm_runs.append(timeline)
                    elif side == "per_frame":
                        per_frame_runs.append(plain_frame_by_frame(blender, blend, frames, 1, out_dir))
                    else:
                        animation_runs.append(plain_animation(blender, blend, 1, args.frames, 1, out_dir))
                    loads.append(load_average())
        finally:
            farm.stop()

    farm_seconds = statistics.median(run.total for run in farm_runs)
    per_frame_seconds = statistics.median(total for total, _ in per_frame_runs)
    processes = [timeline for _, timelines in per_frame_runs for timeline in timelines]
    load_seconds = statistics.median(timeline.to_first_frame for timeline in processes)
    frame_seconds = statistics.median(timeline.frame_seconds[0] for timeline in processes)
    results.add(f"speed-up of RenderQ (one Blender per task) over one Blender per frame, {args.frames} frames, "
                f"median of {args.rounds} round(s)", round(per_frame_seconds / farm_seconds, 3), "x", args.target,
                ">=", note=f"RenderQ takes {farm_seconds / per_frame_seconds:.3f} of the time")
    results.add("RenderQ, one worker, submit to last frame done", round(farm_seconds, 2), "s",
                note=runs_note([run.total for run in farm_runs]))
    results.add("one Blender per frame, one after the other", round(per_frame_seconds, 2), "s",
                note=runs_note([total for total, _ in per_frame_runs]))
    results.add("for reference: one blender -b FILE -a", round(statistics.median(r.total for r in animation_runs), 2),
                "s", note=runs_note([run.total for run in animation_runs]))
    results.add("one Blender per frame: start and load (process start to render_pre)", round(load_seconds, 3), "s",
                note=f"median of {len(processes)} processes; the file is {file_mb:.1f} MB")
    results.add("one Blender per frame: the frame (render_pre to render_write)", round(frame_seconds, 3), "s",
                note=f"load / frame = {load_seconds / frame_seconds:.1f}")
    results.add("RenderQ: mean exact frame time in its one Blender",
                round(statistics.median(run.mean_frame for run in farm_runs), 3), "s",
                note=runs_note([run.mean_frame for run in farm_runs], 3))
    results.add("load average (1 min) before, between and after the runs", round(max(loads), 2), "",
                note="max; all: " + ", ".join(f"{load:.2f}" for load in loads) + f"; {os.cpu_count()} CPUs")
    return results.finish(args.json_out)


if __name__ == "__main__":
    sys.exit(main())
