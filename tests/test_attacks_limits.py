"""Issue 12, "an artist can exhaust the coordinator's memory": each attack over real HTTP against a real coordinator
process. Oversize requests are refused with a sentence before any work and leave nothing stored; a task of 100,000
frames is read back page by page (and as a summary, and on the status page) at a bounded cost in memory.

Figures seen on a 2-core machine for the 100,000-frame task below: the coordinator's peak memory (VmHWM) grew by
about 20-35 MB over all the reads of test_a_100000_frame_task_is_read_in_pages_at_a_bounded_cost, most of it each
HTTP thread's own SQLite page cache and allocator arena warming up once (it does not grow with the task's size).
The code before the limits answered GET /task with every frame at once: its peak grew by 150 MB on that one
request (39 -> 189 MB), its task page's feed kept 66 MB more resident, and a million frames took 700 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from harness import ROOT, Farm

BLEND = b"BLENDER-v304REND" + b"\0" * 512
BIG_TASK_FRAMES = 100_000
# How much the coordinator's peak memory may grow while a 100,000-frame task is read in every way a client can.
READ_GROWTH_BOUND = 60 * 2**20


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = Farm(str(tmp_path_factory.mktemp("limits")))
    # The default limits. Four HTTP threads: each thread's first requests warm its own SQLite cache and allocator
    # arena once, which is memory per thread, not per frame; fewer threads keep that part of the figure small.
    farm.start_coordinator("--http-threads", "4")
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def blend(farm) -> str:
    status, answer = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200, answer
    return answer["sha256"]


def submit_body(blend: str, **changes) -> dict:
    return {"name": "shot", "blend_sha256": blend, "blend_filename": "shot.blend", "frame_start": 1,
            "frame_end": 10, **changes}


def stored(farm: Farm) -> tuple[list[str], list[str]]:
    """Every database row and every stored file, to show that a refused request changed nothing."""
    db = sqlite3.connect(os.path.join(farm.data_dir, "renderq.sqlite3"))
    try:
        rows = [line for line in db.iterdump() if "last_seen" not in line]
    finally:
        db.close()
    files = []
    for folder, _, names in os.walk(os.path.join(farm.data_dir, "files")):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                files.append(f"{name} {hashlib.sha256(handle.read()).hexdigest()}")
    return rows, sorted(files)


def memory(farm: Farm) -> dict[str, int]:
    """The coordinator process's VmRSS and VmHWM (peak) in bytes."""
    with open(f"/proc/{farm.coordinator.pid}/status", encoding="ascii") as handle:
        fields = dict(line.split(":", 1) for line in handle if line.startswith(("VmRSS", "VmHWM")))
    return {name: int(value.split()[0]) * 1024 for name, value in fields.items()}


def refused(farm: Farm, method: str, path: str, body: dict, status: int, *words: str) -> str:
    """Send the request; it must get `status` with a sentence holding `words`, and leave everything as it was."""
    before = stored(farm)
    answer_status, answer = farm.api.call(method, path, body)
    assert answer_status == status, (answer_status, answer)
    sentence = answer["error"]
    assert all(word in sentence for word in words), sentence
    assert stored(farm) == before
    return sentence


def test_a_million_frame_task_is_refused_before_any_work(farm, blend):
    peak = memory(farm)["VmHWM"]
    started = time.monotonic()
    refused(farm, "POST", "/submit_task", submit_body(blend, frame_end=1_000_000), 413,
            "1000000 frames", "100000", "--max-task-frames")
    # Counted from the range: no frame row was built, so the refusal is quick and costs no memory.
    assert time.monotonic() - started < 5
    assert memory(farm)["VmHWM"] - peak < 10 * 2**20
    # The step counts: 1-1,000,000 every 5th frame is still 200,000 frames.
    refused(farm, "POST", "/submit_task", submit_body(blend, frame_end=1_000_000, frame_step=5), 413,
            "200000 frames")
    # The limit is checked before the files: a task naming no uploaded file still gets the 413 first.
    refused(farm, "POST", "/submit_task", submit_body("0" * 64, frame_end=1_000_000), 413, "--max-task-frames")


