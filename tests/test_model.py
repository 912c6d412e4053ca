"""renderq.model: statuses that are their strings, tolerant records, and one vocabulary for the coordinator's SQL,
its answers and the status page."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import sqlite3

import pytest

from renderq.model import (
    FRAME_ACTIVE,
    FRAME_FINAL,
    FRAME_KIND_ENCODE,
    FRAME_KIND_RENDER,
    FRAME_OPEN,
    RENDER_ORDERS,
    TASK_APPROVABLE,
    TASK_CLAIMABLE,
    TASK_FINAL,
    TASK_OPEN,
    TASK_RESUMABLE,
    TASK_RETRYABLE,
    Frame,
    FrameReport,
    FrameResult,
    FrameStatus,
    Lease,
    Progress,
    Task,
    TaskStatus,
    Worker,
    WorkerState,
    page_statuses,
    scout_frames,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLEND = b"BLENDER-v304REND" + b"\0" * 64


# -- statuses ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [TaskStatus, FrameStatus, FrameReport, WorkerState])
def test_a_status_is_its_string_everywhere(kind):
    for member in kind:
        assert member == member.value and member.value == member
        assert hash(member) == hash(member.value)
        assert str(member) == f"{member}" == member.value
        assert json.dumps({"status": member}) == json.dumps({"status": member.value})
        assert kind(member.value) is member
    db = sqlite3.connect(":memory:")
    first = next(iter(kind))
    assert db.execute("SELECT ? = ?", (first, first.value)).fetchone() == (1,)


def test_the_sets_split_the_statuses_without_overlap():
    assert TASK_OPEN | TASK_FINAL == set(TaskStatus) and not TASK_OPEN & TASK_FINAL
    assert FRAME_OPEN | FRAME_FINAL == set(FrameStatus) and not FRAME_OPEN & FRAME_FINAL
    assert TASK_CLAIMABLE | TASK_RESUMABLE | TASK_APPROVABLE == TASK_OPEN
    assert not TASK_APPROVABLE & (TASK_CLAIMABLE | TASK_RESUMABLE)
    assert FRAME_ACTIVE < FRAME_OPEN
    assert TaskStatus.CANCELED not in TASK_RETRYABLE and TaskStatus.FAILED in TASK_RETRYABLE
    # A plain string from the database or JSON finds its status in a set.
    assert "done" in TASK_FINAL and "paused" in TASK_OPEN and "leased" in FRAME_ACTIVE
    assert "held" in FRAME_OPEN and "held" not in FRAME_ACTIVE and "awaiting_approval" in TASK_OPEN


def test_the_page_gets_the_sets_as_plain_lists_in_a_fixed_order():
    statuses = page_statuses()
    assert statuses["task_final"] == ["done", "failed", "canceled"]
    assert statuses["task_open"] == ["queued", "running", "paused", "awaiting_approval"]
    assert statuses["task_approvable"] == ["awaiting_approval"]
    assert statuses["task_claimable"] == ["queued", "running"]
    assert json.loads(json.dumps(statuses)) == statuses


def test_a_worker_state_comes_from_its_flags():
    assert Worker(worker_id=1, alive=False, enabled=True).state == WorkerState.OFFLINE
    assert Worker(worker_id=1, alive=True, enabled=False).state == WorkerState.OFF
    assert Worker(worker_id=1, alive=True).state == WorkerState.IDLE
    assert Worker(worker_id=1, alive=True, current=[{"frame": 3}]).state == WorkerState.BUSY


_SQL_STATUS = re.compile(r"\b(?:status|THEN|ELSE|DEFAULT)\s*(?:=|!=|IN)?\s*\(?\s*('[a-z_]+'(?:\s*,\s*'[a-z_]+')*)")


def test_every_status_in_the_coordinators_sql_is_the_models():
    """The SQL spells statuses as literals (partial indexes need them): each one must be a model status (the
    scan also sees sentences that quote a status, such as a report's)."""
    known = set(TaskStatus.values()) | set(FrameStatus.values()) | set(FrameReport.values())
    known |= {FRAME_KIND_RENDER, FRAME_KIND_ENCODE}  # frames.kind's DEFAULT is spelled the same way
    known |= set(RENDER_ORDERS)  # and so is tasks.render_order's
    found: set[str] = set()
    for path in sorted((ROOT / "coordinator").rglob("*.py")):
        for match in _SQL_STATUS.finditer(path.read_text(encoding="utf-8")):
            words = set(re.findall(r"'([a-z_]+)'", match.group(1)))
            assert words <= known, f"{path.name}: {sorted(words - known)} are no status of renderq.model"
            found |= words
    assert found >= set(TaskStatus.values()) | set(FrameStatus.values())  # the scan sees the SQL at all


def test_the_status_page_scripts_keep_no_status_set_of_their_own():
    statuses = "|".join(set(TaskStatus.values()) | set(FrameStatus.values()))
    listed = re.compile(rf'"(?:{statuses})"\s*,\s*"(?:{statuses})"')
    for script in ("farm.js", "task.js", "common.js"):
        text = (ROOT / "coordinator" / "pages" / "static" / script).read_text(encoding="utf-8")
        assert not listed.search(text), f"{script} lists statuses itself; read them from the feed's statuses"


# -- records -------------------------------------------------------------------------------------------------------


def test_from_dict_ignores_unknown_keys_and_says_so_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="renderq.model"):
        frame = Frame.from_dict({"frame": 7, "status": "done", "colour": "blue", "lease_expires": 3.0})
    assert frame.frame == 7 and frame.status is FrameStatus.DONE and frame.is_done
    assert "colour" in caplog.text and "lease_expires" in caplog.text


