"""Scout frames with real Blender 3.4 workers on a two-worker farm: `renderq submit --scout` (a real CLI process
packing the real .blend) starts the task, the scouts render first and it waits, `renderq status` shows it waiting
with the estimate, `renderq approve` renders the rest, and the estimate made after the scouts is within 15 % of the
wall time the rest then takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from harness import ROOT, find_blender_or_none, wait_for

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

FAST = ("--heartbeat", "1", "--alive-timeout", "4")
# Every frame costs the same, so the scouts stand for the rest: 1.5 s slept inside Blender plus a tiny render. A
# cost the CPU's other work does not change: on a shared machine a render's own time moves by half with the load.
SCENE = {"frames": 18, "resolution": (32, 18), "samples": 1, "frame_seconds": 1.5}
SCOUTS = 4  # two rounds of the two workers, as the rest renders


def renderq(farm, *args: str) -> str:
    """Run the real `renderq` command line against the farm with the admin token; its output."""
    done = subprocess.run([sys.executable, "-m", "renderq", *args, *farm.cli_flags("admin")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_scouts_render_first_then_the_cli_approves_and_the_estimate_holds(farm, scenes):
    blend = scenes("scouts", **SCENE)
    farm.start_coordinator(*FAST)
    for name in ("w1", "w2"):
        farm.start_worker(name, "--allow-blend-python")  # the stable cost is the file's own Python
    api = farm.api
    submitted = renderq(farm, "submit", blend, "--frames", f"1-{SCENE['frames']}", "--scout", str(SCOUTS),
                        "--needs-python")
    task_id = int(re.search(r"submitted task (\d+)", submitted).group(1))
    assert f"its {SCOUTS} scout frame(s) render first" in submitted and f"renderq approve {task_id}" in submitted

    task = wait_for(lambda: (t := api.task(task_id))["status"] == "awaiting_approval" and t, 180,
                    "the scouts to render")
    scouts = sorted(f["frame"] for f in task["frames"] if f["status"] == "done")
    assert scouts == [1, 7, 12, 18]
    assert {f["status"] for f in task["frames"] if f["frame"] not in scouts} == {"held"}
    # Waiting: the workers sit idle, nothing held is handed out.
    time.sleep(3)
    task = api.task(task_id)
    assert task["progress"]["held"] == SCENE["frames"] - SCOUTS and task["progress"]["rendering"] == 0
    assert all(not w["current"] for w in api.workers().values())

    shown = renderq(farm, "status", str(task_id))
    assert "[waiting for approval]" in shown and f"renderq approve {task_id}" in shown, shown
    assert "estimate   the frames left:" in shown and "on 2 workers" in shown, shown
    estimate = api.task(task_id)["estimate"]
    assert estimate["workers"] == 2 and estimate["wall_seconds"] > 0, estimate

    said = renderq(farm, "approve", str(task_id))
    # The approval answered just now (the command's own start-up is not the farm's time); the rest took until its
    # last frame was written (the workers' clock is this machine's).
    approved_at = time.time()
    assert f"task {task_id}" in said and "is approved" in said, said
    done = api.wait_task_ended(task_id, 300)
    assert done["status"] == "done" and done["progress"]["done"] == SCENE["frames"]
    actual = max(f["ended_at"] for f in done["frames"]) - approved_at
    error = abs(estimate["wall_seconds"] - actual) / actual
    print(f"estimate {estimate['wall_seconds']:.1f} s, actual {actual:.1f} s, off by {100 * error:.1f} %")
    assert error <= 0.15, (estimate, actual)
