"""Devices and tags (issue 16): the worker's probe, its refusal of a device type its Blender cannot see, and tag
routing with the admin's edit, against a real coordinator, real workers and the real Blender.

No GPU here: the probe is proven with the CPU, the refusal with OPTIX, which this machine lacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from harness import ROOT, Api, find_blender_or_none, wait_for

pytestmark = pytest.mark.skipif(find_blender_or_none() is None, reason="needs Blender")


def test_probe_reports_the_cpu_and_the_engines(farm):
    farm.start_coordinator()
    worker = farm.start_worker("probed", "--device", "CPU", "--tag", "Lighting")
    described = farm.api.workers()["probed"]
    assert [d["type"] for d in described["devices"] if d["use"]] == ["CPU"]
    assert {"CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH"} <= set(described["engines"])
    assert described["tags"] == ["lighting"] and described["tags_by_admin"] is False
    output = worker.output()
    for start_line in ("devices: Cycles renders on", "engines: Cycles, EEVEE, Workbench", "tags: lighting"):
        assert start_line in output


def test_a_device_type_blender_cannot_see_is_refused_naming_the_devices_found(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "RENDERQ_TOKEN": "unused"}
    done = subprocess.run(
        [sys.executable, "-m", "renderq", "worker", "--coordinator", "http://127.0.0.1:9", "--device", "OPTIX",
         "--blender", find_blender_or_none(), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 2
    assert "--device OPTIX: Blender does not see any OPTIX device on this machine; it sees " in done.stderr
    assert "(CPU)" in done.stderr


def test_a_tagged_task_waits_for_a_worker_with_its_tags(farm, scenes):
    farm.start_coordinator()
    farm.start_worker("untagged")
    blend = scenes("tags", frames=2, resolution=(32, 18), samples=1)
    task_id = farm.api.submit(blend, 1, 2, tags=["gpu", "Lighting"])
    waiting = wait_for(lambda: farm.api.task(task_id)["waiting_reason"], 30, "the task's waiting reason")
    assert waiting == "waiting: no live worker has the tags gpu, lighting"
    assert farm.api.task(task_id)["progress"]["queued"] == 2  # the idle worker took nothing

    # Only the admin edits tags; a bad tag is a sentence.
    artist = Api(farm.url, farm.token("artist"))
    assert artist.call("POST", "/set_worker_tags", {"name": "untagged", "tags": ["gpu"]})[0] == 403
    status, answer = farm.api.call("POST", "/set_worker_tags", {"name": "untagged", "tags": ["no way"]})
    assert status == 400 and "not a usable tag" in answer["error"]
    edit = subprocess.run([sys.executable, "-m", "renderq", "worker-tags", "untagged", "gpu", "lighting",
                           *farm.cli_flags("admin")], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT}, check=False)
    assert edit.returncode == 0, edit.stderr
    assert "has the tags: gpu, lighting" in edit.stdout

    task = farm.api.wait_task_ended(task_id, 120)
    assert task["status"] == "done" and task["tags"] == ["gpu", "lighting"]
    assert {frame["worker"] for frame in task["frames"]} == {"untagged"}
    # The admin's tags outlast the worker's own: restarted with none, it keeps them.
    farm.workers.pop("untagged").stop()
    farm.start_worker("untagged")
    assert farm.api.workers()["untagged"]["tags"] == ["gpu", "lighting"]
    assert farm.api.workers()["untagged"]["tags_by_admin"] is True