def test_from_dict_fills_defaults_and_refuses_what_it_cannot_read():
    task = Task.from_dict({"task_id": 4})
    assert task.status is TaskStatus.QUEUED and task.progress == Progress() and task.frames is None
    assert task.progress.percent == 0.0 and not task.is_final
    with pytest.raises(ValueError, match="a Task needs 'task_id'"):
        Task.from_dict({"name": "no id"})
    with pytest.raises(ValueError, match="a Frame must be an object, not list"):
        Frame.from_dict([1, 2])


def test_a_status_the_client_does_not_know_passes_through():
    task = Task.from_dict({"task_id": 1, "status": "archived"})
    assert task.status == "archived" and not task.is_final


def test_nested_records_and_round_trips():
    answer = {
        "task_id": 9, "name": "shot", "status": "failed", "progress": {"total": 4, "done": 3, "failed": 1},
        "frames": [{"frame": 1, "status": "done", "output": "f1.png"}, {"frame": 2, "status": "failed"}],
        "latest_done": {"frame": 1, "status": "done"}, "failed_frames": [2],
    }
    task = Task.from_dict(answer)
    assert task.is_final and task.progress.percent == 75.0
    assert [f.frame for f in task.done_frames()] == [1] and task.latest_done == Frame(frame=1, status="done")
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task
    worker = Worker.from_dict({"worker_id": 2, "name": "w", "alive": True, "render_seconds_total": 1.0})
    assert Worker.from_dict(worker.to_dict()) == worker
    result = FrameResult(3, True, "/out/f3.png", 1.0, 2.0, 1.0, None, "tail")
    assert FrameResult.from_dict(result.to_dict()) == result
    assert FrameResult.failure(3, "Blender crashed") == FrameResult(frame=3, error="Blender crashed")


def test_a_lease_reads_a_claim_and_keeps_the_workers_own_state_out():
    claim = {"task_id": "5", "frame": 2, "lease_id": "abc", "blend_sha256": "s" * 64, "blend_filename": "a.blend",
             "frame_timeout": "nan", "no_progress_timeout": -3, "needs_python": "yes", "settings": None,
             "revoked": True, "started_at": 99.0, "new_field": 1}
    lease = Lease.from_dict(claim)
    assert (lease.task_id, lease.frame, str(lease)) == (5, 2, "task 5 frame 2")
    assert lease.frame_timeout is None and lease.no_progress_timeout is None and lease.needs_python is False
    assert lease.settings == {} and lease.attempt == 1 and lease.main_file is None
    # Whether it was revoked and when it started are the worker's to learn, never the coordinator's to say.
    assert lease.revoked is False and lease.started_at is None and not lease.finished.is_set()
    assert "finished" not in lease.to_dict() and Lease.from_dict(lease.to_dict()).lease_id == "abc"
    assert Lease.from_claim is not None and Lease.from_claim(claim).frame == 2


# -- against a real coordinator ------------------------------------------------------------------------------------


def test_the_coordinators_answers_are_the_models_records(farm, caplog):
    """Every key of a real coordinator's task, frame, worker and claim answers is known to the model, over HTTP."""
    farm.start_coordinator()
    api = farm.api
    status, answer = api.call("POST", "/upload_blend?filename=a.blend", raw=BLEND)
    assert status == 200, answer
    task_id = api.post("/submit_task", {"name": "vocabulary", "blend_sha256": answer["sha256"],
                                        "blend_filename": "a.blend", "frame_start": 1, "frame_end": 2})["task_id"]
    worker_token = farm.token("worker")
    status, registered = api.call("POST", "/register_worker", {"name": "w1", "blender_version": "3.4.1"},
                                  token=worker_token)
    assert status == 200, registered
    status, claimed = api.call("GET", f"/get_task?worker_id={registered['worker_id']}", token=worker_token)
    assert status == 200, claimed
    with caplog.at_level(logging.DEBUG, logger="renderq.model"):
        lease = Lease.from_dict(claimed["frame"])
        task = Task.from_dict(api.task(task_id))
        workers = [Worker.from_dict(w) for w in api.get("/list_workers")["workers"]]
        listed = [Task.from_dict(t) for t in api.get("/tasks")["tasks"]]
    assert "ignoring unknown keys" not in caplog.text, caplog.text
    assert (lease.task_id, lease.frame) == (task_id, 1)
    assert task.status is TaskStatus.RUNNING and [f.status for f in task.frames] == ["leased", "queued"]
    assert task.progress.leased == 1 and task.progress.total == 2
    assert [w.state for w in workers] == [WorkerState.BUSY] and listed[0].task_id == task_id
    # The status page's feeds carry the model's sets, so its scripts keep none of their own.
    assert api.get("/status/updates")["snapshot"]["farm"]["statuses"] == page_statuses()
    assert api.get(f"/status/task_updates?task_id={task_id}")["snapshot"]["task"]["statuses"] == page_statuses()


def test_scouts_take_the_ends_and_spread_evenly_between():
    assert scout_frames(range(1, 101), 3) == [1, 51, 100]
    assert scout_frames(range(1, 21), 4) == [1, 7, 14, 20]
    assert scout_frames(range(1, 11), 1) == [1]
    assert scout_frames(range(1, 11), 2) == [1, 10]
    assert scout_frames(range(0, 20, 5), 3) == [0, 10, 15]  # frames 0, 5, 10, 15: the middle one rounds up
    assert len(scout_frames(range(1, 11), 9)) == 9
