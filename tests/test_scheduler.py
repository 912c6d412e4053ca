"""The scheduler's rules, without Flask or HTTP: leases, priority, assignment, retries, cancel, ETA."""

from __future__ import annotations

import pytest

from coordinator.errors import BadRequest, Conflict, Forbidden, NotFound
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


# Every test runs on both store engines (conftest.py), but those that read SQLite's own query plans and trace.
pytestmark = pytest.mark.both_databases


@pytest.fixture
def scheduler(database, clock):
    return Scheduler(Store(database), Policy(lease_seconds=15, alive_timeout=15), clock)


def submit(scheduler: Scheduler, start=1, end=4, **fields) -> int:
    # These rules' tests follow claims frame by frame: in number order (tests/test_claim_order.py has the default).
    fields.setdefault("order", "sequential")
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
        assert scheduler.heartbeat(a, [lease["lease_id"]]) == {"enabled": True, "revoked": [],
                                                               "heartbeat_seconds": 2.0, "lease_seconds": 15.0,
                                                               "batch_reports": False}
    assert scheduler.expire_leases() == 0
    scheduler.cancel_task(task_id)
    assert scheduler.heartbeat(a, [lease["lease_id"]])["revoked"] == [lease["lease_id"]]


def test_a_large_farm_is_asked_to_beat_less_often_with_leases_of_several_beats(database, clock):
    policy = Policy(heartbeats_per_second=10.0, heartbeat_limit=20.0)
    scheduler = Scheduler(Store(database), policy, clock=clock)
    submit(scheduler, 1, 4)
    first = register(scheduler, "w0")
    small = scheduler.heartbeat(first, [])
    assert small["heartbeat_seconds"] == 2.0 and not small["batch_reports"]  # a small farm keeps the defaults
    for number in range(1, 100):
        register(scheduler, f"w{number}")
    clock.now += 6  # the farm's size is counted again every few seconds
    answer = scheduler.heartbeat(first, [])
    # 100 live workers at 10 heartbeats a second for the farm: one every 10 s each, leases of 4 beats.
    assert answer["heartbeat_seconds"] == 10.0 and answer["lease_seconds"] == 40.0
    assert answer["batch_reports"]  # and its workers send reports and log lines with heartbeats and claims
    lease, _ = scheduler.claim(first)
    assert lease["lease_seconds"] == 40.0
    clock.now += 30  # longer than the default lease, within the farm's: the frame is still the worker's
    assert scheduler.expire_leases() == 0
    assert scheduler.heartbeat(first, [lease["lease_id"]])["revoked"] == []
    assert next(w for w in scheduler.list_workers() if w["worker_id"] == first)["alive"]
    assert Policy(heartbeats_per_second=10.0).liveness(1_000_000) == (20.0, 80.0)  # at most heartbeat_limit apart


def test_failed_frame_retried_elsewhere_then_failed_on_three_different_workers(scheduler):
    task_id = submit(scheduler, 1, 2)
    a, b, c = register(scheduler, "a"), register(scheduler, "b"), register(scheduler, "c")
    lease, _ = scheduler.claim(a)
    assert lease["frame"] == 1
    scheduler.report(a, task_id, 1, lease["lease_id"], "failed", error="boom", log_tail="Error: boom")
    # a failed frame 1, so a gets frame 2 first and frame 1 goes to b.
    assert scheduler.claim(a)[0]["frame"] == 2
    retry, _ = scheduler.claim(b)
    assert retry["frame"] == 1
    scheduler.report(b, task_id, 1, retry["lease_id"], "failed", error="boom", log_tail="Error: boom")
    again, _ = scheduler.claim(b)
    assert again["frame"] == 1
    frame = scheduler.report(b, task_id, 1, again["lease_id"], "failed", error="boom", log_tail="Error: boom")
    # Three failures, but on two different workers only: it is queued again.
    assert frame["status"] == "queued" and frame["failures"] == 3
    third, _ = scheduler.claim(c)
    assert third["frame"] == 1
    frame = scheduler.report(c, task_id, 1, third["lease_id"], "failed", error="boom", log_tail="Error: boom")
    assert frame["status"] == "failed" and frame["failures"] == 4 and frame["log_tail"] == "Error: boom"
    assert scheduler.task_detail(task_id)["frames"][0]["failed_on"] == ["a", "b", "c"]
    # Repeating the final report is accepted and changes nothing.
    assert scheduler.report(c, task_id, 1, third["lease_id"], "failed", error="again")["error"] == "boom"


def test_task_fails_with_list_of_failed_frames(scheduler):
    scheduler.policy.frame_fail_workers = 1
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
    assert (answer["enabled"], answer["revoked"]) == (False, [prefetched["lease_id"]])
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


