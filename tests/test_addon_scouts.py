"""The add-on's scout frames in a real Blender 3.4 against a live farm with a real Blender worker: submit with
"Scout Frames", the panel shows the task waiting for approval with the estimate and an Approve/Cancel pair; Approve
renders the rest, Cancel ends the other task (tests/addon_scripts/addon_scouts.py drives Blender)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from harness import ROOT, find_blender_or_none
from test_addon_blender34 import addon_zip  # noqa: F401 - its fixture

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

SCRIPT = os.path.join(ROOT, "tests", "addon_scripts", "addon_scouts.py")
RESULT_PREFIX = "RENDERQ_RESULT "
FAST = ("--heartbeat", "1", "--alive-timeout", "4")


def test_the_panel_approves_and_cancels_after_the_scouts(tmp_path, addon_zip, farm, scenes):  # noqa: F811 - the fixture
    farm.start_coordinator(*FAST)
    farm.start_worker("w1")
    project = tmp_path / "project"
    project.mkdir()
    blend = str(project / "shot.blend")
    shutil.copyfile(scenes("addon-scouts", frames=3, samples=4, resolution=(64, 36)), blend)
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BLENDER_USER_", "XDG_"))}
    env.update(HOME=str(home), RENDERQ_TEST_TOKEN=farm.token("artist"))
    completed = subprocess.run(
        [BLENDER, "-b", blend, "-Y", "--python-exit-code", "1", "--python", SCRIPT, "--", "--zip", addon_zip,
         "--url", farm.url], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
        timeout=400, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, output[-6000:]
    result = json.loads(lines[-1][len(RESULT_PREFIX):])

    approved_id, status = result["approved"]
    assert status == "done"
    task = farm.api.task(approved_id)
    assert task["scout_frames"] == 1 and [f["status"] for f in task["frames"]] == ["done"] * 3
    canceled_id, status = result["canceled"]
    assert status == "canceled"
    assert [f["status"] for f in farm.api.task(canceled_id)["frames"]] == ["done", "canceled", "canceled"]

    panel = result["waiting"]["panel"]
    assert "waiting for approval" in panel["labels"], panel
    assert any(label.startswith("The frames left: ") and "on 1 worker" in label for label in panel["labels"]), panel
    assert ["renderq.approve_task", "Approve"] in panel["operators"], panel
    assert ["renderq.cancel_task", "Cancel"] in panel["operators"], panel
    assert result["waiting"]["estimate"]["workers"] == 1
    assert "its scout frames are done; approve or cancel it" in output
