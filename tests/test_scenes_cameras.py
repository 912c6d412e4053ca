"""Scenes and cameras: `renderq submit --scene/--camera` for a file that holds several, and the add-on's submit of
the scene the artist is looking at, rendered by a real worker with Blender 3.4 against a real coordinator.

The frames are compared with Blender's own render of the same scene through the same camera (Workbench, whose
files carry no render times, so two renders of a frame are the same bytes); a camera's frame differs from the
default camera's. A name the file lacks is refused at submit with the names it has, before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from harness import ROOT, find_blender_or_none
from scenes import make_format_scene

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
ADDON_SCRIPT = os.path.join(ROOT, "tests", "addon_scripts", "addon_scene_check.py")
RESULT_PREFIX = "RENDERQ_RESULT "


@pytest.fixture(scope="module")
def shot(tmp_path_factory) -> str:
    """Two scenes ("Scene" seen by "Camera", "Side" by "SideCam") and a second camera "TopCam" in "Scene"; 2 frames,
    Workbench, PNG."""
    folder = tmp_path_factory.mktemp("cameras")
    return make_format_scene(str(folder / "shot.blend"), blender=BLENDER, frames=2, resolution=(96, 54),
                             engine="BLENDER_WORKBENCH", camera="TopCam", scene_name="Side")


def renderq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def local_render(blend: str, folder: str, *before_frame: str) -> dict[str, str]:
    """Blender's own render of frames 1 and 2 into `folder` (`before_frame`: options before -f, e.g. -S NAME);
    file name -> sha256."""
    completed = subprocess.run([BLENDER, "-b", blend, *before_frame, "-o", os.path.join(folder, "f_"),
                                "-f", "1", "-f", "2"], capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:]
    return hashes(folder)


def hashes(folder: str) -> dict[str, str]:
    found = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            found[name] = hashlib.sha256(handle.read()).hexdigest()
    return found


def submitted_task_id(stdout: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith("submitted task "))
    return int(line.split()[2])


@pytest.mark.timeout(600)
def test_submit_renders_the_named_scene_through_the_named_camera(farm, shot, tmp_path) -> None:
    farm.start_coordinator(*FAST)
    farm.start_worker("w1")
    default = local_render(shot, str(tmp_path / "default"))
    top = local_render(shot, str(tmp_path / "top"), "--python-expr",
                       "import bpy; bpy.context.scene.camera = bpy.data.objects['TopCam']")
    side = local_render(shot, str(tmp_path / "side"), "-S", "Side")
    assert top != default and side != default and side != top, "the cameras see the same picture"

    by_camera = renderq("submit", shot, "--camera", "TopCam", "--wait", "--output", str(tmp_path / "farm-top"),
                        *farm.cli_flags())
    assert by_camera.returncode == 0, by_camera.stderr
    assert hashes(str(tmp_path / "farm-top")) == top
    by_scene = renderq("submit", shot, "--scene", "Side", "--wait", "--output", str(tmp_path / "farm-side"),
                       *farm.cli_flags())
    assert by_scene.returncode == 0, by_scene.stderr
    assert hashes(str(tmp_path / "farm-side")) == side
    # The task says what it renders.
    assert farm.api.task(submitted_task_id(by_camera.stdout))["settings"] == {"camera": "TopCam"}
    assert farm.api.task(submitted_task_id(by_scene.stdout))["settings"] == {"scene": "Side"}


@pytest.mark.parametrize("flag, name, sentence", [
    ("--camera", "Nope", "shot.blend has no camera 'Nope'; its cameras: 'Camera', 'SideCam', 'TopCam'"),
    ("--scene", "Sid", "shot.blend has no scene 'Sid'; its scenes: 'Scene', 'Side'"),
])
def test_a_name_the_file_lacks_is_refused_with_the_names_it_has(farm, shot, flag, name, sentence) -> None:
    farm.start_coordinator()
    refused = renderq("submit", shot, flag, name, *farm.cli_flags())
    assert refused.returncode == 2, refused.stderr
    assert sentence in refused.stderr
    assert farm.api.get("/tasks")["tasks"] == []


@pytest.mark.timeout(600)
def test_the_addon_submits_the_current_scene_and_its_camera(farm, shot, tmp_path) -> None:
    sys.path.insert(0, ROOT)
    try:
        import build_addon
    finally:
        sys.path.remove(ROOT)
    addon_zip = str(build_addon.build(tmp_path / "addon-dist"))
    farm.start_coordinator(*FAST)
    farm.start_worker("w1")
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BLENDER_USER_", "XDG_"))}
    env.update(HOME=str(home), RENDERQ_TEST_TOKEN=farm.token("artist"))
    completed = subprocess.run([BLENDER, "-b", shot, "-Y", "--python-exit-code", "1", "--python", ADDON_SCRIPT, "--",
                                "--zip", addon_zip, "--url", farm.url, "--scene", "Side"],
                               env=env, capture_output=True, text=True, timeout=400, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    result = json.loads([line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)][-1]
                        [len(RESULT_PREFIX):])
    task_id = result["task_id"]
    assert farm.api.task(task_id)["settings"] == {"scene": "Side", "camera": "SideCam"}
    assert farm.api.wait_task_ended(task_id, 300)["status"] == "done"
    downloaded = renderq("download", str(task_id), str(tmp_path / "farm-side"), *farm.cli_flags())
    assert downloaded.returncode == 0, downloaded.stderr
    assert hashes(str(tmp_path / "farm-side")) == local_render(shot, str(tmp_path / "side"), "-S", "Side")


@pytest.mark.timeout(300)
def test_a_task_naming_a_scene_the_file_lacks_fails_on_the_worker_with_the_names(farm, shot) -> None:
    # Past the submit's check (the API takes any settings): the worker's Blender says what the file has.
    farm.start_coordinator(*FAST, "--frame-fail-workers", "1")
    farm.start_worker("w1")
    task_id = farm.api.submit(shot, 1, 1, settings={"scene": "Nope", "camera": "TopCam"})
    task = farm.api.wait_task_ended(task_id, 120)
    assert task["status"] == "failed", task
    assert "the file has no scene 'Nope'; its scenes: 'Scene', 'Side'" in task["frames"][0]["error"]