def test_a_restart_extends_leases_only_on_a_database_of_its_own(db_engine, database, clock):
    first = Scheduler(Store(database), Policy(), clock)
    submit(first, 1, 1)
    a = register(first, "a")
    lease, _ = first.claim(a)
    clock.now += 60  # the coordinator was down for a minute
    second = Scheduler(Store(database), Policy(), clock)
    second.recover_after_restart()
    if db_engine == "sqlite":
        # It was the farm's only coordinator: no worker could renew meanwhile, so that is not held against them.
        assert second.expire_leases() == 0
        assert second.heartbeat(a, [lease["lease_id"]])["revoked"] == []
    else:
        # On a shared database the others were up, their workers renewing there: a silent worker's lease still ends.
        assert second.expire_leases() == 1


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


# -- admin controls: pause, resume, retry, priority -------------------------------------------------------------------


def test_paused_task_hands_out_nothing_and_its_rendering_frame_finishes(scheduler):
    paused = submit(scheduler, 1, 4, name="paused")
    other = submit(scheduler, 1, 1, name="other")
    a, b = register(scheduler, "a"), register(scheduler, "b")
    rendering, _ = scheduler.claim(a)
    scheduler.report(a, paused, rendering["frame"], rendering["lease_id"], "rendering")
    prefetched, _ = scheduler.claim(a, prefer_task_id=paused)
    assert prefetched["task_id"] == paused
    assert scheduler.pause_task(paused)["status"] == "paused"
    # The frame claimed but not started goes back to the queue; the worker learns it at its next heartbeat.
    answer = scheduler.heartbeat(a, [rendering["lease_id"], prefetched["lease_id"]])
    assert answer["revoked"] == [prefetched["lease_id"]]
    assert scheduler.claim(b)[0]["task_id"] == other
    assert scheduler.claim(b) == (None, "no frames waiting")
    finish(scheduler, a, rendering)
    task = scheduler.task_detail(paused)
    assert task["status"] == "paused" and task["progress"]["done"] == 1 and task["progress"]["queued"] == 3
    assert task["progress"]["eta_seconds"] is None and task["waiting_reason"] is None
    assert [t["task_id"] for t in scheduler.list_tasks("paused")] == [paused]


def test_resume_hands_frames_out_again(scheduler):
    never_started = submit(scheduler, 1, 1)
    started = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    scheduler.pause_task(never_started)
    finish(scheduler, a, scheduler.claim(a)[0])
    scheduler.pause_task(started)
    assert scheduler.claim(a)[0] is None
    assert scheduler.resume_task(never_started)["status"] == "queued"
    assert scheduler.resume_task(started)["status"] == "running"
    assert scheduler.claim(a)[0]["task_id"] == never_started


def test_pause_and_resume_refuse_the_wrong_states(scheduler):
    task_id = submit(scheduler, 1, 1)
    with pytest.raises(Conflict, match="not paused"):
        scheduler.resume_task(task_id)
    scheduler.pause_task(task_id)
    with pytest.raises(Conflict, match="already paused"):
        scheduler.pause_task(task_id)
    scheduler.cancel_task(task_id)  # a paused task can be canceled
    with pytest.raises(Conflict, match="ended"):
        scheduler.pause_task(task_id)
    with pytest.raises(NotFound):
        scheduler.pause_task(99)


def test_paused_task_ends_when_its_last_rendering_frame_finishes(scheduler):
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, 1, lease["lease_id"], "rendering")
    scheduler.pause_task(task_id)
    finish(scheduler, a, lease)
    assert scheduler.task_detail(task_id)["status"] == "done"


def test_a_paused_task_keeps_its_files(scheduler):
    task_id = submit(scheduler, 1, 1)
    scheduler.pause_task(task_id)
    with pytest.raises(Conflict, match="paused"):
        scheduler.forget_task_files(task_id)


def fail_for_good(scheduler: Scheduler, task_id: int, workers: list[int]) -> None:
    """Fail the task's next frame on each worker in turn until it is marked failed."""
    for worker in workers:
        lease, _ = scheduler.claim(worker, prefer_task_id=task_id)
        scheduler.report(worker, task_id, lease["frame"], lease["lease_id"], "failed", error="boom", log_tail="x")


def test_retry_failed_frames_queues_them_with_failures_reset(scheduler):
    task_id = submit(scheduler, 1, 2)
    a, b, c = register(scheduler, "a"), register(scheduler, "b"), register(scheduler, "c")
    fail_for_good(scheduler, task_id, [a, b, c])
    finish(scheduler, a, scheduler.claim(a)[0])
    task = scheduler.task_detail(task_id)
    assert task["status"] == "failed" and task["failed_frames"] == [1]

    task = scheduler.retry_failed_frames(task_id)
    assert task["status"] == "running" and task["ended_at"] is None
    assert task["failed_frames"] == [] and task["progress"]["failed"] == 0 and task["progress"]["queued"] == 1
    frame = scheduler.frame(task_id, 1)
    assert (frame["status"], frame["failures"], frame["error"], frame["worker_id"]) == ("queued", 0, None, None)
    # Failures before the retry no longer count: it needs frame_fail_workers new workers to fail it again.
    fail_for_good(scheduler, task_id, [a, b])
    assert scheduler.frame(task_id, 1)["status"] == "queued"
    finish(scheduler, c, scheduler.claim(c)[0])
    assert scheduler.task_detail(task_id)["status"] == "done"


