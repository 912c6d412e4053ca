"""The artist's path from `renderq submit` to the last frame on disk: the file traced once, its frame range read
from it, a re-submit uploading nothing, and with --wait each frame on disk as soon as it is done."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from blender_asset_tracer import trace

from harness import ROOT, find_blender_or_none
from project import make_project
from renderq.packing import pack_project, read_frame_range
from renderq.task_view import next_poll_seconds

BLENDER = find_blender_or_none()
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
_TIMING = re.compile(r"^timing: (?P<step>[\w -]+?) at \+[\d.]+ s \(epoch (?P<epoch>[\d.]+)\)(?: (?P<detail>.*))?$")


def count_traces(monkeypatch) -> list[str]:
    """Every trace BAT starts from now on (the main file of each), by wrapping BAT's own entry point."""
    traced: list[str] = []
    real_deps = trace.deps

    def counting_deps(path, *args, **kwargs):
        traced.append(os.fspath(path))
        return real_deps(path, *args, **kwargs)

    monkeypatch.setattr(trace, "deps", counting_deps)
    return traced


@needs_blender
def test_a_project_whose_paths_stay_is_traced_once(tmp_path, monkeypatch) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER, frames=3)
    # Without the texture outside the project, BAT keeps every path: a library and textures, all in place.
    os.remove(paths["outside"])
    traced = count_traces(monkeypatch)
    stages: list[str] = []

    result = pack_project(paths["main"], str(tmp_path / "staging"), progress=lambda stage, *_: stages.append(stage))

    assert result.rewritten == []
    assert {f.path for f in result.files} == {"main.blend", "textures/wood.png", "lib/prop.blend",
                                              "lib/textures/prop.png"}
    assert traced == [paths["main"]], "the project was traced more than once"
    assert "verify" not in stages
    assert read_frame_range(paths["main"]) == (1, 3, 1)


@needs_blender
def test_a_project_whose_paths_change_is_traced_again_to_prove_the_tree(tmp_path, monkeypatch) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER)
    traced = count_traces(monkeypatch)

    result = pack_project(paths["main"], str(tmp_path / "staging"))

    assert result.rewritten == ["main.blend"]
    assert len(traced) == 2 and traced[0] == paths["main"] and traced[1].endswith("/tree/main.blend")


def renderq(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run the real `renderq` command line in its own process, with `env` added to its environment."""
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **env})


def timing_marks(stderr: str) -> list[tuple[str, float, str]]:
    """The (step, epoch, detail) lines `submit --timings` printed."""
    return [(m["step"], float(m["epoch"]), m["detail"] or "") for m in map(_TIMING.match, stderr.splitlines()) if m]


@needs_blender
@pytest.mark.timeout(300)
def test_submit_wait_saves_each_frame_as_it_is_done_and_a_resubmit_uploads_nothing(farm, scenes, tmp_path) -> None:
    blend = scenes("basic", frames=4)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    first = renderq("submit", blend, *farm.cli_flags())
    assert first.returncode == 0, first.stderr + first.stdout
    assert re.search(r"uploaded 1 of 1 files \(\d", first.stdout), first.stdout
    out = tmp_path / "frames"

    # No --frames and no Blender for the command: the range comes from the file itself.
    again = renderq("submit", blend, "--wait", "--timings", "--output", str(out), *farm.cli_flags(),
                    RENDERQ_BLENDER=str(tmp_path / "no-blender-here"))

    assert again.returncode == 0, again.stderr + again.stdout
    assert "uploaded 0 of 1 files (0 B); 1 already on the coordinator" in again.stdout, again.stdout
    assert "frames 1-4" in again.stdout
    assert sorted(os.listdir(out)) == ["f_0001.png", "f_0002.png", "f_0003.png", "f_0004.png"]
    task_id = int(re.search(r"submitted task (\d+)", again.stdout)[1])
    task = farm.api.task(task_id)
    saved = [(int(detail.split()[1]), epoch) for step, epoch, detail in timing_marks(again.stderr)
             if step == "frame on disk"]
    # Each frame downloaded once: the final download only fetches what the wait had not.
    assert sorted(number for number, _ in saved) == [1, 2, 3, 4], again.stderr
    on_disk = dict(saved)
    # The first frames were on disk while later ones still rendered, not all at the end.
    last_started = max(frame["started_at"] for frame in task["frames"])
    assert min(on_disk.values()) < last_started < max(on_disk.values()), (on_disk, last_started)
    assert [step for step, _, _ in timing_marks(again.stderr)][-1] == "download"


@pytest.mark.parametrize(("progress", "seconds"), [
    ({"total": 12, "done": 11, "eta_seconds": 1.0}, 0.125),  # one-second frames: polled 8 times a frame
    ({"total": 12, "done": 2, "eta_seconds": 600.0}, 1.0),  # minute-long frames: the usual second
    ({"total": 1000, "done": 0, "eta_seconds": 10.0}, 0.1),  # a big farm's frames: never more than 10 a second
    ({"total": 12, "done": 0}, 1.0),  # no estimate yet
    ({"total": 12, "done": 12, "eta_seconds": 0.0}, 1.0),
])
def test_the_wait_polls_faster_only_while_frames_finish_often(progress: dict, seconds: float) -> None:
    assert next_poll_seconds({"progress": progress}, 1.0) == pytest.approx(seconds)
