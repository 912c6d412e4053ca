"""The add-on in Blender 5 (the bpy module): installed from the same zip as an extension, it submits a scene that
then waits for a worker with Blender 5, since only a Blender 3.4 worker is running."""

from __future__ import annotations


import pytest

from addon_ui_scripts.addon_testing import (
    blender_env, bpy_python_or_none, build_addon_zip, farm_token, run_blender_side, script,
)
from harness import Farm, find_blender_or_none, wait_for

BPY_PYTHON = bpy_python_or_none()
BLENDER = find_blender_or_none()
pytestmark = [
    pytest.mark.skipif(BPY_PYTHON is None, reason="no Python with the bpy 5 module (scripts/test.sh makes .venv-bpy; "
                                                  "or set RENDERQ_BPY_PYTHON)"),
    pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)"),
]

FAST = ("--heartbeat", "1", "--alive-timeout", "4")


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_addon_zip(str(tmp_path_factory.mktemp("addon")))


def test_blender5_task_waits_for_a_blender5_worker(tmp_path, addon_zip: str, farm: Farm) -> None:
    farm.start_coordinator(*FAST)
    farm.start_worker("node-34")

    result, output = run_blender_side(
        [BPY_PYTHON, script("bpy5_submit.py"), "--", "--zip", addon_zip, "--url", farm.url,
         "--token", farm_token(farm), "--blend", str(tmp_path / "project" / "scene.blend"), "--name", "from-blender-5"],
        blender_env(str(tmp_path / "home")), "submitting from the bpy 5 module", timeout=300,
        log_path=str(tmp_path / "bpy5.log"),
    )
    assert result["blender"].startswith("5.0"), result
    # Installed as an extension, under Blender's extension package, not as a legacy add-on.
    assert result["module"] == "bl_ext.user_default.renderq_addon", result
    # Offline (Blender's default) the add-on refused at once and said where to allow online access.
    assert result["online_access_before"] is False, result
    assert result["refusal_offline"] and "Online access is disabled" in result["refusal_offline"], result
    assert result["online_access"] is True, result
    assert result["finished"] is True, result
    assert "Traceback" not in output, output[-3000:]
    assert result["error"] in (None, ""), (result, output[-3000:])
    task_id = result["task_id"]
    assert isinstance(task_id, int), result

    task = farm.api.task(task_id)
    assert task["name"] == "from-blender-5"
    assert task["blender_version"] == "5.0"
    assert (task["frame_start"], task["frame_end"]) == (1, 2)
    waiting = wait_for(lambda: (t := farm.api.task(task_id))["waiting_reason"] and t, 20,
                       "the task to say why it waits")
    assert waiting["waiting_reason"] == "waiting: no worker with Blender >= 5.0"

    # The 3.4 worker keeps asking for frames; give it several chances (4 s of its updates) to take one by mistake.
    seen = farm.api.workers()["node-34"]["last_seen"]
    wait_for(lambda: farm.api.workers()["node-34"]["last_seen"] >= seen + 4, 30, "four more seconds of updates")
    task = farm.api.task(task_id)
    assert task["status"] == "queued", task["status"]
    assert task["progress"]["done"] == 0 and task["progress"]["rendering"] == 0
    assert all(frame["status"] == "queued" and frame["worker"] is None for frame in task["frames"]), task["frames"]
    worker = farm.api.workers()["node-34"]
    assert worker["alive"] and worker["blender_version"].startswith("3.4")
    assert worker["current"] == [] and worker["frames_done"] == 0
