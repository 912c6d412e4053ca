"""A worker's page, GET /worker and `renderq workers NAME`, against a real coordinator process.

The API and CLI test plays a worker over real HTTP (no Blender): its done frame, its failure, the frame it renders
and its log lines. The page test drives a real worker rendering real frames in Chromium (Playwright, as
test_status_browser.py does). Set RENDERQ_SCREENSHOTS=DIR to keep the page's screenshot as DIR/status-worker.png.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import find_blender_or_none, wait_for
from test_scheduler import clock, fail, full_scans, register, scheduler, statements_of, submit  # noqa: F401 - fixtures
from test_status_browser import CHROMIUM, FAST, Page, browser, shoot, sync_playwright  # noqa: F401 - the fixture

BLENDER = find_blender_or_none()

BLEND = b"BLENDER-v304REND" + b"\0" * 64
DEVICES = [{"name": "AMD EPYC", "type": "CPU", "id": "CPU", "use": True}]


def _fake_worker(farm, name: str) -> int:
    """Register `name` as a worker over HTTP, offering Cycles on a CPU with a tag."""
    answer = farm.api.post("/register_worker", {"name": name, "host": "rack-3", "blender_version": "3.4.1",
                                                "cpu_count": 8, "devices": DEVICES, "engines": ["CYCLES"],
                                                "tags": ["lighting"]})
    return answer["worker_id"]


def _report(farm, worker_id: int, lease: dict, status: str, **fields) -> dict:
    return farm.api.post("/update_task", {"worker_id": worker_id, "task_id": lease["task_id"],
                                          "frame": lease["frame"], "lease_id": lease["lease_id"], "status": status,
                                          **fields})


def _renderq(farm, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderq", *args, *farm.cli_flags("artist")], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.sqlite_only
def test_a_workers_detail_reads_its_history_by_index_not_by_scanning_the_frames(scheduler):  # noqa: F811 - the fixture
    worker = register(scheduler, "w")
    scheduler.policy.frame_fail_workers = 1
    task_id = submit(scheduler, 1, 40)
    for _ in range(2):  # a third would block it from the task
        fail(scheduler, worker, scheduler.claim(worker, prefer_task_id=task_id)[0])
    scheduler.claim(worker)
    read = statements_of(scheduler, lambda: scheduler.worker_detail("w"))
    assert any("frame_failures" in s for s in read) and any("'done'" in s for s in read)
    assert full_scans(scheduler, read) == []


@pytest.mark.both_databases
def test_a_workers_detail_over_http_and_in_the_terminal(farm):
    farm.start_coordinator()
    worker_id = _fake_worker(farm, "node-07")
    other_id = _fake_worker(farm, "node-08")
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    task_id = farm.api.post("/submit_task", {"name": "shot_020", "blend_sha256": blend["sha256"],
                                             "blend_filename": "shot.blend", "frame_start": 1,
                                             "frame_end": 3, "order": "sequential"})["task_id"]
    claim = f"/get_task?worker_id={worker_id}"
    lease = farm.api.get(claim)["frame"]
    _report(farm, worker_id, lease, "rendering", started_at=1764362000.125)
    status, _ = farm.api.call("POST", f"/upload_frame?worker_id={worker_id}&task_id={task_id}&frame=1"
                                      f"&lease_id={lease['lease_id']}&filename=f_0001.png", raw=b"pixels")
    assert status == 200
    _report(farm, worker_id, lease, "done", started_at=1764362000.125, ended_at=1764362003.5, render_seconds=3.375)
    lease = farm.api.get(claim)["frame"]
    _report(farm, worker_id, lease, "failed", error="Blender quit: out of memory")
    lease = farm.api.get(claim)["frame"]
    _report(farm, worker_id, lease, "rendering", started_at=1764362010.0)
    farm.api.post("/append_log", {"task_id": task_id, "worker_id": other_id, "text": "[node-08] not mine\n"})
    farm.api.post("/append_log", {"task_id": task_id, "worker_id": worker_id,
                                  "text": "[node-07] Fra:3 Sample 1/16\n[node-07] Fra:3 Sample 2/16\n"})

    # The artist's token reads it, as the CLI does; the page (an admin's session) reads the same answer.
    status, worker = farm.api.call("GET", "/worker?name=node-07", token=farm.token("artist"))
    assert status == 200
    assert (worker["name"], worker["host"], worker["tags"], worker["engines"]) == (
        "node-07", "rack-3", ["lighting"], ["CYCLES"])
    assert [(c["task_id"], c["frame"], c["status"]) for c in worker["current"]] == [(task_id, lease["frame"],
                                                                                    "rendering")]
    assert worker["log"] == {"task_id": task_id, "frame": lease["frame"],
                             "text": "[node-07] Fra:3 Sample 1/16\n[node-07] Fra:3 Sample 2/16\n"}
    assert [(f["frame"], f["started_at"], f["ended_at"], f["render_seconds"], f["output"], f["task_name"])
            for f in worker["recent_frames"]] == [(1, 1764362000.125, 1764362003.5, 3.375, "f_0001.png", "shot_020")]
    assert [(f["task_id"], f["frame"], f["error"]) for f in worker["failures"]] == [
        (task_id, 2, "Blender quit: out of memory")]

    assert farm.api.call("GET", "/worker?name=ghost") == (404, {"error": "no worker named 'ghost'"})
    status, refused = farm.api.call("GET", "/worker?name=node-07", token="")
    assert status == 401 and refused["error"]
    status, refused = farm.api.call("GET", "/worker?name=..")
    assert status == 400 and "'name'" in refused["error"]

    # Its page: a name is text, never markup; an unknown worker is a 404 page; without the login, the login form.
    _fake_worker(farm, "<img src=x onerror=alert(1)>")
    status, page = farm.api.call("GET", "/workers/%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert status == 200 and b"<img src=x" not in page and b"&lt;img src=x onerror=alert(1)&gt;" in page
    status, page = farm.api.call("GET", "/workers/ghost")
    assert status == 404 and b"no worker named" in page
    status, page = farm.api.call("GET", "/workers/node-07", token="")  # urllib follows the redirect
    assert status == 200 and b'id="token"' in page and b'id="worker-page"' not in page

    shown = _renderq(farm, "workers", "node-07")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "worker node-07"
    assert "  host     rack-3" in lines and "  tags     lighting" in lines
    assert any(line.startswith(f"  now      task {task_id} (shot_020) frame 3, rendering for") for line in lines)
    assert "  [node-07] Fra:3 Sample 2/16" in lines and "not mine" not in shown.stdout
    header = next(line for line in lines if line.startswith("TASK"))
    row = lines[lines.index(header) + 1]
    assert header.index("SECONDS") < row.index("3.375") + len("3.375") <= header.index("SECONDS") + len("SECONDS")
    assert ".125" in row and ".500" in row  # times to the millisecond
    assert any("Blender quit: out of memory" in line for line in lines)
    as_json = _renderq(farm, "workers", "node-07", "--json")
    assert json.loads(as_json.stdout)["failures"][0]["frame"] == 2
    missing = _renderq(farm, "workers", "ghost")
    assert missing.returncode != 0 and "no worker named 'ghost'" in missing.stderr + missing.stdout


@pytest.mark.skipif(sync_playwright is None or CHROMIUM is None, reason="Playwright or Chromium is not installed "
                    "(source scripts/setup-browser.sh to install them)")
@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_the_worker_page_follows_a_real_worker(farm, browser, scenes):  # noqa: F811 - the browser fixture
    # Open status: a viewer reads the page without the login, and may change nothing.
    farm.start_coordinator(*FAST, "--open-status", "--frame-fail-workers", "1")
    farm.start_worker("node-01", "--tag", "lighting")
    failing = farm.api.submit(scenes("fail3", frames=4, fail_frames=[3]), 1, 4, name="fx_smoke_v2")
    farm.api.wait_task_ended(failing, 300)
    task_id = farm.api.submit(scenes("basic", frames=24), 1, 24, name="shot_010_lighting")
    admin = Page(browser, farm, width=1440, height=1000)
    viewer = Page(browser, farm)
    try:
        admin.page.goto(farm.url + "/login?next=/workers/node-01")
        admin.page.fill("#token", farm.api.token)
        admin.page.click("button[type=submit]")
        admin.page.wait_for_url(farm.url + "/workers/node-01")
        admin.page.evaluate("window.__sameDocument = true")
        # What it offers, its latest frames with their exact times, and the failure with its error.
        admin.wait("document.getElementById('worker-engines').textContent.includes('Cycles')")
        assert admin.page.locator("#worker-devices li").count() >= 1
        assert admin.page.input_value('[aria-label="Tags of node-01"]') == "lighting"
        admin.wait("document.querySelectorAll('#failure-rows tr').length === 1")
        failure = admin.page.inner_text("#failure-rows tr")
        assert "fx_smoke_v2" in failure and "3" in failure
        # The frame it renders now, and its log lines moving.
        admin.wait("document.getElementById('worker-current').textContent.includes('shot_010_lighting')", timeout=120)
        admin.wait("document.getElementById('log').textContent.includes('[node-01] ')", timeout=60)
        first_log = admin.page.inner_text("#log")
        admin.wait("text => document.getElementById('log').textContent !== text", first_log, timeout=60)
        admin.wait("document.querySelectorAll('#frame-rows tr').length >= 4", timeout=120)
        row = admin.page.inner_text("#frame-rows tr")
        assert "shot_010_lighting" in row and " s" in row and row.count(".") >= 3  # times to the millisecond
        # The tags: an admin sets them here.
        admin.page.fill('[aria-label="Tags of node-01"]', "gpu, lighting")
        admin.page.click("#worker-tags button[type=submit]")
        wait_for(lambda: farm.api.workers()["node-01"]["tags"] == ["gpu", "lighting"], 10, "the admin's tags")
        assert farm.api.workers()["node-01"]["tags_by_admin"] is True
        admin.page.evaluate("document.getElementById('toast').hidden = true")
        shoot(admin, "status-worker.png")

        # A viewer sees the page but has no tags form, a disabled switch, and is refused if it posts anyway.
        viewer.open("/workers/node-01")
        viewer.wait("document.getElementById('worker-tags').textContent.includes('gpu, lighting')")
        assert viewer.page.locator("#worker-tags form").count() == 0
        assert viewer.page.is_disabled('[aria-label="Worker node-01"]')
        refused = viewer.page.evaluate("""async () => {
            const answer = await fetch('/set_worker_tags', {
                method: 'POST', headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({name: 'node-01', tags: ['stolen']})});
            return answer.status; }""")
        assert refused in (401, 403)
        assert farm.api.workers()["node-01"]["tags"] == ["gpu", "lighting"]

        # The ON/OFF switch: OFF takes no more frames, and the page says so.
        admin.page.click('[aria-label="Worker node-01"]')
        admin.wait("document.querySelector('[aria-label=\"Worker node-01\"]').getAttribute('aria-checked') === 'false'")
        assert farm.api.workers()["node-01"]["enabled"] is False
        admin.wait("document.getElementById('worker-current').textContent.includes('Switched OFF')", timeout=120)
        admin.page.click('[aria-label="Worker node-01"]')
        wait_for(lambda: farm.api.workers()["node-01"]["enabled"] is True, 10, "the worker to be ON again")
        assert admin.not_reloaded()
        assert admin.errors == [] and viewer.errors == [] and admin.dialogs == []
        assert farm.api.call("GET", f"/task?task_id={task_id}")[0] == 200
    finally:
        admin.close()
        viewer.close()
