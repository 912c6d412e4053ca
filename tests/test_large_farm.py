"""A large farm's protocol, for real: when the coordinator spreads heartbeats out, the frames' starts and the log lines
ride on the heartbeats and claims (`batch_reports`), and nothing is lost or counted twice.

The coordinator is told it carries a tiny heartbeat rate (--heartbeats-per-second), so that a farm of one or two
workers already counts as large.
"""

from __future__ import annotations

import pytest

from harness import Farm, find_blender_or_none

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.both_databases  # on SQLite and on PostgreSQL alike
# One heartbeat a second for the whole farm: any farm beats at least every 2 s at once, so batch_reports is on.
LARGE = ("--heartbeats-per-second", "0.4", "--alive-timeout", "20", "--max-log-chunk", "1K")
BLEND = b"BLENDER-v304REND" + b"\0" * 64


def register(farm: Farm, name: str) -> dict:
    return farm.api.post("/register_worker", {"name": name, "host": "test", "blender_version": "3.4.1",
                                              "cpu_count": 1})


def submit_header_only_task(farm: Farm, frames: int) -> int:
    status, answer = farm.api.call("POST", "/upload_blend?filename=a.blend", raw=BLEND)
    assert status == 200, answer
    return farm.api.post("/submit_task", {"blend_sha256": answer["sha256"], "blend_filename": "a.blend",
                                          "frame_start": 1, "frame_end": frames})["task_id"]


def test_starts_and_log_lines_ride_on_heartbeats_and_claims(farm):
    farm.start_coordinator(*LARGE)
    worker = register(farm, "w1")
    assert worker["batch_reports"] and worker["heartbeat_seconds"] > 2.0
    task_id = submit_header_only_task(farm, 3)
    worker_id = worker["worker_id"]
    first = farm.api.post("/frames/claim", {"worker_id": worker_id})["frame"]
    start = {"task_id": task_id, "frame": first["frame"], "lease_id": first["lease_id"], "started_at": 1.5e9}
    # The first frame's start rides on the claim of the second.
    second = farm.api.post("/frames/claim", {"worker_id": worker_id, "prefer_task_id": task_id,
                                             "rendering": [start]})["frame"]
    frames = {f["frame"]: f for f in farm.api.task(task_id)["frames"]}
    assert frames[first["frame"]]["status"] == "rendering" and frames[first["frame"]]["started_at"] == 1.5e9
    assert frames[second["frame"]]["status"] == "leased"
    # The second's start and two tasks' worth of log lines ride on a heartbeat; the answer keeps the advice.
    beat = farm.api.post("/update_worker", {
        "worker_id": worker_id, "leases": [first["lease_id"], second["lease_id"]],
        "rendering": [{"task_id": task_id, "frame": second["frame"], "lease_id": second["lease_id"]}],
        "logs": [{"task_id": task_id, "text": "[w1] Fra:1 Sample 1/16\n"},
                 {"task_id": task_id, "text": "[w1] frame 1 done in 1.00 s\n"}]})
    assert beat["revoked"] == [] and beat["batch_reports"]
    assert farm.api.task(task_id)["frames"][second["frame"] - 1]["status"] == "rendering"
    log = farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert log == "[w1] Fra:1 Sample 1/16\n[w1] frame 1 done in 1.00 s\n"


def test_a_stale_or_unknown_rider_changes_nothing_and_does_not_fail_the_call(farm):
    farm.start_coordinator(*LARGE)
    worker_id = register(farm, "w1")["worker_id"]
    task_id = submit_header_only_task(farm, 2)
    lease = farm.api.post("/frames/claim", {"worker_id": worker_id})["frame"]
    stale = {"task_id": task_id, "frame": lease["frame"], "lease_id": "0" * 32, "started_at": 1.5e9}
    gone = {"task_id": 999, "frame": 1, "lease_id": "1" * 32}
    claimed = farm.api.post("/frames/claim", {"worker_id": worker_id, "rendering": [stale, gone]})
    assert claimed["frame"] is not None  # the claim itself still works
    assert farm.api.task(task_id)["frames"][lease["frame"] - 1]["status"] == "leased"
    beat = farm.api.post("/update_worker", {"worker_id": worker_id, "leases": [lease["lease_id"]],
                                            "rendering": [stale],
                                            "logs": [{"task_id": 999, "text": "lines of a deleted task\n"}]})
    assert beat["revoked"] == []
    assert farm.api.get(f"/get_log?task_id={task_id}")["text"] == ""
    # A heartbeat of a worker that does not exist is refused, and its log lines are not written.
    status, answer = farm.api.call("POST", "/update_worker", {
        "worker_id": 999, "logs": [{"task_id": task_id, "text": "lines of no worker\n"}]})
    assert status == 404 and "999" in answer["error"]
    assert farm.api.get(f"/get_log?task_id={task_id}")["text"] == ""


def test_log_lines_past_the_chunk_limit_are_refused_whole(farm):
    farm.start_coordinator(*LARGE)
    worker_id = register(farm, "w1")["worker_id"]
    task_id = submit_header_only_task(farm, 1)
    status, answer = farm.api.call("POST", "/update_worker", {
        "worker_id": worker_id, "logs": [{"task_id": task_id, "text": "x" * 600}] * 2})
    assert status == 413 and "--max-log-chunk" in answer["error"]
    status, answer = farm.api.call("POST", "/update_worker", {
        "worker_id": worker_id, "rendering": [{"task_id": task_id, "frame": "one", "lease_id": "x"}]})
    assert status == 400 and "error" in answer
    assert farm.api.get(f"/get_log?task_id={task_id}")["text"] == ""


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_real_workers_on_a_large_farm_render_every_frame_once_with_its_log(farm, scenes):
    blend = scenes("basic", frames=8)
    farm.start_coordinator(*LARGE[:-2])
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 8, name="large")
    task = farm.api.wait_task_ended(task_id, 300)
    assert task["status"] == "done" and task["progress"]["done"] == 8
    assert all(f["status"] == "done" and f["attempts"] == 1 and f["started_at"] and f["render_seconds"] > 0
               for f in task["frames"])
    assert sum(w["frames_done"] for w in farm.api.workers().values()) == 8
    # Every frame's "done" line and Blender's own output reach the task's log by the heartbeats (the last ones
    # within a heartbeat of the task's end).
    def log_complete() -> str | None:
        text = farm.api.get(f"/get_log?task_id={task_id}")["text"]
        return text if all(f"frame {n} done" in text for n in range(1, 9)) else None

    from harness import wait_for

    log = wait_for(log_complete, 30, "every frame's line in the task log")
    assert "Fra:" in log and "[a]" in log and "[b]" in log