def test_retry_refuses_canceled_tasks_and_tasks_without_failures(scheduler):
    clean = submit(scheduler, 1, 1)
    with pytest.raises(Conflict, match="no failed frames and no blocked workers"):
        scheduler.retry_failed_frames(clean)
    scheduler.policy.frame_fail_workers = 1
    canceled = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    fail_for_good(scheduler, canceled, [a])
    scheduler.cancel_task(canceled)
    with pytest.raises(Conflict, match="canceled"):
        scheduler.retry_failed_frames(canceled)


def test_retry_in_a_paused_task_keeps_it_paused(scheduler):
    scheduler.policy.frame_fail_workers = 1
    task_id = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    fail_for_good(scheduler, task_id, [a])
    scheduler.pause_task(task_id)
    assert scheduler.retry_failed_frames(task_id)["status"] == "paused"
    assert scheduler.claim(a)[0] is None


def test_priority_change_reorders_the_queue(scheduler):
    first = submit(scheduler, 1, 1, name="first")
    second = submit(scheduler, 1, 1, name="second")
    a = register(scheduler, "a")
    assert scheduler.set_task_priority(second, 7)["priority"] == 7
    assert scheduler.claim(a)[0]["task_id"] == second
    assert scheduler.claim(a)[0]["task_id"] == first
    with pytest.raises(BadRequest):
        scheduler.set_task_priority(first, 10**9)


# -- task summaries in bulk -------------------------------------------------------------------------------------------


def test_summaries_in_bulk_match_the_frames(scheduler):
    scheduler.policy.frame_fail_workers = 1
    a, b = register(scheduler, "a"), register(scheduler, "b")
    done = submit(scheduler, 1, 2)
    finish(scheduler, a, scheduler.claim(a)[0], 3.0)
    finish(scheduler, a, scheduler.claim(a)[0], 5.0)
    failed = submit(scheduler, 1, 2)
    fail_for_good(scheduler, failed, [a])
    finish(scheduler, b, scheduler.claim(b)[0])
    canceled = submit(scheduler, 1, 3)
    finish(scheduler, a, scheduler.claim(a)[0])
    scheduler.cancel_task(canceled)
    running = submit(scheduler, 1, 4, workers=["b"])
    finish(scheduler, b, scheduler.claim(b)[0], 2.0)
    lease, _ = scheduler.claim(b)
    scheduler.report(b, running, lease["frame"], lease["lease_id"], "rendering", started_at=scheduler.clock())
    queued = submit(scheduler, 1, 2)

    summaries = {t["task_id"]: t for t in scheduler.list_tasks()}
    assert list(summaries) == [queued, running, canceled, failed, done]
    for task_id, summary in summaries.items():
        counts = scheduler.store.frame_counts(task_id)
        progress = summary["progress"]
        for status in ("done", "failed", "rendering", "leased", "queued", "canceled"):
            assert progress[status] == counts.get(status, 0), (task_id, status)
    assert summaries[failed]["failed_frames"] == [1]
    assert summaries[running]["workers"] == ["b"] and summaries[running]["progress"]["workers_rendering"] == 1
    assert summaries[running]["progress"]["eta_seconds"] == pytest.approx(2.0 * 3)
    assert summaries[done]["progress"]["eta_seconds"] == 0.0


@pytest.mark.sqlite_only
def test_listing_tasks_costs_the_same_queries_for_many_tasks(scheduler):
    a = register(scheduler, "a")

    def add_tasks(count: int) -> None:
        for _ in range(count):
            task_id = submit(scheduler, 1, 3, workers=["a"])
            finish(scheduler, a, scheduler.claim(a, prefer_task_id=task_id)[0])
            lease, _ = scheduler.claim(a, prefer_task_id=task_id)
            scheduler.report(a, task_id, lease["frame"], lease["lease_id"], "rendering")

    def queries() -> int:
        statements: list[str] = []
        connection = scheduler.store.read()
        connection.set_trace_callback(statements.append)
        try:
            scheduler.list_tasks()
        finally:
            connection.set_trace_callback(None)
        return len(statements)

    add_tasks(3)
    few = queries()
    add_tasks(30)
    assert queries() == few


# -- bad workers: blocked from a task after repeated failures ---------------------------------------------------------


def fail(scheduler: Scheduler, worker_id: int, lease: dict, error: str = "boom") -> dict:
    return scheduler.report(worker_id, lease["task_id"], lease["frame"], lease["lease_id"], "failed", error=error,
                            log_tail="Error: " + error)


BLOCKED_SENTENCE = ("waiting: every worker that could render it has failed it 3 times and is blocked; "
                    "retry its failed frames to unblock them")


