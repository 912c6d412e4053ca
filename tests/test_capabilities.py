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
    listed = subprocess.run([sys.executable, "-m", "renderq", "workers", *farm.cli_flags()], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("probed"))
    assert "(CPU)" in row and "Cycles, EEVEE, Workbench" in row and row.rstrip().endswith("lighting")


@pytest.mark.both_databases
def test_sessions_enable_the_devices_and_a_gpu_task_waits_for_a_gpu(farm, scenes):
    farm.start_coordinator()
    farm.start_worker("cpu-only", "--device", "CPU")
    blend = scenes("devices", frames=1, resolution=(32, 18), samples=1)
    gpu_task = farm.api.submit(blend, 1, 1, device="GPU", render_engine="CYCLES")
    reason = wait_for(lambda: farm.api.task(gpu_task)["waiting_reason"], 30, "the GPU task's waiting reason")
    assert reason == "waiting: the task asks for GPU rendering and no live worker renders Cycles on a GPU"
    cpu_task = farm.api.submit(blend, 1, 1, device="CPU", render_engine="CYCLES")
    assert farm.api.wait_task_ended(cpu_task, 120)["status"] == "done"
    log = farm.api.get(f"/get_log?task_id={cpu_task}&offset=0")["text"]
    cpu_name = farm.api.workers()["cpu-only"]["devices"][0]["name"]
    assert f"renderq: Cycles renders on {cpu_name}" in log
    assert farm.api.task(gpu_task)["progress"]["queued"] == 1
    status, answer = farm.api.call("POST", "/submit_task", {"blend_sha256": "0" * 64, "frame_start": 1,
                                                            "frame_end": 1, "device": "TPU"})
    assert status == 400 and "device" in answer["error"]


