"""Timed renders for the Blender benchmarks (farm_overhead, scaling, session_reuse): plain Blender runs and farm tasks,
each broken down into the same parts so the two can be compared part by part.

Both sides measure a frame the same way: from Blender's `render_pre` handler to its `render_write` handler (the file
is on disk), on Blender's monotonic clock. The farm's frame script reports exactly that; a plain run gets it from a
two-handler `--python-expr` that only prints the times, which costs nothing measurable. Wall-clock times of both
sides come from the same machine's clock, so "submit to first frame" and "process start to first frame" compare.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

# Prints one line per handler call; parsed by _read_marks. Handlers added after the file is loaded stay for -a.
_MARK = "renderq-bench-mark"
TIMING_EXPR = (
    "import bpy, time\n"
    "def _renderq_mark(kind):\n"
    "    def handler(scene, *_args):\n"
    f"        print('{_MARK}', kind, scene.frame_current, repr(time.time()), repr(time.monotonic()), flush=True)\n"
    "    return handler\n"
    "bpy.app.handlers.render_pre.append(_renderq_mark('pre'))\n"
    "bpy.app.handlers.render_write.append(_renderq_mark('write'))\n"
)


@dataclasses.dataclass
class Timeline:
    """One render of frames, plain or through the farm, split into its parts (seconds)."""

    total: float  # start (process start or submit) to the end (process exit or task done)
    to_first_frame: float  # start to the first frame's render_pre
    frame_seconds: list[float]  # each frame's render_pre -> render_write
    gaps: list[float]  # render_write of one frame -> render_pre of the next, per Blender process
    tail: float  # the last render_write -> the end
    pickup: float | None = None  # farm only: submit -> the first frame claimed

    @property
    def mean_frame(self) -> float:
        return statistics.mean(self.frame_seconds) if self.frame_seconds else float("nan")

    @property
    def mean_gap(self) -> float:
        return statistics.mean(self.gaps) if self.gaps else 0.0


def _read_marks(text: str) -> dict[int, dict[str, tuple[float, float]]]:
    """frame -> {"pre": (wall, monotonic), "write": (wall, monotonic)} from a plain run's output."""
    marks: dict[int, dict[str, tuple[float, float]]] = {}
    for line in text.splitlines():
        if line.startswith(_MARK):
            _, kind, frame, wall, monotonic = line.split()
            marks.setdefault(int(frame), {})[kind] = (float(wall), float(monotonic))
    return marks


def plain_command(blender: str, blend: str, out_prefix: str, threads: int, first: int, last: int) -> list[str]:
    """`blender -b -Y FILE -o OUT -t N --python-expr (timing handlers) -s A -e B -a`."""
    return [blender, "-b", "-Y", blend, "-o", out_prefix, "-t", str(threads), "--python-expr", TIMING_EXPR,
            "-s", str(first), "-e", str(last), "-a"]