def test_oversize_settings_and_missing_assets_are_refused(farm, blend):
    refused(farm, "POST", "/submit_task", submit_body(blend, settings={"notes": "x" * 70_000}), 413,
            "'settings'", "65536", "--max-settings-bytes")
    refused(farm, "POST", "/submit_task", submit_body(blend, missing_assets=[f"tex/{n}.png" for n in range(1001)]),
            413, "1001 paths", "1000", "--max-missing-assets")
    refused(farm, "POST", "/submit_task", submit_body(blend, missing_assets=["tex/" + "a" * 5000 + ".png"]), 400,
            "4096")
    refused(farm, "POST", "/submit_task", submit_body(blend, missing_assets="tex/a.png"), 400, "must be a list")
    # Just within every limit is accepted, and the settings reach the task's detail and its leases only.
    settings = {"notes": "x" * 60_000}
    missing = [f"tex/{n}.png" for n in range(1000)]
    task_id = farm.api.post("/submit_task", submit_body(blend, settings=settings, frame_end=1,
                                                        missing_assets=missing))["task_id"]
    assert farm.api.task(task_id)["settings"] == settings
    listed = next(t for t in farm.api.get("/tasks")["tasks"] if t["task_id"] == task_id)
    assert "settings" not in listed and "missing_assets" not in listed and listed["missing_assets_count"] == 1000
    farm.api.post("/cancel_task", {"task_id": task_id})


def test_an_oversize_log_chunk_is_refused_and_long_logs_are_read_in_pieces(farm, blend):
    task_id = farm.api.post("/submit_task", submit_body(blend, frame_end=1))["task_id"]
    refused(farm, "POST", "/append_log", {"task_id": task_id, "text": "x" * (2**20 + 1)}, 413,
            "1048577 bytes", "--max-log-chunk")
    # Measured in UTF-8 bytes, not characters: 600,000 two-byte characters are 1.2 MB.
    refused(farm, "POST", "/append_log", {"task_id": task_id, "text": "é" * 600_000}, 413, "1200000 bytes")
    chunks = ["é" * 400_000 + "\n", "b" * 900_000 + "\n", "ü" * 300_000 + "\n"]
    for chunk in chunks:
        farm.api.post("/append_log", {"task_id": task_id, "text": chunk})
    whole = "".join(chunks)
    size = len(whole.encode("utf-8"))
    read, offset, answers = [], 0, 0
    while offset < size:
        answer = farm.api.get(f"/get_log?task_id={task_id}&offset={offset}")
        piece = answer["text"].encode("utf-8")
        assert 0 < len(piece) <= 2**20 and answer["size"] == size
        read.append(answer["text"])
        offset = answer["next_offset"]
        answers += 1
    assert "".join(read) == whole and answers >= 3
    farm.api.post("/cancel_task", {"task_id": task_id})