def test_a_worker_that_failed_a_task_three_times_gets_no_more_of_its_frames(scheduler):
    task_id = submit(scheduler, 1, 6, name="broken")
    other = submit(scheduler, 1, 1, name="other")
    a, b = register(scheduler, "a"), register(scheduler, "b")
    for expected in (1, 2):  # different frames count alike
        lease, _ = scheduler.claim(a, prefer_task_id=task_id)
        assert lease["frame"] == expected
        fail(scheduler, a, lease)
    assert scheduler.task_detail(task_id)["blocked_workers"] == []
    lease, _ = scheduler.claim(a, prefer_task_id=task_id)
    assert (lease["task_id"], lease["frame"]) == (task_id, 3)
    fail(scheduler, a, lease)
    task = scheduler.task_detail(task_id)
    assert task["blocked_workers"] == [{"worker": "a", "worker_id": a, "failures": 3}]
    assert task["status"] == "running" and task["failed_frames"] == []  # each frame failed on one worker only
    # a now gets the other task, then nothing; b still renders the broken task.
    assert scheduler.claim(a, prefer_task_id=task_id)[0]["task_id"] == other
    assert scheduler.claim(a) == (None, "no frames waiting")
    assert scheduler.claim(b)[0]["task_id"] == task_id
    assert [t["blocked_workers"] for t in scheduler.list_tasks()] == [[], task["blocked_workers"]]


def test_repeated_failures_of_one_frame_on_one_worker_block_it_but_do_not_fail_the_frame(scheduler):
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    for _ in range(3):
        frame = fail(scheduler, a, scheduler.claim(a)[0])
    assert frame["status"] == "queued" and frame["failures"] == 3
    assert scheduler.claim(a) == (None, "no frames waiting")
    task = scheduler.task_detail(task_id)
    assert task["waiting_reason"] == BLOCKED_SENTENCE
    assert task["frames"][0]["failed_on"] == ["a"]


def test_blocked_waiting_reason_counts_only_workers_that_could_render_it(scheduler, clock):
    task_id = submit(scheduler, 1, 2, blender_version="3.4")
    a = register(scheduler, "a")
    register(scheduler, "old", "2.93.0")  # could never render it
    for _ in range(3):
        fail(scheduler, a, scheduler.claim(a)[0])
    assert scheduler.task_detail(task_id)["waiting_reason"] == BLOCKED_SENTENCE
    b = register(scheduler, "b")
    assert scheduler.task_detail(task_id)["waiting_reason"] is None
    scheduler.set_worker_enabled(False, worker_id=b)
    assert scheduler.task_detail(task_id)["waiting_reason"] == BLOCKED_SENTENCE
    clock.now += 100  # every worker went silent: that is the reason now
    assert scheduler.task_detail(task_id)["waiting_reason"] == "waiting: no worker is alive and switched ON"


def test_the_sentence_names_the_configured_number_of_failures(scheduler):
    scheduler.policy.bad_worker_failures = 2
    task_id = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    for _ in range(2):
        fail(scheduler, a, scheduler.claim(a)[0])
    assert scheduler.claim(a)[0] is None
    assert "has failed it 2 times and is blocked" in scheduler.task_detail(task_id)["waiting_reason"]


def test_retry_unblocks_even_without_failed_frames(scheduler):
    task_id = submit(scheduler, 1, 3)
    a = register(scheduler, "a")
    for _ in range(3):
        fail(scheduler, a, scheduler.claim(a)[0])
    assert scheduler.task_detail(task_id)["failed_frames"] == []
    task = scheduler.retry_failed_frames(task_id)
    assert task["blocked_workers"] == [] and task["waiting_reason"] is None and task["status"] == "running"
    # The count starts again from zero: two more failures do not block it.
    for _ in range(2):
        fail(scheduler, a, scheduler.claim(a)[0])
    assert scheduler.claim(a)[0]["task_id"] == task_id
    with pytest.raises(Conflict, match="no failed frames and no blocked workers"):
        scheduler.retry_failed_frames(submit(scheduler, 1, 1))


def test_retry_of_failed_frames_also_unblocks(scheduler):
    scheduler.policy.frame_fail_workers = 1
    task_id = submit(scheduler, 1, 4)
    a = register(scheduler, "a")
    for _ in range(3):
        fail(scheduler, a, scheduler.claim(a)[0])
    task = scheduler.task_detail(task_id)
    assert task["failed_frames"] == [1, 2, 3] and len(task["blocked_workers"]) == 1
    assert scheduler.claim(a)[0] is None  # frame 4 waits: a is blocked
    task = scheduler.retry_failed_frames(task_id)
    assert task["blocked_workers"] == [] and task["progress"]["queued"] == 4
    assert scheduler.claim(a)[0]["frame"] == 4  # frames it failed before come last


def statements_of(scheduler: Scheduler, action) -> list[str]:
    """The SQL statements (with their values) that `action` runs on this thread's store connection."""
    statements: list[str] = []
    connection = scheduler.store.read()
    connection.set_trace_callback(statements.append)
    try:
        action()
    finally:
        connection.set_trace_callback(None)
    return [s for s in statements if s.split()[0].upper() in ("SELECT", "UPDATE", "INSERT", "DELETE", "WITH")]


