"""The Blender add-on inside a real Blender (Debian's 3.4 in CI), in background mode, against a live farm.

The add-on zip is built once per module with build_addon.py. Each Blender run installs it with the Blender-side
script tests/addon_scripts/addon_check.py into a fresh HOME (so the machine's user preferences and add-ons play no
part) and points it at a coordinator the test started. Real workers render with real Blender.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from harness import ROOT, Farm, find_blender_or_none, wait_for
from PIL import Image

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

SCRIPT = os.path.join(ROOT, "tests", "addon_scripts", "addon_check.py")
RESULT_PREFIX = "RENDERQ_RESULT "
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
BLENDER_TIMEOUT = 400


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> str:
    sys.path.insert(0, ROOT)
    try:
        import build_addon
    finally:
        sys.path.remove(ROOT)
    return str(build_addon.build(tmp_path_factory.mktemp("addon-dist")))


@pytest.fixture(scope="module")
def scene_template(tmp_path_factory) -> str:
    """A small scene (2 frames, 320x180, PNG to //render/f_), made once."""
    from renderq.scenes import make_scene

    folder = tmp_path_factory.mktemp("scene-template")
    return make_scene(str(folder / "shot.blend"), blender=BLENDER, frames=2, samples=4)


@pytest.fixture
def project(tmp_path, scene_template) -> str:
    """A fresh project folder holding a copy of the scene; returns the .blend's path."""
    folder = tmp_path / "project"
    folder.mkdir()
    target = folder / "shot.blend"
    shutil.copyfile(scene_template, target)
    return str(target)


def run_addon(tmp_path, addon_zip: str, url: str, case: str, blend: str | None = None, *extra: str,
              token: str = "", script: str = SCRIPT) -> dict:
    """Run addon_check.py (or another add-on `script` taking the same arguments) in Blender with a fresh HOME and
    the artist's token; return its result, failing with Blender's output."""
    home = tmp_path / f"home-{case}"
    home.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BLENDER_USER_", "XDG_"))}
    env["HOME"] = str(home)
    env["RENDERQ_TEST_TOKEN"] = token
    command = [BLENDER, "-b"]
    if blend:
        command.append(blend)
    command += ["-Y", "--python-exit-code", "1", "--python", script, "--",
                "--zip", addon_zip, "--url", url, "--case", case, *extra]
    completed = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               errors="replace", timeout=BLENDER_TIMEOUT, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"Blender exited {completed.returncode}:\n{output[-6000:]}"
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, f"no result line from the add-on script:\n{output[-6000:]}"
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["output"] = output
    return result


def uploaded_files(farm: Farm) -> list[str]:
    """The files in the coordinator's content store."""
    store = os.path.join(farm.data_dir, "files")
    found = []
    for folder, _dirs, names in os.walk(store):
        if os.path.basename(folder) == "incoming":
            continue
        found += names
    return found


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_submit_of_unsaved_changes_renders_what_the_artist_sees(tmp_path, addon_zip, project, farm):
    farm.start_coordinator(*FAST)
    farm.start_worker("w1")
    before = sha256_of(project)

    submitted = run_addon(tmp_path, addon_zip, farm.url, "submit", project, token=farm.token("artist"))
    task_id = submitted["task_id"]
    # The script checked inside Blender: same path, still dirty, saved file untouched, no copy left behind.
    assert submitted["listing"] == ["shot.blend", "textures"]
    assert sha256_of(project) == before
    assert f"RenderQ: Submitted task {task_id} (shot, frames 1-2" in submitted["output"]
    assert f"RenderQ: Task {task_id} (shot) is done: 2 of 2 frames rendered" in submitted["output"]

    task = farm.api.wait_task_ended(task_id, 300)
    assert task["status"] == "done", task
    assert task["main_file"] == "shot.blend"  # the copy is named after the original on the farm
    assert task["blender_version"] == ".".join(str(part) for part in submitted["blender"][:2])
    assert task["submitted_by"]
    manifest = farm.api.get(f"/task_manifest?task_id={task_id}")
    assert [entry["path"] for entry in manifest["files"]] == ["shot.blend", "textures/wood.png"]
    assert [frame["status"] for frame in task["frames"]] == ["done", "done"]
    for frame in task["frames"]:
        status, data = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame={frame['frame']}")
        assert status == 200
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            # 320x180 at the unsaved 50 %: the farm rendered the session's state, not the saved file.
            assert image.size == (160, 90)

    # A second Blender session follows the task as one of the user's, downloads its frames next to the file,
    # and tests connections.
    followed = run_addon(tmp_path, addon_zip, farm.url, "follow", project, "--task-id", str(task_id),
                         token=farm.token("artist"))
    assert followed["status"] == "done"
    render_dir = os.path.join(os.path.dirname(project), "render")
    assert sorted(os.listdir(render_dir)) == ["f_0001.png", "f_0002.png"]
    for name in os.listdir(render_dir):
        with Image.open(os.path.join(render_dir, name)) as image:
            assert image.size == (160, 90)
    assert followed["download"].startswith("Downloaded 2 frame(s)"), followed["download"]
    assert "(2 already there)" in followed["second_download"], followed["second_download"]
    ok, sentence = followed["connections"]["coordinator"]
    assert ok and "Connected to RenderQ 0.1.0" in sentence and "1 of 1 worker(s) alive" in sentence, sentence
    ok, sentence = followed["connections"]["closed"]
    assert not ok and "Cannot reach the coordinator" in sentence and "connection refused" in sentence, sentence
    ok, sentence = followed["connections"]["other"]
    assert not ok and "not a RenderQ coordinator" in sentence, sentence


def test_never_saved_file_is_refused_before_anything_is_uploaded(tmp_path, addon_zip, farm):
    farm.start_coordinator(*FAST)
    result = run_addon(tmp_path, addon_zip, farm.url, "unsaved", token=farm.token("artist"))
    assert result["error"].startswith("Save the file first"), result["error"]
    assert farm.api.get("/tasks")["tasks"] == []
    assert uploaded_files(farm) == []


def test_the_notify_url_field_submits_a_task_whose_events_reach_it(tmp_path, addon_zip, project, farm):
    from webhook_receiver import ApiWorker, Receiver

    farm.start_coordinator(*FAST, "--notify-task-urls", "any")
    receiver = Receiver().start()
    try:
        result = run_addon(tmp_path, addon_zip, farm.url, "notify", project, "--notify-url", receiver.url + "/hook",
                           token=farm.token("artist"))
        assert "must start with http:// or https://" in result["error"], result["error"]
        task_id = result["task_id"]
        assert [task["task_id"] for task in farm.api.get("/tasks")["tasks"]] == [task_id]
        worker = ApiWorker(farm, "w-notify")
        for _ in range(2):
            worker.finish(task_id)
        [event] = wait_for(lambda: receiver.events(task_id, "/hook"), 20, "the done event")
    finally:
        receiver.stop()
    assert event["json"]["event"] == "task.done" and event["json"]["name"] == "shot"


def test_missing_assets_are_reported_before_upload(tmp_path, addon_zip, project, farm):
    # A movie output is no longer refused: tests/test_video.py submits one from the add-on.
    farm.start_coordinator(*FAST)
    result = run_addon(tmp_path, addon_zip, farm.url, "refusals", project, token=farm.token("artist"))
    assert "missing" in result["missing_error"] and "Allow Missing Assets" in result["missing_error"]
    assert result["missing_listed"] == ["textures/not_there.png"]
    assert farm.api.get("/tasks")["tasks"] == []
    assert uploaded_files(farm) == []

    allowed = run_addon(tmp_path, addon_zip, farm.url, "allow_missing", project, token=farm.token("artist"))
    task = farm.api.task(allowed["task_id"])
    assert task["missing_assets"] == ["textures/not_there.png"] == allowed["missing_listed"]
    assert task["main_file"] == "shot.blend"
    assert sorted(os.listdir(os.path.dirname(project))) == ["shot.blend"]
