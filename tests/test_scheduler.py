"""The scheduler's rules, without Flask or HTTP: leases, priority, assignment, retries, cancel, ETA."""

from __future__ import annotations

import pytest

from coordinator.errors import Conflict, NotFound
from coordinator.eta import estimate_eta
from coordinator.scheduler import Policy, Scheduler, TaskFile, TaskSpec
from coordinator.store import Store

SHA = "a" * 64


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def scheduler(tmp_path, clock):
    return Scheduler(Store(str(tmp_path / "state.sqlite3")), Policy(lease_seconds=15, alive_timeout=15), clock)


def submit(scheduler: Scheduler, start=1, end=4, **fields) -> int:
    spec = TaskSpec(name=fields.pop("name", "shot"), files=[TaskFile("shot.blend", SHA, 100)],
                    main_file="shot.blend", frame_start=start, frame_end=end, **fields)
    return scheduler.submit_task(spec)["task_id"]


def register(scheduler: Scheduler, name: str, blender_version: str = "3.4.1") -> int:
    return scheduler.register_worker(name, "host", blender_version, 2)["worker_id"]


def finish(scheduler: Scheduler, worker_id: int, lease: dict, seconds: float = 2.0) -> dict:
    scheduler.report(worker_id, lease["task_id"], lease["frame"], lease["lease_id"], "rendering", started_at=1.0)
    scheduler.record_output(worker_id, lease["task_id"], lease["frame"], lease["lease_id"],
                            f"f_{lease['frame']:04d}.png", "b" * 64, 10)
    return scheduler.report(worker_id, lease["task_id"], lease["frame"], lease["lease_id"], "done",
                            render_seconds=seconds)


def test_frames_split_with_step(scheduler):
    task_id = submit(scheduler, 1, 10, frame_step=3)
    assert [f["frame"] for f in scheduler.task_detail(task_id)["frames"]] == [1, 4, 7, 10]


def test_two_workers_never_get_the_same_frame(scheduler):
    submit(scheduler, 1, 6)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    leased = []
    for _ in range(3):
        for worker in (a, b):
            frame, _ = scheduler.claim(worker)
            leased.append(frame["frame"])
    assert sorted(leased) == [1, 2, 3, 4, 5, 6]
    assert scheduler.claim(a) == (None, "no frames waiting")


def test_priority_then_first_come_first_served(scheduler):
    old = submit(scheduler, 1, 1, name="old")
    new = submit(scheduler, 1, 1, name="new")
    urgent = submit(scheduler, 1, 1, name="urgent", priority=5)
    worker = register(scheduler, "w")
    order = [scheduler.claim(worker)[0]["task_id"] for _ in range(3)]
    assert order == [urgent, old, new]


def test_manual_assignment_only_named_workers(scheduler):
    task_id = submit(scheduler, 1, 2, workers=["chosen"])
    other, chosen = register(scheduler, "other"), register(scheduler, "chosen")
    assert scheduler.claim(other)[0] is None
    assert scheduler.claim(chosen)[0]["task_id"] == task_id


def test_expired_lease_requeues_and_old_holder_is_fenced(scheduler, clock):
    submit(scheduler, 1, 1)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    lease, _ = scheduler.claim(a)
    clock.now += 16  # a stopped reporting
    again, _ = scheduler.claim(b)
    assert again["frame"] == lease["frame"]
    with pytest.raises(Conflict):
        scheduler.report(a, lease["task_id"], lease["frame"], lease["lease_id"], "rendering")
    finish(scheduler, b, again)
    task = scheduler.task_detail(lease["task_id"])
    assert task["status"] == "done" and task["progress"]["done"] == 1


def test_heartbeat_renews_and_reports_revoked(scheduler, clock):
    task_id = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    for _ in range(5):
        clock.now += 10
        assert scheduler.heartbeat(a, [lease["lease_id"]]) == {"enabled": True, "revoked": []}
    assert scheduler.expire_leases() == 0
    scheduler.cancel_task(task_id)
    assert scheduler.heartbeat(a, [lease["lease_id"]])["revoked"] == [lease["lease_id"]]