def test_a_device_type_blender_cannot_see_is_refused_naming_the_devices_found(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "RENDERQ_TOKEN": "unused"}
    done = subprocess.run(
        [sys.executable, "-m", "renderq", "worker", "--coordinator", "http://127.0.0.1:9", "--device", "OPTIX",
         "--blender", find_blender_or_none(), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 2
    assert "--device OPTIX: Blender does not see any OPTIX device on this machine; it sees " in done.stderr
    assert "(CPU)" in done.stderr


@pytest.mark.both_databases
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


def test_the_page_shows_what_workers_offer_and_an_admin_sets_their_tags(farm):
    from test_status_browser import CHROMIUM, CHROMIUM_ARGS, Page, sync_playwright

    if sync_playwright is None or CHROMIUM is None:
        pytest.skip("needs Playwright and Chromium (scripts/setup-browser.sh)")
    farm.start_coordinator()
    worker = Api(farm.url, farm.token("worker"))
    worker.post("/register_worker", {"name": "gpu-node", "blender_version": "3.4.1", "tags": ["lighting"],
                                     "engines": ["CYCLES", "BLENDER_EEVEE"], "gpu": True,
                                     "devices": [{"name": "RTX 4090", "type": "OPTIX", "id": "o0", "use": True},
                                                 {"name": "EPYC", "type": "CPU", "id": "CPU", "use": False}]})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = Page(browser, farm)
        try:
            page.log_in()
            page.open("/")
            row = 'tr[data-worker-id] '
            page.page.wait_for_selector(row + ".tags-form input")
            offers = page.page.inner_text(row + "td:nth-child(6)")
            assert "Cycles, EEVEE" in offers and "RTX 4090 (OPTIX)" in offers
            assert page.page.input_value(row + ".tags-form input") == "lighting"
            page.page.fill(row + ".tags-form input", "gpu, Lighting")
            page.page.click(row + ".tags-form button")
            wait_for(lambda: farm.api.workers()["gpu-node"]["tags"] == ["gpu", "lighting"], 15, "the admin's tags")
            assert farm.api.workers()["gpu-node"]["tags_by_admin"] is True
            assert page.errors == []
        finally:
            page.close()
            browser.close()


@pytest.mark.parametrize("where", ["blender34", "bpy5"])
def test_the_addon_submits_the_tags_device_and_engine(farm, tmp_path, where):
    from addon_ui_scripts.addon_testing import (
        blender_env, bpy_python_or_none, build_addon_zip, farm_token, run_blender_side, script,
    )

    python = bpy_python_or_none() if where == "bpy5" else None
    if where == "bpy5" and python is None:
        pytest.skip("no Python with the bpy 5 module")
    farm.start_coordinator()
    addon_zip = build_addon_zip(str(tmp_path / "addon"))
    side = [script("submit_requirements.py"), "--", "--zip", addon_zip, "--url", farm.url,
            "--token", farm_token(farm), "--blend", str(tmp_path / "project" / "scene.blend")]
    command = [python, *side] if python else [find_blender_or_none(), "-b", "-Y", "--python-exit-code", "1",
                                              "--python", *side]
    result, output = run_blender_side(command, blender_env(str(tmp_path / "home")), "the add-on's submit",
                                      timeout=300)
    assert result["finished"] is True and result["error"] in (None, ""), (result, output[-3000:])
    task = farm.api.task(result["task_id"])
    assert task["tags"] == ["gpu", "lighting"] and task["device"] == "CPU"
    assert task["render_engine"] == result["engine"]
    assert result["refusal"] and "is not a usable tag" in result["refusal"], result


def test_the_cli_submits_the_tags_device_and_the_engine_read_from_the_file(farm, scenes, tmp_path):
    from scenes import with_engine

    farm.start_coordinator()
    blend = with_engine(scenes("cli-engine", frames=1, resolution=(32, 18), samples=1), "BLENDER_WORKBENCH",
                        str(tmp_path / "workbench.blend"), find_blender_or_none())
    done = subprocess.run([sys.executable, "-m", "renderq", "submit", blend, "--tag", "Comp,lighting", "--tag", "gpu",
                           "--device", "gpu", *farm.cli_flags()], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    task = farm.api.get("/tasks")["tasks"][0]
    assert task["tags"] == ["comp", "gpu", "lighting"] and task["device"] == "GPU"
    assert task["render_engine"] == "BLENDER_WORKBENCH"
    status = subprocess.run([sys.executable, "-m", "renderq", "status", str(task["task_id"]), *farm.cli_flags()],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            timeout=60, check=False)
    assert "needs      engine Workbench; device GPU; tags comp, gpu, lighting" in status.stdout, status.stdout
    bad = subprocess.run([sys.executable, "-m", "renderq", "submit", blend, "--tag", "a/b", *farm.cli_flags()],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                         timeout=60, check=False)
    assert bad.returncode == 2 and "'a/b' is not a usable tag" in bad.stderr


def test_the_vocabulary_of_engines_devices_and_tags():
    from renderq.capabilities import ALL_ENGINES, GPU_BIT, parse_tags, task_needs, worker_offers

    assert parse_tags(["GPU, lighting", "gpu comp"]) == ["comp", "gpu", "lighting"]
    for bad in ("-x", "a/b", "x" * 33, "é"):
        with pytest.raises(ValueError, match="is not a usable tag"):
            parse_tags([bad])
    with pytest.raises(ValueError, match="more than the 32"):
        parse_tags([f"t{i}" for i in range(33)])
    eevee_on_gpu = task_needs("BLENDER_EEVEE_NEXT", "GPU")
    assert eevee_on_gpu == task_needs("BLENDER_EEVEE", "") | GPU_BIT
    assert task_needs("LUXCORE", "") == 0  # an add-on's engine does not limit the workers
    offers = worker_offers(["CYCLES", "BLENDER_EEVEE"], has_gpu=True)
    assert offers & eevee_on_gpu == eevee_on_gpu
    assert worker_offers(["CYCLES"], has_gpu=False) & eevee_on_gpu != eevee_on_gpu
    assert worker_offers(None, has_gpu=False) == ALL_ENGINES  # a worker that did not probe keeps every engine


def test_another_site_cannot_set_a_workers_tags_with_the_admins_login(farm):
    import json

    from test_attacks_web import csrf_of, log_in, send

    farm.start_coordinator()
    Api(farm.url, farm.token("worker")).post("/register_worker", {"name": "node", "tags": ["own"]})
    cookie, _ = log_in(farm)
    csrf = csrf_of(farm, cookie)
    body = json.dumps({"name": "node", "tags": ["stolen"]})
    json_type = {"Content-Type": "application/json", "Cookie": cookie}
    for headers in ({**json_type, "Origin": farm.url},  # no CSRF token
                    {**json_type, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
                    {**json_type, "X-CSRF-Token": "0" * len(csrf), "Origin": farm.url}):
        status, _, answer = send(farm, "POST", "/set_worker_tags", body, headers)
        assert status in (400, 403), (headers, status, answer)
        assert json.loads(answer)["error"]
    assert farm.api.workers()["node"]["tags"] == ["own"]
    status, _, _ = send(farm, "POST", "/set_worker_tags", body, {**json_type, "X-CSRF-Token": csrf, "Origin": farm.url})
    assert status == 200 and farm.api.workers()["node"]["tags"] == ["stolen"]


BPY5_DEVICES_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
import bpy  # noqa: F401 - Blender 5's Cycles preferences come with it
import blender_devices
seen = blender_devices.seen_devices()
print("RESULT " + json.dumps({"seen": seen, "enabled": blender_devices.enable_devices("CPU"),
                              "type": blender_devices.compute_device_type()}), flush=True)
"""


def test_the_devices_are_seen_and_enabled_in_blender_5():
    """What the probe and the frame script do with Cycles' devices, in the bpy 5 module (no GPU here: the CPU)."""
    import json

    from addon_ui_scripts.addon_testing import bpy_python_or_none

    bpy_python = bpy_python_or_none()
    if bpy_python is None:
        pytest.skip("no Python with the bpy 5 module (scripts/test.sh makes .venv-bpy)")
    completed = subprocess.run([bpy_python, "-c", BPY5_DEVICES_CHECK, os.path.join(ROOT, "worker")],
                               capture_output=True, text=True, timeout=300)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert any(device["type"] == "CPU" for device in result["seen"]), result
    assert [device["type"] for device in result["enabled"]] == ["CPU"], result