def full_scans(scheduler: Scheduler, statements: list[str]) -> list[str]:
    """The query plan steps that read a whole table of frames, failures or blocks."""
    scans = []
    for statement in statements:
        for row in scheduler.store.read().execute("EXPLAIN QUERY PLAN " + statement):
            detail = row["detail"]
            if detail.startswith("SCAN") and any(table in detail for table in
                                                 ("frames", "frame_failures", "task_worker_failures")):
                scans.append(f"{detail} in {statement[:80]}")
    return scans


@pytest.mark.sqlite_only
def test_claims_and_the_lease_reaper_use_indexes_not_the_failure_history(scheduler, clock):
    scheduler.policy.frame_fail_workers = 1
    a, b = register(scheduler, "a"), register(scheduler, "b")
    task_id = submit(scheduler, 1, 40, frame_timeout=60)
    for _ in range(30):  # a long failure history on many frames
        fail(scheduler, b, scheduler.claim(b, prefer_task_id=task_id)[0])
        scheduler.retry_failed_frames(task_id)
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, lease["frame"], lease["lease_id"], "rendering")
    claim = statements_of(scheduler, lambda: scheduler.claim(a))
    reap = statements_of(scheduler, scheduler.expire_leases)
    assert any("task_worker_failures" in s for s in claim) and any("render_deadline" in s for s in reap)
    assert full_scans(scheduler, claim + reap) == []


@pytest.mark.sqlite_only
def test_a_claim_finds_queued_frames_in_the_status_index_alone(scheduler):
    # A test of the frame's kind in the claim (a column the index lacks) once made SQLite walk the task's frame rows
    # one by one: 3-8 times the claim's time. Every lookup of queued frames must be answered by the index.
    worker = register(scheduler, "w")
    task_id = submit(scheduler, 1, 500)
    for _ in range(100):
        scheduler.claim(worker)
    claim = statements_of(scheduler, lambda: scheduler.claim(worker, prefer_task_id=task_id))
    queued_lookups = [detail for statement in claim if "'queued'" in statement
                      for detail in (row["detail"] for row in scheduler.store.read().execute(
                          "EXPLAIN QUERY PLAN " + statement)) if detail.startswith("SEARCH f ")]
    assert queued_lookups, claim
    assert all("COVERING INDEX frames_by_status" in detail for detail in queued_lookups), queued_lookups


# -- timeouts ---------------------------------------------------------------------------------------------------------


def test_timeouts_default_from_the_policy_and_go_to_the_worker(scheduler):
    plain = submit(scheduler, 1, 1)
    timed = submit(scheduler, 1, 1, frame_timeout=120, no_progress_timeout=30.5, priority=1)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    assert (lease["task_id"], lease["frame_timeout"], lease["no_progress_timeout"]) == (timed, 120, 30.5)
    lease, _ = scheduler.claim(a)
    assert (lease["task_id"], lease["frame_timeout"], lease["no_progress_timeout"]) == (plain, None, 600)
    assert scheduler.task_detail(plain)["frame_timeout"] is None
    scheduler.policy.frame_timeout, scheduler.policy.no_progress_timeout = 3600, 90
    task = scheduler.task_detail(submit(scheduler, 1, 1))
    assert (task["frame_timeout"], task["no_progress_timeout"]) == (3600, 90)


@pytest.mark.parametrize("field, value", [("frame_timeout", 0), ("frame_timeout", 0.5), ("frame_timeout", -5),
                                          ("no_progress_timeout", 7 * 86400 + 1), ("no_progress_timeout", True),
                                          ("frame_timeout", float("nan"))])
def test_timeouts_outside_a_second_to_a_week_are_refused(scheduler, field, value):
    with pytest.raises(BadRequest, match=f"'{field}' must be a number of seconds from 1 to 604800"):
        submit(scheduler, 1, 1, **{field: value})
    assert scheduler.list_tasks() == []