def test_failed_frame_retried_elsewhere_then_failed(scheduler):
    task_id = submit(scheduler, 1, 2)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    lease, _ = scheduler.claim(a)
    assert lease["frame"] == 1
    scheduler.report(a, task_id, 1, lease["lease_id"], "failed", error="boom", log_tail="Error: boom")
    # a failed frame 1, so a gets frame 2 first and frame 1 goes to b.
    assert scheduler.claim(a)[0]["frame"] == 2
    retry, _ = scheduler.claim(b)
    assert retry["frame"] == 1
    scheduler.report(b, task_id, 1, retry["lease_id"], "failed", error="boom", log_tail="Error: boom")
    third, _ = scheduler.claim(b)
    assert third["frame"] == 1
    frame = scheduler.report(b, task_id, 1, third["lease_id"], "failed", error="boom", log_tail="Error: boom")
    assert frame["status"] == "failed" and frame["failures"] == 3 and frame["log_tail"] == "Error: boom"
    # Repeating the final report is accepted and changes nothing.
    assert scheduler.report(b, task_id, 1, third["lease_id"], "failed", error="again")["error"] == "boom"


def test_task_fails_with_list_of_failed_frames(scheduler):
    scheduler.policy.max_attempts = 1
    task_id = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    first, _ = scheduler.claim(a)
    scheduler.report(a, task_id, first["frame"], first["lease_id"], "failed", error="boom")
    second, _ = scheduler.claim(a)
    finish(scheduler, a, second)
    task = scheduler.task_detail(task_id)
    assert task["status"] == "failed" and task["failed_frames"] == [1]


def test_done_counts_once(scheduler):
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    finish(scheduler, a, lease)
    scheduler.report(a, task_id, 1, lease["lease_id"], "done", render_seconds=2.0)
    task = scheduler.task_detail(task_id)
    assert task["progress"]["done"] == 1
    assert scheduler.list_workers()[0]["frames_done"] == 1


def test_done_needs_uploaded_file(scheduler):
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    with pytest.raises(Conflict, match="upload"):
        scheduler.report(a, task_id, 1, lease["lease_id"], "done")


def test_off_worker_takes_nothing_and_gives_back_unstarted(scheduler):
    submit(scheduler, 1, 3)
    a = register(scheduler, "a")
    rendering, _ = scheduler.claim(a)
    scheduler.report(a, rendering["task_id"], rendering["frame"], rendering["lease_id"], "rendering")
    prefetched, _ = scheduler.claim(a)
    scheduler.set_worker_enabled(False, name="a")
    assert scheduler.claim(a) == (None, "this worker is switched OFF")
    answer = scheduler.heartbeat(a, [rendering["lease_id"], prefetched["lease_id"]])
    assert answer == {"enabled": False, "revoked": [prefetched["lease_id"]]}
    finish(scheduler, a, rendering)  # the frame it was rendering still counts


def test_reregistering_worker_requeues_its_frames(scheduler):
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    scheduler.claim(a)
    assert register(scheduler, "a") == a
    assert scheduler.task_detail(task_id)["progress"]["queued"] == 1


def test_release_does_not_count_as_attempt(scheduler):
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    frame = scheduler.report(a, task_id, 1, lease["lease_id"], "released")
    assert frame["status"] == "queued" and frame["attempts"] == 0


def test_unknown_ids(scheduler):
    with pytest.raises(NotFound):
        scheduler.claim(99)
    with pytest.raises(NotFound):
        scheduler.task_detail(42)


def test_cancel_ended_task_conflicts(scheduler):
    task_id = submit(scheduler, 1, 1)
    scheduler.cancel_task(task_id)
    with pytest.raises(Conflict):
        scheduler.cancel_task(task_id)


def test_eta_uses_recent_exact_times_and_workers(scheduler):
    task_id = submit(scheduler, 1, 10)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    for seconds in (2.0, 4.0):
        finish(scheduler, a, scheduler.claim(a)[0], seconds)
    lease_a, _ = scheduler.claim(a)
    lease_b, _ = scheduler.claim(b)
    scheduler.report(a, task_id, lease_a["frame"], lease_a["lease_id"], "rendering")
    scheduler.report(b, task_id, lease_b["frame"], lease_b["lease_id"], "rendering")
    progress = scheduler.task_detail(task_id)["progress"]
    assert progress["workers_rendering"] == 2
    assert progress["eta_seconds"] == pytest.approx(3.0 * 8 / 2)


