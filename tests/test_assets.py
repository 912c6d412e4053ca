"""A task carries its assets: a real project with textures outside the folder and a linked library renders on a
worker with an empty cache and no shared storage, and matches a local render; uploads are content-addressed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PIL import Image, ImageChops

from harness import ROOT, find_blender_or_none, wait_for

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

FAST = ("--heartbeat", "1", "--alive-timeout", "4")


def renderq(*args: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ROOT})


def test_task_saved_by_newer_blender_waits_with_its_reason(farm, tmp_path):
    from renderq.scenes import make_scene

    blend = make_scene(str(tmp_path / "newer.blend"), blender=BLENDER, frames=2)
    # Pretend Blender 4.5 saved it: the header alone carries the version.
    with open(blend, "r+b") as handle:
        head = handle.read(12)
        assert head.startswith(b"BLENDER-v")
        handle.seek(9)
        handle.write(b"405")
    farm.start_coordinator(*FAST)
    farm.start_worker("old")
    task_id = farm.api.submit(blend, 1, 2, name="from-the-future")
    task = wait_for(lambda: (t := farm.api.task(task_id))["waiting_reason"] and t, 30, "a waiting reason")
    assert task["waiting_reason"] == "waiting: no worker with Blender >= 4.5"
    assert task["blender_version"] == "4.5" and task["progress"]["queued"] == 2
    status = renderq("status", str(task_id), *farm.cli_flags(), cwd=str(tmp_path))
    assert "no worker with Blender >= 4.5" in status.stdout
    assert farm.api.workers()["old"]["current"] == []


def local_render(blend: str, out_dir: str, first: int, last: int) -> None:
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([BLENDER, "-b", "-Y", blend, "-o", os.path.join(out_dir, "f_"), "-t", "1", "-s", str(first),
                    "-e", str(last), "-a"], check=True, capture_output=True, timeout=300)


def same_pixels(first: str, second: str) -> bool:
    with Image.open(first) as a, Image.open(second) as b:
        return a.size == b.size and ImageChops.difference(a.convert("RGBA"), b.convert("RGBA")).getbbox() is None


def uploaded(stdout: str) -> tuple[int, int]:
    """(files uploaded, files in the task) from the submit command's report."""
    match = re.search(r"uploaded (\d+) of (\d+) files", stdout)
    assert match, stdout
    return int(match.group(1)), int(match.group(2))


def test_project_renders_without_shared_storage_and_matches_local(farm, tmp_path):
    from project import make_project

    project = make_project(str(tmp_path / "src"), BLENDER, frames=2)
    local_render(project["main"], str(tmp_path / "local"), 1, 2)
    farm.start_coordinator(*FAST)
    worker = farm.start_worker("a")  # its cache starts empty
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # shared_assets/outside.png is outside the project folder: the artist allows it.
    submitted = renderq("submit", os.path.relpath(project["main"], elsewhere), "--frames", "1-2", "--name", "proj",
                        "--allow-outside", *farm.cli_flags(), cwd=str(elsewhere))
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    assert uploaded(submitted.stdout) == (5, 5)
    # Nothing on this machine but the farm has the project now: the worker must use what was uploaded.
    hidden = tmp_path / "src-hidden"
    os.rename(tmp_path / "src", hidden)
    task = farm.api.wait_task_ended(1, 300)
    assert task["status"] == "done", task
    assert task["files_count"] == 5 and task["blender_version"] == "3.4"
    out = tmp_path / "out"
    assert renderq("download", "1", str(out), *farm.cli_flags(), cwd=str(tmp_path)).returncode == 0
    assert sorted(os.listdir(out)) == ["f_0001.png", "f_0002.png"]
    for name in ("f_0001.png", "f_0002.png"):
        assert same_pixels(out / name, tmp_path / "local" / name), f"{name} differs from the local render"
    assert "downloaded 5" in worker.output()
    os.rename(hidden, tmp_path / "src")

    # The same project again: no bytes of assets travel.
    again = renderq("submit", project["main"], "--frames", "1", "--allow-outside", *farm.cli_flags(),
                    cwd=str(elsewhere))
    assert again.returncode == 0, again.stderr
    assert uploaded(again.stdout) == (0, 5) and "(0 B)" in again.stdout

    # One texture changed: only that texture travels.
    with Image.open(project["wood"]) as image:
        changed = image.convert("RGB")
    changed.putpixel((0, 0), (255, 0, 255))
    changed.save(project["wood"])
    third = renderq("submit", project["main"], "--frames", "1", "--allow-outside", *farm.cli_flags(),
                    cwd=str(elsewhere))
    assert third.returncode == 0, third.stderr
    assert uploaded(third.stdout) == (1, 5)


def test_missing_texture_stops_the_submit_unless_allowed(farm, tmp_path):
    from project import make_project

    project = make_project(str(tmp_path / "src"), BLENDER, frames=1)
    os.remove(project["outside"])
    farm.start_coordinator(*FAST)
    refused = renderq("submit", project["main"], "--frames", "1", *farm.cli_flags(), cwd=str(tmp_path))
    assert refused.returncode == 2
    assert "outside.png" in refused.stderr and "--allow-missing" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert farm.api.get("/tasks")["tasks"] == []
    allowed = renderq("submit", project["main"], "--frames", "1", "--allow-missing", *farm.cli_flags(),
                      cwd=str(tmp_path))
    assert allowed.returncode == 0, allowed.stderr
    listed = farm.api.get("/tasks")["tasks"][0]
    assert listed["missing_assets_count"] == 1  # the list counts them; the task's detail names them
    assert any("outside.png" in path for path in farm.api.task(listed["task_id"])["missing_assets"])


def test_download_zip_and_disk_hygiene(farm, tmp_path):
    from renderq.scenes import make_scene

    blend = make_scene(str(tmp_path / "zip.blend"), blender=BLENDER, frames=2)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    task_id = farm.api.submit(blend, 1, 2, name="zipped")
    assert farm.api.wait_task_ended(task_id, 300)["status"] == "done"
    out = tmp_path / "zip"
    zipped = renderq("download", str(task_id), str(out), "--zip", *farm.cli_flags(), cwd=str(tmp_path))
    assert zipped.returncode == 0, zipped.stderr
    import zipfile

    archive = zipfile.ZipFile(next(out.glob("*.zip")))
    assert archive.namelist() == ["f_0001.png", "f_0002.png"]
    disk = renderq("disk", *farm.cli_flags("admin"), cwd=str(tmp_path))
    assert disk.returncode == 0 and "zipped" in disk.stdout
    deleted = renderq("delete-files", str(task_id), "--coordinator", farm.url, f"--token={farm.api.token}",
                      cwd=str(tmp_path))
    assert deleted.returncode == 0, deleted.stderr
    assert farm.api.task(task_id)["files_deleted"] is True
    assert farm.api.get("/disk_usage")["tasks"] == []