def render_with_heartbeats(scheduler: Scheduler, clock: FakeClock, worker_id: int, lease: dict, seconds: float,
                           every: float = 5.0) -> None:
    """Let `seconds` pass while the worker keeps its lease alive, as a live worker whose Blender hangs does."""
    for _ in range(int(seconds // every)):
        clock.now += every
        scheduler.heartbeat(worker_id, [lease["lease_id"]])
    clock.now += seconds % every


def test_a_frame_rendering_far_past_its_timeout_fails_on_its_worker_and_is_queued(scheduler, clock):
    task_id = submit(scheduler, 1, 1, frame_timeout=60)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, 1, lease["lease_id"], "rendering", started_at=1.0)  # the worker's clock is wrong
    render_with_heartbeats(scheduler, clock, a, lease, 60 + 2 * 15 - 1)
    assert scheduler.expire_leases() == 0  # within frame_timeout + 2 lease lengths
    render_with_heartbeats(scheduler, clock, a, lease, 2)
    assert scheduler.expire_leases() == 1
    frame = scheduler.frame(task_id, 1)
    assert (frame["status"], frame["failures"], frame["lease_id"], frame["worker_id"]) == ("queued", 1, None, None)
    assert frame["error"].startswith("timed out: ") and "60 s" in frame["error"]
    assert scheduler.list_workers()[0]["frames_failed"] == 1
    # The old lease is dead: the worker learns it at its heartbeat and its late reports change nothing.
    assert scheduler.heartbeat(a, [lease["lease_id"]])["revoked"] == [lease["lease_id"]]
    before = frame_row(scheduler, task_id, 1)
    for status in ("failed", "done", "rendering", "released"):
        with pytest.raises(Conflict):
            scheduler.report(a, task_id, 1, lease["lease_id"], status, error="timed out")
    with pytest.raises(Conflict):
        scheduler.record_output(a, task_id, 1, lease["lease_id"], "f_0001.png", "b" * 64, 10)
    assert frame_row(scheduler, task_id, 1) == before
    # a failed it, so b gets it first; a frame without a timeout never times out.
    assert scheduler.claim(b)[0]["frame"] == 1


def test_a_timed_out_frame_is_failed_by_the_different_workers_rule(scheduler, clock):
    scheduler.policy.frame_fail_workers = 1
    task_id = submit(scheduler, 1, 1, frame_timeout=10)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, 1, lease["lease_id"], "rendering")
    render_with_heartbeats(scheduler, clock, a, lease, 41)
    scheduler.claim(a)  # claims reap too
    task = scheduler.task_detail(task_id)
    assert task["status"] == "failed" and task["failed_frames"] == [1]
    assert task["frames"][0]["error"].startswith("timed out: ") and task["frames"][0]["failed_on"] == ["a"]
    with pytest.raises(Conflict, match="already failed"):
        scheduler.report(a, task_id, 1, lease["lease_id"], "failed", error="timed out")


def test_frames_without_a_timeout_render_as_long_as_their_worker_lives(scheduler, clock):
    scheduler.policy.lease_seconds = scheduler.policy.alive_timeout = 7200  # fewer heartbeats to simulate
    task_id = submit(scheduler, 1, 1)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, 1, lease["lease_id"], "rendering")
    render_with_heartbeats(scheduler, clock, a, lease, 7 * 86400, every=3600)
    assert scheduler.expire_leases() == 0
    finish(scheduler, a, lease)


# -- Python in .blend files -------------------------------------------------------------------------------------------


PYTHON_SENTENCE = ("waiting: the file runs Python (scripts or drivers); it needs a worker started with "
                   "--allow-blend-python")


def test_tasks_that_run_python_go_only_to_workers_that_allow_it(scheduler):
    task_id = submit(scheduler, 1, 2, needs_python=True)
    safe = register(scheduler, "safe")
    assert scheduler.claim(safe) == (None, "no frames waiting")
    task = scheduler.task_detail(task_id)
    assert task["needs_python"] is True and task["waiting_reason"] == PYTHON_SENTENCE
    trusting = scheduler.register_worker("trusting", "host", "3.4.1", 2, allows_python=True)
    assert trusting["allows_python"] is True
    assert {w["name"]: w["allows_python"] for w in scheduler.list_workers()} == {"safe": False, "trusting": True}
    lease, _ = scheduler.claim(trusting["worker_id"])
    assert lease["task_id"] == task_id and lease["needs_python"] is True


def test_released_with_needs_python_marks_the_task_without_counting_a_failure(scheduler):
    task_id = submit(scheduler, 1, 2)
    safe = register(scheduler, "safe")
    lease, _ = scheduler.claim(safe)
    assert lease["needs_python"] is False
    with pytest.raises(BadRequest, match="needs_python"):
        scheduler.report(safe, task_id, 1, lease["lease_id"], "failed", needs_python=True)
    frame = scheduler.report(safe, task_id, 1, lease["lease_id"], "released", needs_python=True)
    assert (frame["status"], frame["failures"], frame["attempts"]) == ("queued", 0, 0)
    task = scheduler.task_detail(task_id)
    assert task["needs_python"] is True and task["blocked_workers"] == []
    assert task["waiting_reason"] == PYTHON_SENTENCE
    assert scheduler.list_workers()[0]["frames_failed"] == 0
    assert scheduler.claim(safe) == (None, "no frames waiting")
    trusting = scheduler.register_worker("trusting", "host", "3.4.1", 2, allows_python=True)["worker_id"]
    assert scheduler.claim(trusting)[0]["frame"] == 1
    # A plain release leaves the task as it is.
    plain = submit(scheduler, 1, 1)
    lease, _ = scheduler.claim(safe)
    scheduler.report(safe, plain, 1, lease["lease_id"], "released")
    assert scheduler.task_detail(plain)["needs_python"] is False


# -- owners -----------------------------------------------------------------------------------------------------------


def test_an_artist_may_cancel_only_their_own_tasks(scheduler):
    task_id = submit(scheduler, 1, 2, owner="anna")
    assert scheduler.task_detail(task_id)["owner"] == "anna"
    with pytest.raises(Forbidden) as refused:
        scheduler.cancel_task(task_id, by_owner="ben")
    assert refused.value.status == 403
    assert refused.value.message == f"task {task_id} belongs to anna; an artist may cancel only their own tasks"
    assert scheduler.task_detail(task_id)["status"] == "queued"
    assert scheduler.cancel_task(task_id, by_owner="anna")["status"] == "canceled"
    other = submit(scheduler, 1, 1, owner="ben")
    assert scheduler.cancel_task(other)["status"] == "canceled"  # an admin may cancel any task