def test_a_100000_frame_task_is_read_in_pages_at_a_bounded_cost(farm, blend):
    started = time.monotonic()
    task_id = farm.api.post("/submit_task", submit_body(blend, frame_end=BIG_TASK_FRAMES, name="epic"))["task_id"]
    assert time.monotonic() - started < 30
    before = memory(farm)

    first = farm.api.task(task_id)
    assert first["progress"]["total"] == first["progress"]["queued"] == BIG_TASK_FRAMES
    assert [f["frame"] for f in first["frames"]] == list(range(1, 1001)) and first["frames_next"] == 1000
    summary = farm.api.get(f"/task?task_id={task_id}&frames_limit=0")
    assert summary["frames"] == [] and summary["frames_next"] is None
    assert summary["progress"]["queued"] == BIG_TASK_FRAMES
    seen, after, pages = 0, None, 0
    while True:
        page = farm.api.get(f"/task?task_id={task_id}&frames_limit=10000"
                            + (f"&frames_after={after}" if after is not None else ""))
        assert [f["frame"] for f in page["frames"]] == list(range(seen + 1, seen + 1 + len(page["frames"])))
        seen += len(page["frames"])
        pages += 1
        after = page["frames_next"]
        if after is None:
            break
    assert seen == BIG_TASK_FRAMES and pages == 10
    status, answer = farm.api.call("GET", f"/task?task_id={task_id}&frames_limit=10001")
    assert status == 400 and "10000" in answer["error"]
    # The task list, the farm page and the task page's feed (first and last page of frames).
    assert any(t["task_id"] == task_id for t in farm.api.get("/tasks")["tasks"])
    assert str(task_id) in farm.api.get("/status/updates")["snapshot"]["tasks"]
    feed = farm.api.get(f"/status/task_updates?task_id={task_id}")["snapshot"]
    assert len(feed["frames"]) == 1000 and feed["task"]["summary"]["pages"] == 100
    last = farm.api.get(f"/status/task_updates?task_id={task_id}&page=99")["snapshot"]
    assert sorted(map(int, last["frames"])) == list(range(99_001, 100_001))
    status, _ = farm.api.call("GET", f"/download_frames_zip?task_id={task_id}")
    assert status == 404  # nothing rendered: found without reading every frame

    after_reads = memory(farm)
    growth = after_reads["VmHWM"] - before["VmRSS"]
    print(f"coordinator VmRSS {before['VmRSS'] / 2**20:.0f} MB before the reads, VmHWM "
          f"{after_reads['VmHWM'] / 2**20:.0f} MB after them")
    assert growth < READ_GROWTH_BOUND, f"reading the task grew the coordinator's memory by {growth / 2**20:.0f} MB"
    farm.api.post("/cancel_task", {"task_id": task_id})


def test_the_cli_follows_the_pages_of_a_big_task(farm, blend):
    task_id = farm.api.post("/submit_task", submit_body(blend, frame_end=12_345, frame_step=1))["task_id"]
    result = subprocess.run([sys.executable, "-m", "renderq", "status", str(task_id), "--json",
                             *farm.cli_flags()], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)
    assert [f["frame"] for f in task["frames"]] == list(range(1, 12_346))
    farm.api.post("/cancel_task", {"task_id": task_id})


def test_the_task_page_shows_a_big_task_page_by_page(farm, blend):
    browser_tests = pytest.importorskip("test_status_browser")
    if browser_tests.sync_playwright is None or browser_tests.CHROMIUM is None:
        pytest.skip("Playwright or Chromium is not installed (source scripts/setup-browser.sh to install them)")
    task_id = farm.api.post("/submit_task", submit_body(blend, frame_end=2_500, name="long shot"))["task_id"]
    with browser_tests.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser_tests.CHROMIUM,
                                              args=browser_tests.CHROMIUM_ARGS)
        page = browser_tests.Page(chromium, farm)
        try:
            page.log_in()
            page.open(f"/tasks/{task_id}")
            first_cell = "document.querySelector('#frame-grid .frame')"
            page.wait(f"document.querySelectorAll('#frame-grid .frame').length === 1000 && {first_cell}"
                      ".textContent === '1'")
            assert "page 1 of 3" in page.page.inner_text("#page-note")
            assert page.page.is_disabled("#page-prev")
            page.page.click("#page-next")
            page.wait(f"{first_cell}.textContent === '1001'")
            page.page.click("#page-next")
            page.wait(f"{first_cell}.textContent === '2001' && "
                      "document.querySelectorAll('#frame-grid .frame').length === 500")
            assert "frames 2001–2500 (page 3 of 3, 2500 frames)" in page.page.inner_text("#page-note")
            assert page.page.is_disabled("#page-next") and page.not_reloaded()
            assert page.errors == []
        finally:
            page.close()
            chromium.close()
    farm.api.post("/cancel_task", {"task_id": task_id})
