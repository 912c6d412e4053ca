"""Scout frames and the estimate, against a real coordinator over HTTP: the scouts are the only frames handed out,
the task waits for approval once they are done, approve and cancel (and who may), a restart keeps it all, and the
estimate of the frames left prices the farm as it is. Workers here are plain HTTP clients with chosen frame times;
tests/test_scouts_blender.py renders with real Blender. The flows run on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import ROOT, Api, wait_for

FAST = ("--heartbeat", "1", "--alive-timeout", "30")
PRICES = ("--cost-per-worker-hour", "36", "--cost-currency", "EUR", "--watts-per-worker", "360")
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a73000000164944415478da63f8cfc0f09f81e13f03c3"
    "7f060600437a07f9b9c0b4a40000000049454e44ae426082")


def register(api: Api, name: str) -> int:
    return api.post("/register_worker", {"name": name, "blender_version": "3.4.1"})["worker_id"]


def claim(api: Api, worker_id: int) -> dict | None:
    return api.post("/frames/claim", {"worker_id": worker_id})["frame"]


def finish(api: Api, worker_id: int, frame: dict, started_at: float, seconds: float) -> None:
    query = (f"/frames/finish?worker_id={worker_id}&task_id={frame['task_id']}&frame={frame['frame']}"
             f"&lease_id={frame['lease_id']}&filename=f_{frame['frame']:04d}.png&started_at={started_at}"
             f"&ended_at={started_at + seconds}&render_seconds={seconds}")
    status, answer = api.call("POST", query, raw=PNG_1PX, content_type="application/octet-stream")
    assert status == 200, answer


def blend(tmp_path) -> str:
    path = tmp_path / "tiny.blend"
    path.write_bytes(b"BLENDER-v304REND" + b"\0" * 64)
    return str(path)


def render_scouts(api: Api, worker_id: int, seconds: float = 10.0) -> list[int]:
    """Claim and finish every frame the worker is given, back to back on its clock (1 s between frames)."""
    rendered, clock = [], 1000.0
    while (frame := claim(api, worker_id)) is not None:
        finish(api, worker_id, frame, clock, seconds)
        rendered.append(frame["frame"])
        clock += seconds + 1.0
    return rendered


def test_a_scout_count_that_makes_no_sense_is_refused_with_a_sentence(farm, tmp_path):
    farm.start_coordinator(*FAST)
    api, path = farm.api, blend(tmp_path)
    sha = api.upload_blend(path)
    body = {"blend_sha256": sha, "blend_filename": "tiny.blend", "frame_start": 1, "frame_end": 10}
    for scouts, words in ((10, "may have 1 to 9 scout frames, not 10"), (11, "not 11"), (0, "scout_frames")):
        status, answer = api.call("POST", "/submit_task", {**body, "scout_frames": scouts})
        assert status == 400 and words in answer["error"], answer
    status, answer = api.call("POST", "/submit_task", {**body, "frame_end": 1, "scout_frames": 1})
    assert status == 400 and "a task of 1 frames may have 1 to 0" in answer["error"], answer
    assert api.get("/tasks")["tasks"] == []  # nothing stored


@pytest.mark.both_databases
def test_scouts_render_first_the_rest_is_held_until_approved(farm, tmp_path):
    farm.start_coordinator(*FAST, *PRICES)
    api = farm.api
    task_id = api.submit(blend(tmp_path), 1, 10, scout_frames=3)
    task = api.task(task_id)
    assert task["scout_frames"] == 3 and task["progress"]["held"] == 7 and task["progress"]["queued"] == 3
    assert [f["frame"] for f in task["frames"] if f["status"] == "queued"] == [1, 5, 10]

    first = register(api, "first")
    # The held frames are never handed out; the scouts go in the task's render order (sampled: the ends first).
    assert render_scouts(api, first) == [1, 10, 5]
    task = api.task(task_id)
    assert task["status"] == "awaiting_approval" and task["progress"]["eta_seconds"] is None
    assert {f["status"] for f in task["frames"] if f["frame"] not in (1, 5, 10)} == {"held"}
    # 7 frames of 10 s, 1 s apart, on the one worker that may take them: 77 s, 70 render seconds, priced.
    estimate = task["estimate"]
    assert estimate["workers"] == 1 and estimate["wall_seconds"] == pytest.approx(77, rel=0.1), estimate
    assert estimate["render_hours"] == pytest.approx(70 / 3600, rel=0.05)
    assert estimate["cost"] == pytest.approx(0.7, abs=0.02) and estimate["currency"] == "EUR"
    assert estimate["energy_kwh"] == pytest.approx(0.007, abs=0.001)
    # A second worker halves the frames each must render: the estimate follows the farm.
    second = register(api, "second")
    assert claim(api, second) is None
    estimate = api.task(task_id)["estimate"]
    assert estimate["workers"] == 2 and estimate["wall_seconds"] == pytest.approx(44, rel=0.1), estimate

    # Another artist's token may not approve it; the owner (here the admin) may, once.
    status, answer = api.call("POST", "/approve_task", {"task_id": task_id}, token=farm.token("artist"))
    assert status == 403 and "an artist may approve only their own tasks" in answer["error"]
    approved = api.post("/approve_task", {"task_id": task_id})
    assert approved["status"] == "running" and approved["progress"]["queued"] == 7
    status, answer = api.call("POST", "/approve_task", {"task_id": task_id})
    assert status == 409 and answer["error"].startswith(f"task {task_id} is not waiting for approval (running)")
    assert sorted(render_scouts(api, first) + render_scouts(api, second)) == [2, 3, 4, 6, 7, 8, 9]
    done = api.task(task_id)
    assert done["status"] == "done" and done["progress"]["done"] == 10 and done["estimate"] is None


@pytest.mark.both_databases
def test_a_task_waiting_for_approval_outlives_a_restart_and_cancels(farm, tmp_path):
    farm.start_coordinator(*FAST)
    api = farm.api
    task_id = api.submit(blend(tmp_path), 1, 6, scout_frames=2)
    worker = register(api, "w")
    assert render_scouts(api, worker) == [1, 6]
    assert api.task(task_id)["status"] == "awaiting_approval"

    farm.coordinator.stop()
    farm.start_coordinator(*FAST)
    task = api.task(task_id)
    assert task["status"] == "awaiting_approval" and task["progress"]["held"] == 4
    worker = register(api, "w")
    assert claim(api, worker) is None

    # The real command line cancels it, with the admin token.
    said = subprocess.run([sys.executable, "-m", "renderq", "cancel", str(task_id), *farm.cli_flags("admin")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and f"task {task_id}" in said.stdout and "is canceled" in said.stdout, said
    canceled = api.task(task_id)
    assert canceled["status"] == "canceled" and canceled["progress"]["canceled"] == 4
    assert canceled["progress"]["held"] == 0 and canceled["progress"]["done"] == 2
    status, answer = api.call("POST", "/approve_task", {"task_id": task_id})
    assert status == 409 and "(canceled)" in answer["error"]


def test_a_scout_that_fails_for_good_still_brings_the_task_to_approval(farm, tmp_path):
    farm.start_coordinator(*FAST, "--frame-fail-workers", "1")
    api = farm.api
    task_id = api.submit(blend(tmp_path), 1, 4, scout_frames=2)
    worker = register(api, "w")
    frame = claim(api, worker)
    status, answer = api.call("POST", "/update_task", {
        "worker_id": worker, "task_id": task_id, "frame": frame["frame"], "lease_id": frame["lease_id"],
        "status": "failed", "error": "Blender crashed"})
    assert status == 200, answer
    assert render_scouts(api, worker) == [4]
    task = wait_for(lambda: (t := api.task(task_id))["status"] == "awaiting_approval" and t, 5, "approval")
    assert task["progress"]["failed"] == 1 and task["progress"]["held"] == 2


def test_the_frames_left_are_dealt_as_workers_take_them():
    """coordinator.estimate alone: 10 s frames, 1 s between a worker's frames, on workers 1 (seen at that pace)
    and 2 (new to the task: the average)."""
    from coordinator import estimate, eta

    done = [eta.DoneFrame(frame, 10.0, 1, 100.0 + 11 * i, 110.0 + 11 * i) for i, frame in enumerate(range(1, 9))]
    model = eta.CostModel(done)
    left = estimate.Left(*estimate.mean_cost_left(model, range(1, 14), {d.frame for d in done}))
    assert left.frames == 5 and left.mean_cost == pytest.approx(10.0, rel=0.01)
    alone = estimate.farm_estimate(model, left, [], [1], 0.0, estimate.Pricing())
    assert alone["wall_seconds"] == pytest.approx(5 * 11 - 1, rel=0.02)  # no wait after the last frame
    # Two workers: three rounds for one of them; worker 1 also finishes the frame it holds (4 s left) first.
    holding = [estimate.Holding(9, 1, True, started_at=94.0)]
    pair = estimate.farm_estimate(model, left, holding, [1, 2], 100.0, estimate.Pricing(2.0, "EUR", 500.0))
    assert pair["wall_seconds"] == pytest.approx(4 + 2 * 11, abs=1.5) and pair["workers"] == 2
    assert pair["render_hours"] == pytest.approx((4 + 40) / 3600, rel=0.05)
    assert pair["cost"] == pytest.approx(2 * pair["render_hours"], abs=0.01) and pair["currency"] == "EUR"
    assert estimate.farm_estimate(model, left, [], [], 0.0, estimate.Pricing())["wall_seconds"] is None