# -- fencing: reports from a worker that lost its lease change nothing ------------------------------------------------


def frame_row(scheduler: Scheduler, task_id: int, frame: int) -> tuple:
    """Every column of the stored frame row, as stored."""
    return tuple(scheduler.store.read().execute("SELECT * FROM frames WHERE task_id = ? AND frame = ?",
                                                (task_id, frame)).fetchone())


def farm_counts(scheduler: Scheduler) -> tuple:
    """Every counter a report may change: tasks, workers, failure history and blocks."""
    db = scheduler.store.read()
    return tuple(tuple(tuple(row) for row in db.execute(sql)) for sql in (
        "SELECT * FROM tasks ORDER BY task_id", "SELECT * FROM workers ORDER BY worker_id",
        "SELECT * FROM frame_failures ORDER BY task_id, frame, failed_at, worker_id",
        "SELECT * FROM task_worker_failures ORDER BY task_id, worker_id",
        "SELECT * FROM frames ORDER BY task_id, frame"))


def lost_lease(scheduler: Scheduler, clock: FakeClock, how: str) -> tuple[int, int, dict]:
    """A task whose frame 1 worker `a` held under a lease that is no longer live: (task, a, a's old lease)."""
    task_id = submit(scheduler, 1, 1)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    lease, _ = scheduler.claim(a)
    scheduler.report(a, task_id, 1, lease["lease_id"], "rendering")
    scheduler.record_output(a, task_id, 1, lease["lease_id"], "f_0001.png", "c" * 64, 10)
    clock.now += 16  # a went silent
    if how == "expired":
        assert scheduler.expire_leases() == 1
    else:  # handed to another worker, which is rendering it
        again, _ = scheduler.claim(b)
        scheduler.report(b, task_id, 1, again["lease_id"], "rendering")
    return task_id, a, lease


@pytest.mark.parametrize("how", ["expired", "handed over"])
@pytest.mark.parametrize("status", ["rendering", "done", "failed", "released", "upload"])
def test_a_lost_lease_gets_409_and_changes_nothing(scheduler, clock, how, status):
    task_id, a, lease = lost_lease(scheduler, clock, how)
    before_row, before = frame_row(scheduler, task_id, 1), farm_counts(scheduler)
    with pytest.raises(Conflict, match="no longer holds the lease"):
        if status == "upload":
            scheduler.record_output(a, task_id, 1, lease["lease_id"], "f_0001.png", "d" * 64, 20)
        else:
            scheduler.report(a, task_id, 1, lease["lease_id"], status, error="late", render_seconds=1.0)
    assert frame_row(scheduler, task_id, 1) == before_row
    assert farm_counts(scheduler) == before


@pytest.mark.parametrize("final", ["done", "failed"])
@pytest.mark.parametrize("fail_workers", [1, 3])
def test_the_same_final_report_twice_changes_nothing(scheduler, final, fail_workers):
    scheduler.policy.frame_fail_workers = fail_workers
    task_id = submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    if final == "done":
        first = finish(scheduler, a, lease)
    else:
        scheduler.report(a, task_id, 1, lease["lease_id"], "rendering")
        first = fail(scheduler, a, lease)
    before_row, before = frame_row(scheduler, task_id, 1), farm_counts(scheduler)
    again = scheduler.report(a, task_id, 1, lease["lease_id"], final, error="again", render_seconds=9.0)
    assert again["status"] == first["status"] and again["failures"] == first["failures"]
    assert frame_row(scheduler, task_id, 1) == before_row
    assert farm_counts(scheduler) == before
    worker = scheduler.list_workers()[0]
    assert (worker["frames_done"], worker["frames_failed"]) == ((1, 0) if final == "done" else (0, 1))


def test_a_repeated_failure_is_recognised_after_the_frame_went_to_another_worker(scheduler):
    task_id = submit(scheduler, 1, 1)
    a, b = register(scheduler, "a"), register(scheduler, "b")
    lease, _ = scheduler.claim(a)
    fail(scheduler, a, lease)
    again, _ = scheduler.claim(b)
    before_row, before = frame_row(scheduler, task_id, 1), farm_counts(scheduler)
    answer = fail(scheduler, a, lease, error="repeat")
    assert answer["lease_id"] is None  # b's lease is not shown to a
    assert frame_row(scheduler, task_id, 1) == before_row and farm_counts(scheduler) == before
    finish(scheduler, b, again)  # b's lease is untouched