def test_estimate_eta_edges():
    assert estimate_eta([], 5, 1) is None
    assert estimate_eta([1.0], 0, 1) == 0.0
    assert estimate_eta([1.0, 3.0], 4, 0) == 8.0


def test_restart_extends_leases(tmp_path, clock):
    path = str(tmp_path / "state.sqlite3")
    first = Scheduler(Store(path), Policy(), clock)
    submit(first, 1, 1)
    a = register(first, "a")
    lease, _ = first.claim(a)
    clock.now += 60  # the coordinator was down for a minute
    second = Scheduler(Store(path), Policy(), clock)
    second.recover_after_restart()
    assert second.expire_leases() == 0
    assert second.heartbeat(a, [lease["lease_id"]])["revoked"] == []


def test_worker_alive_until_timeout_and_shows_its_frame(scheduler, clock):
    task_id = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, lease["frame"], lease["lease_id"], "rendering", started_at=5.0)
    worker = scheduler.list_workers()[0]
    assert worker["alive"] is True
    assert worker["current"] == [{"task_id": task_id, "task_name": "shot", "frame": 1, "status": "rendering",
                                  "started_at": 5.0}]
    assert scheduler.task_detail(task_id)["progress"]["current"] == [
        {"worker": "a", "frame": 1, "status": "rendering", "started_at": 5.0}]
    clock.now += 14.9
    assert scheduler.list_workers()[0]["alive"] is True
    clock.now += 0.2
    assert scheduler.list_workers()[0]["alive"] is False
    assert scheduler.expire_leases() == 1  # its frame goes back to the queue
    assert scheduler.task_detail(task_id)["progress"]["queued"] == 2


def test_frames_go_only_to_workers_with_the_same_or_newer_blender(scheduler):
    task_id = submit(scheduler, 1, 2, blender_version="4.2")
    old, new = register(scheduler, "old", "3.4.1"), register(scheduler, "new", "4.5.0")
    assert scheduler.claim(old)[0] is None
    assert scheduler.claim(new)[0]["task_id"] == task_id


def test_exact_version_match(scheduler):
    task_id = submit(scheduler, 1, 1, blender_version="3.4", blender_version_exact=True)
    newer, same = register(scheduler, "newer", "4.2.0"), register(scheduler, "same", "3.4.1")
    assert scheduler.claim(newer)[0] is None
    assert scheduler.claim(same)[0]["task_id"] == task_id


def test_waiting_reason_names_the_missing_blender(scheduler, clock):
    task_id = submit(scheduler, 1, 1, blender_version="4.2")
    assert scheduler.task_detail(task_id)["waiting_reason"] == "waiting: no worker is alive and switched ON"
    register(scheduler, "old", "3.4.1")
    assert scheduler.task_detail(task_id)["waiting_reason"] == "waiting: no worker with Blender >= 4.2"
    exact = submit(scheduler, 1, 1, blender_version="3.3", blender_version_exact=True)
    assert scheduler.task_detail(exact)["waiting_reason"] == "waiting: no worker with Blender 3.3"
    pinned = submit(scheduler, 1, 1, workers=["ghost"])
    assert "ghost" in scheduler.task_detail(pinned)["waiting_reason"]
    register(scheduler, "new", "4.2.3")
    assert scheduler.task_detail(task_id)["waiting_reason"] is None


def test_forget_files_keeps_hashes_other_tasks_use(scheduler):
    first = submit(scheduler, 1, 1)
    second = submit(scheduler, 1, 1)
    with pytest.raises(Conflict):
        scheduler.forget_task_files(first)
    scheduler.cancel_task(first)
    assert scheduler.forget_task_files(first) == []  # the .blend is still used by the second task
    scheduler.cancel_task(second)
    assert scheduler.forget_task_files(second) == [SHA]
    assert scheduler.task_detail(second)["files_deleted"] is True
