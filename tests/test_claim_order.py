"""The order a task's frames are claimed in: the ordering itself, the API's `order` field and its refusal, the claims
of a real coordinator over HTTP, `renderq submit --order`, and a real worker rendering a real Blender scene in that
order."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coordinator.claim_order import claim_ranks, in_claim_order, sampled_positions
from coordinator.scheduler import Policy, Scheduler, TaskFile, TaskSpec
from coordinator.store import Store
from harness import ROOT, wait_for
from test_store_migrations import database_from
from test_addon_blender34 import BLENDER, addon_zip, project, run_addon, scene_template  # noqa: F401 - fixtures

BLEND = b"BLENDER-v304REND" + b"\0" * 64


# -- the ordering -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 17, 80, 1000])
def test_the_sampled_order_has_every_frame_once_the_ends_first(count):
    order = sampled_positions(count)
    assert sorted(order) == list(range(count))
    assert order[:2] == [0, count - 1][:count]
    ranks = claim_ranks(count)
    assert [order[rank] for rank in ranks] == list(range(count)) or count == 0
    assert claim_ranks(count, "sequential") == list(range(count))


@pytest.mark.parametrize("count", [24, 80, 240, 1000])
def test_every_prefix_of_the_sampled_order_is_spread_over_the_whole_range(count):
    order = sampled_positions(count)
    for taken in range(3, count + 1):
        spots = sorted(order[:taken])
        widest = max(b - a for a, b in zip(spots, spots[1:], strict=False))
        # Evenly spread, a gap would be (count - 1) / (taken - 1); golden-ratio steps stay within about 3 times it.
        assert widest <= 3 * (count - 1) / (taken - 1) + 1, (taken, spots)


def test_a_prefix_does_not_line_up_with_a_pattern_that_repeats_every_few_frames():
    # Halving the range over and over takes 4 of 80 frames' every-4th frames among its first 8 claims (an ETA from
    # them is 30 % too long); in this order, each of the first 10, 20, 40 and 60 claims holds every-2nd to
    # every-5th frames within about one frame of their share.
    order = sampled_positions(80)
    for period in (2, 3, 4, 5):
        for taken in (10, 20, 40, 60):
            count = sum(1 for index in order[:taken] if index % period == period - 1)
            assert abs(count - taken / period) <= 1.1, (period, taken, count)


def test_frames_in_claim_order_follow_a_step_and_refuse_an_unknown_order():
    assert in_claim_order(range(1, 10, 4)) == [1, 9, 5]
    assert in_claim_order(range(1, 10, 4), "sequential") == [1, 5, 9]
    with pytest.raises(ValueError):
        claim_ranks(3, "random")


# -- a database from before the claim order --------------------------------------------------------------------------


def test_tasks_from_before_the_claim_order_keep_claiming_lowest_number_first(tmp_path):
    path = database_from("store_main.sql", str(tmp_path / "main.sqlite3"))
    scheduler = Scheduler(Store(path), Policy())
    ranks = [(r["task_id"], r["frame"], r["claim_rank"]) for r in scheduler.store.read().execute(
        "SELECT task_id, frame, claim_rank FROM frames ORDER BY task_id, frame")]
    assert ranks and all(rank == frame for _, frame, rank in ranks)
    assert {t["task_id"]: t["order"] for t in scheduler.list_tasks()} == {1: "sequential", 2: "sequential"}
    worker = scheduler.register_worker("w", "h", "3.4.1", 2)["worker_id"]
    claimed = [scheduler.claim(worker, prefer_task_id=1)[0] for _ in range(3)]
    assert [(lease["task_id"], lease["frame"]) for lease in claimed] == [(1, 1), (1, 2), (1, 3)]


# -- the claim's plan on PostgreSQL (SQLite's is checked in test_scheduler.py) ------------------------------------


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_on_postgresql_the_claim_reads_a_tasks_first_frame_by_rank_from_the_status_index(db_engine, database):
    scheduler = Scheduler(Store(database), Policy())
    task_id = scheduler.submit_task(TaskSpec(name="plan", files=[TaskFile("shot.blend", "a" * 64, 100)],
                                             main_file="shot.blend", frame_start=1, frame_end=3000))["task_id"]
    db = scheduler.store.read()
    db.execute("ANALYZE frames")
    plan = "\n".join(row[0] for row in db.execute(
        "EXPLAIN SELECT frame FROM frames f WHERE task_id = ? AND status = 'queued' AND frame < 1048575 "
        "ORDER BY claim_rank, frame LIMIT 1", (task_id,)))
    # Walked in the index's order from its start: no sort of the task's queued frames, no scan of the table.
    assert "frames_by_status" in plan and "Sort" not in plan and "Seq Scan" not in plan, plan


# -- a real coordinator over HTTP -------------------------------------------------------------------------------------


def _fake_worker(farm, name: str) -> int:
    return farm.api.post("/register_worker", {"name": name, "host": "h", "blender_version": "3.4.1",
                                              "cpu_count": 2})["worker_id"]


def _submit(farm, frames: tuple[int, int, int], **fields) -> tuple[int, dict]:
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200, blend
    start, end, step = frames
    status, task = farm.api.call("POST", "/submit_task", {
        "name": "order", "blend_sha256": blend["sha256"], "blend_filename": "shot.blend", "frame_start": start,
        "frame_end": end, "frame_step": step, **fields})
    return status, task


def _claims(farm, worker_id: int, count: int) -> list[int]:
    """The frames a worker is handed by `count` claims, each given back unrendered as soon as it is taken."""
    frames = []
    for _ in range(count):
        lease = farm.api.get(f"/get_task?worker_id={worker_id}")["frame"]
        frames.append(lease["frame"])
        farm.api.post("/update_task", {"worker_id": worker_id, "task_id": lease["task_id"], "frame": lease["frame"],
                                       "lease_id": lease["lease_id"], "status": "rendering", "started_at": 1.0})
    return frames


@pytest.mark.both_databases
def test_a_coordinator_hands_out_a_task_in_its_order_and_refuses_an_unknown_one(farm):
    farm.start_coordinator()
    worker_id = _fake_worker(farm, "w")
    status, sampled = _submit(farm, (1, 41, 2))
    assert status == 201 and sampled["order"] == "sampled"
    assert _claims(farm, worker_id, 21) == in_claim_order(range(1, 42, 2))
    status, sequential = _submit(farm, (10, 19, 1), order="sequential")
    assert status == 201 and sequential["order"] == "sequential"
    assert _claims(farm, worker_id, 10) == list(range(10, 20))
    for bad in ("random", "", 3, None):
        status, refused = _submit(farm, (1, 3, 1), order=bad)
        assert status == 400 and refused["error"].startswith("'order' must be"), refused
        assert ("sampled, sequential" in refused["error"]) == isinstance(bad, str) and "\n" not in refused["error"]
    assert [t["task_id"] for t in farm.api.get("/tasks")["tasks"]] == [sequential["task_id"], sampled["task_id"]]


def _claim(farm, worker_id: int, ahead: bool) -> dict:
    return farm.api.post("/frames/claim", {"worker_id": worker_id, "ahead": ahead})


@pytest.mark.both_databases
def test_a_claim_ahead_leaves_a_tasks_last_frames_to_workers_that_are_free(farm):
    farm.start_coordinator()
    first, second = _fake_worker(farm, "a"), _fake_worker(farm, "b")
    _submit(farm, (1, 4, 1), order="sequential")
    assert [_claim(farm, worker, False)["frame"]["frame"] for worker in (first, second)] == [1, 2]
    # Two frames queued, one other worker holding a frame: the first worker may claim one ahead.
    assert _claim(farm, first, True)["frame"]["frame"] == 3
    # One frame queued and the first worker holds frames: the last frame waits for whoever is free first...
    refused = _claim(farm, second, True)
    assert refused["frame"] is None and "free workers" in refused["wait_reason"], refused
    # ... the second worker too, once its frame is done and it claims as a free worker.
    assert _claim(farm, second, False)["frame"]["frame"] == 4
    # Alone on a task, a worker claims ahead as before.
    _submit(farm, (1, 2, 1), order="sequential")
    lone = _fake_worker(farm, "c")
    assert [_claim(farm, lone, ahead)["frame"]["frame"] for ahead in (False, True)] == [1, 2]
    status, bad = farm.api.call("POST", "/frames/claim", {"worker_id": lone, "ahead": "yes"})
    assert status == 400 and "ahead" in bad["error"], bad


def test_renderq_submit_order_reaches_the_task_and_a_bad_one_is_refused(farm, scenes):
    farm.start_coordinator()
    blend = scenes("basic", frames=4)

    def renderq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})

    submitted = renderq("submit", blend, "--frames", "1-4", "--order", "sequential", *farm.cli_flags())
    assert submitted.returncode == 0, submitted.stderr
    shown = renderq("status", "1", *farm.cli_flags())
    assert "1-4, sequential order" in shown.stdout, shown.stdout
    assert farm.api.task(1)["order"] == "sequential"
    refused = renderq("submit", blend, "--order", "backwards", *farm.cli_flags())
    assert refused.returncode == 2 and "--order" in refused.stderr and "Traceback" not in refused.stderr


# -- real Blender -----------------------------------------------------------------------------------------------------


def test_a_worker_renders_a_real_scene_in_the_sampled_order_with_an_eta_range(farm, scenes):
    blend = scenes("basic", frames=9)
    farm.start_coordinator("--heartbeat", "1", "--alive-timeout", "4")
    farm.start_worker("a")
    task_id = farm.api.submit(blend, 1, 9, name="sampled")
    ranged = []

    def ended() -> dict | None:
        task = farm.api.task(task_id)
        progress = task["progress"]
        if progress["eta_seconds"] is not None and task["status"] == "running":
            ranged.append((progress["eta_low_seconds"], progress["eta_seconds"], progress["eta_high_seconds"]))
        return task if task["status"] in ("done", "failed", "canceled") else None

    task = wait_for(ended, 300, "the task to end")
    assert task["status"] == "done", task
    frames = sorted(task["frames"], key=lambda f: f["started_at"])
    # One worker: it starts the frames in the order it claimed them.
    assert [f["frame"] for f in frames] == in_claim_order(range(1, 10))
    assert ranged, "no poll saw an estimate while the task ran"
    assert all(low <= eta <= high for low, eta, high in ranged), ranged
    progress = task["progress"]
    assert progress["eta_seconds"] == progress["eta_low_seconds"] == progress["eta_high_seconds"] == 0


def test_the_addons_order_choice_reaches_the_farm(tmp_path, addon_zip, project, farm):  # noqa: F811 - fixtures
    if BLENDER is None:
        pytest.skip("Blender is not installed (scripts/test.sh installs it)")
    farm.start_coordinator()
    result = run_addon(tmp_path, addon_zip, farm.url, "order", project, token=farm.token("artist"))
    assert result["error"] is None and result["default"] == "sampled"
    assert "render_order" in result["drawn"]["props"]
    assert farm.api.task(result["task_id"])["order"] == "sequential"