def test_a_data_dir_from_before_these_rules_gets_their_columns(tmp_path, clock):
    import sqlite3

    path = str(tmp_path / "old.sqlite3")
    Store(path).close()
    # Take the database back to before blocks, timeouts, Python and owners.
    db = sqlite3.connect(path)
    db.executescript("DROP INDEX frames_by_deadline; DROP TABLE task_worker_failures;")
    for table, column in [("tasks", "frame_timeout"), ("tasks", "no_progress_timeout"), ("tasks", "needs_python"),
                          ("tasks", "owner"), ("workers", "allows_python"), ("frames", "render_deadline"),
                          ("frame_failures", "cleared"), ("frame_failures", "lease_id")]:
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    # ... and to before numbered migrations: no record of any.
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%yoyo%'").fetchall():
        db.execute(f"DROP TABLE {table}")
    db.commit()
    db.close()
    scheduler = Scheduler(Store(path), Policy(), clock)
    task_id = submit(scheduler, 1, 1, frame_timeout=60, owner="anna")
    a = register(scheduler, "a")
    for _ in range(3):
        fail(scheduler, a, scheduler.claim(a)[0])
    task = scheduler.task_detail(task_id)
    assert task["owner"] == "anna" and task["frame_timeout"] == 60 and len(task["blocked_workers"]) == 1


@pytest.mark.sqlite_only  # a coordinator alone on its database
def test_a_restart_gives_rendering_frames_time_before_they_count_as_timed_out(database, clock):
    first = Scheduler(Store(database), Policy(), clock)
    task_id = submit(first, 1, 1, frame_timeout=10)
    a = register(first, "a")
    lease, _ = first.claim(a)
    first.report(a, task_id, 1, lease["lease_id"], "rendering")
    clock.now += 120  # the coordinator was down for two minutes
    second = Scheduler(Store(database), Policy(), clock)
    second.recover_after_restart()
    assert second.expire_leases() == 0
    clock.now += 16  # the worker did not come back
    assert second.expire_leases() == 1 and second.frame(task_id, 1)["failures"] == 0


def test_idle_poll_grows_with_the_live_farm_within_limits(scheduler, clock):
    # One worker asks often, so a new task starts at once on a small farm.
    register(scheduler, "solo")
    assert scheduler.idle_poll_seconds() == 0.1
    for n in range(200):
        register(scheduler, f"node-{n:03d}")
    # The advice is reused for a few seconds: counting the farm reads every worker.
    assert scheduler.idle_poll_seconds() == 0.1
    clock.now += 6
    # 201 live workers over 50 claims a second.
    assert scheduler.idle_poll_seconds() == pytest.approx(201 / 50)
    assert scheduler.claim(register(scheduler, "late"))[0] is None
    # Workers not heard from within the alive timeout do not count; the shortest poll is the floor.
    clock.now += 60
    assert scheduler.idle_poll_seconds() == 0.1


def test_idle_poll_has_a_ceiling(tmp_path, clock):
    scheduler = Scheduler(Store(str(tmp_path / "state.sqlite3")),
                          Policy(idle_claims_per_second=1.0, idle_poll_limits=(0.5, 30.0)), clock)
    for n in range(100):
        register(scheduler, f"node-{n:03d}")
    clock.now += 6
    assert scheduler.idle_poll_seconds() == 30.0
    assert scheduler.register_worker("one-more", "host", "3.4.1", 2)["poll_seconds"] == 30.0


def test_finish_frame_is_one_transaction_fenced_by_the_lease(scheduler):
    """The lease is lost after the check that comes before the file is read (the file is then already stored):
    the transaction that records the output and the done state applies nothing."""
    task_id = submit(scheduler, 1, 1)
    worker = register(scheduler, "w1")
    lease, _ = scheduler.claim(worker)
    assert scheduler.check_finish(worker, task_id, 1, lease["lease_id"], "f_0001.png") is None
    scheduler.report(worker, task_id, 1, lease["lease_id"], "released")  # lost while the file streamed in
    with pytest.raises(Conflict):
        scheduler.finish_frame(worker, task_id, 1, lease["lease_id"], ("f_0001.png", "b" * 64, 10))
    frame = scheduler.frame(task_id, 1)
    assert frame["status"] == "queued" and frame["output_sha256"] is None and frame["output"] is None
    lease, _ = scheduler.claim(worker)
    done = scheduler.finish_frame(worker, task_id, 1, lease["lease_id"], ("f_0001.png", "c" * 64, 10),
                                  render_seconds=2.0)
    assert done["status"] == "done" and done["output_sha256"] == "c" * 64
    assert scheduler.check_finish(worker, task_id, 1, lease["lease_id"], "f_0001.png")["status"] == "done"


def test_the_scheduler_tells_the_metrics_what_happened(scheduler, clock):
    events: list[tuple[str, int]] = []
    scheduler.count = lambda event, number: events.append((event, number)) if number else None
    submit(scheduler, 1, 2)
    a = register(scheduler, "a")
    lease, _ = scheduler.claim(a)
    finish(scheduler, a, lease)  # the older way: a rendering report, the file, then a done report
    scheduler.claim(a)
    clock.now += 100  # past the lease: the second frame goes back to the queue
    scheduler.expire_leases()
    assert events == [("dispatched", 1), ("report:rendering", 1), ("report:done", 1), ("finished", 1),
                      ("dispatched", 1), ("expired", 1)]