def plain_animation(blender: str, blend: str, first: int, last: int, threads: int, out_dir: str) -> Timeline:
    """`blender -b FILE -a` over frames first..last, start-up and exit included; its frames land in out_dir."""
    command = plain_command(blender, blend, os.path.join(out_dir, "f_"), threads, first, last)
    with tempfile.TemporaryFile() as output:
        started = time.time()
        subprocess.run(command, check=True, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ended = time.time()
        output.seek(0)
        marks = _read_marks(output.read().decode("utf-8", "replace"))
    expected = list(range(first, last + 1))
    written = sorted(frame for frame, kinds in marks.items() if "write" in kinds)
    if written != expected:
        raise RuntimeError(f"plain Blender wrote frames {written}, expected {expected}")
    return _timeline(started, ended, [(marks[f]["pre"], marks[f]["write"]) for f in expected])


def plain_frame_by_frame(blender: str, blend: str, frames: list[int], threads: int,
                         out_dir: str) -> tuple[float, list[Timeline]]:
    """One Blender process per frame, one after the other, as a farm with chunks of one frame runs them: (seconds
    for all, each process's timeline). Each is `blender -b FILE -s N -e N -a`, the same render as `-f N`."""
    started = time.time()
    timelines = [plain_animation(blender, blend, frame, frame, threads, out_dir) for frame in frames]
    elapsed = time.time() - started
    rendered = [name for name in os.listdir(out_dir) if name.startswith("f_")]
    if len(rendered) != len(frames):
        raise RuntimeError(f"Blender wrote {len(rendered)} frames, expected {len(frames)}")
    return elapsed, timelines


def _timeline(started: float, ended: float, frames: list[tuple[tuple[float, float], tuple[float, float]]],
              pickup: float | None = None) -> Timeline:
    """frames: ((pre wall, pre monotonic), (write wall, write monotonic)) in render order, one Blender process."""
    frames = sorted(frames, key=lambda pair: pair[0][0])
    seconds = [write[1] - pre[1] for pre, write in frames]
    gaps = [after[0][1] - before[1][1] for before, after in itertools.pairwise(frames)]
    return Timeline(total=ended - started, to_first_frame=frames[0][0][0] - started, frame_seconds=seconds,
                    gaps=gaps, tail=ended - frames[-1][1][0], pickup=pickup)


def submit(api: Any, sha: str, filename: str, first: int, last: int, name: str) -> tuple[int, float]:
    """Submit a task of an uploaded .blend; (task id, the wall time just before the submit request)."""
    started = time.time()
    task_id = api.post("/submit_task", {"name": name, "blend_sha256": sha, "blend_filename": filename,
                                        "frame_start": first, "frame_end": last})["task_id"]
    return task_id, started


def wait_done(api: Any, task_id: int, timeout: float = 3600.0) -> dict:
    """The task once it ended; raises unless every frame is done.

    Polls the light task list (no frames) once a second: the figures use the coordinator's own record of the end,
    so polling more often would only take CPU from the renders being measured (plain Blender has no such poll).
    """
    deadline = time.monotonic() + timeout
    while True:
        summary = next((t for t in api.get("/tasks")["tasks"] if t["task_id"] == task_id), None)
        if summary is not None and summary["status"] in ("done", "failed", "canceled"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} did not end within {timeout:g} s")
        time.sleep(1.0)
    task = api.task(task_id)
    if task["status"] != "done":
        raise RuntimeError(f"the farm task ended {task['status']}")
    return task


def farm_timeline(task: dict, submitted: float) -> Timeline:
    """The farm's side: submit to the coordinator's record of the task's end, and the frames' exact times.

    Frames are grouped by worker for the gaps (one Blender per worker on one task). `ended_at` and `started_at` of
    a frame are Blender's wall clock at render_write and render_pre; `render_seconds` is the exact monotonic span.
    """
    frames = task["frames"]
    ended = float(task["ended_at"])
    by_worker: dict[str, list[dict]] = {}
    for frame in frames:
        by_worker.setdefault(frame["worker"], []).append(frame)
    gaps: list[float] = []
    for worker_frames in by_worker.values():
        ordered = sorted(worker_frames, key=lambda f: f["started_at"])
        gaps += [after["started_at"] - before["ended_at"] for before, after in itertools.pairwise(ordered)]
    first = min(float(f["started_at"]) for f in frames)
    last = max(float(f["ended_at"]) for f in frames)
    pickup = float(task["started_at"]) - submitted if task.get("started_at") else None
    return Timeline(total=ended - submitted, to_first_frame=first - submitted,
                    frame_seconds=[float(f["render_seconds"]) for f in frames], gaps=gaps, tail=ended - last,
                    pickup=pickup)


def farm_render(farm: Any, sha: str, filename: str, first: int, last: int,
                name: str = "bench") -> tuple[Timeline, dict]:
    """Submit frames first..last of an uploaded .blend and wait for them: (timeline, the ended task)."""
    task_id, submitted = submit(farm.api, sha, filename, first, last, name)
    task = wait_done(farm.api, task_id)
    return farm_timeline(task, submitted), task


def same_pixels(farm: Any, task: dict, plain_dir: str) -> tuple[int, str]:
    """How many of the task's frames have exactly the pixels of plain Blender's file of the same name in plain_dir;
    and a sentence on the first that differs (or why none could be compared)."""
    try:
        from PIL import Image
    except ImportError:
        return 0, "Pillow is not installed, so the pixels were not compared"
    import io

    same, problem = 0, ""
    for frame in task["frames"]:
        plain_path = os.path.join(plain_dir, frame["output"])
        status, data = farm.api.call("GET", f"/download_file?sha256={frame['output_sha256']}")
        if status != 200 or not os.path.isfile(plain_path):
            problem = problem or f"frame {frame['frame']}: no file to compare"
            continue
        with Image.open(io.BytesIO(data)) as farm_image, Image.open(plain_path) as plain_image:
            # The decoded pixels, every channel: a difference image's bounding box would look at alpha alone.
            if (farm_image.size, farm_image.mode) == (plain_image.size, plain_image.mode) and \
                    farm_image.tobytes() == plain_image.tobytes():
                same += 1
            else:
                problem = problem or f"frame {frame['frame']} differs from plain Blender's"
    return same, problem


def load_average() -> float:
    """The machine's one-minute load average (0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def runs_note(values: list[float], digits: int = 2) -> str:
    return "runs: " + ", ".join(f"{value:.{digits}f}" for value in values)
