"""The coordinator on PostgreSQL: picked by --database or RENDERQ_DATABASE, migrated once however many coordinators
start together, still serving after the database restarts, and one coordinator at a time running the jobs that must
run once (the lease sweep, the orphan file sweep). The tests shared with SQLite are marked both_databases
elsewhere."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from coordinator.config import Config
from coordinator.scheduler import Policy, Scheduler, TaskFile, TaskSpec
from coordinator.store import Store
from coordinator.store.schema import MIGRATIONS_DIR, applied_migrations

ALL_MIGRATIONS = sorted(os.path.splitext(name)[0] for name in os.listdir(MIGRATIONS_DIR)
                        if name.endswith((".sql", ".py")))
on_postgres = pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)


def test_the_database_setting_picks_postgresql_and_refuses_anything_else():
    url = "postgresql://renderq@db.example:5432/farm"
    assert Config.from_env({"RENDERQ_DATABASE": url}).database == url
    assert Config.from_env({}, database=url).database == url
    assert Config.from_env({}).database == ""  # SQLite in the data dir
    with pytest.raises(ValueError, match="database must be a postgresql:// URL"):
        Config.from_env({"RENDERQ_DATABASE": "mysql://farm"})


@on_postgres
def test_coordinators_starting_together_migrate_once(database):
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            stores.append(Store(database))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(len(store.migrations_applied) for store in stores) == [0, 0, len(ALL_MIGRATIONS)]
    assert applied_migrations(stores[0].read()) == ALL_MIGRATIONS


@on_postgres
def test_a_migration_lock_left_by_a_killed_coordinator_does_not_stop_the_next_start(database):
    Store(database).close()
    with Store(database).transaction() as db:
        db.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 4242)")
    assert Store(database).migrations_applied == []


def two_schedulers(database: str, frames: int) -> tuple[list[float], Scheduler, Scheduler, int]:
    """Two coordinators' schedulers on one database with one clock (`clock_now[0]`, to move), and a task of
    `frames` frames submitted through the first: (clock_now, first, second, task_id)."""
    clock_now = [1000.0]
    first = Scheduler(Store(database), Policy(), clock=lambda: clock_now[0])
    second = Scheduler(Store(database), Policy(), clock=lambda: clock_now[0])
    task_id = first.submit_task(TaskSpec(name="shot", files=[TaskFile("shot.blend", "a" * 64, 100)],
                                         main_file="shot.blend", frame_start=1, frame_end=frames))["task_id"]
    return clock_now, first, second, task_id


@on_postgres
def test_one_coordinator_at_a_time_sweeps_expired_leases(database):
    clock_now, first, second, task_id = two_schedulers(database, frames=2)
    worker_id = first.register_worker("w", "host", "3.4.1", 2)["worker_id"]
    first.claim(worker_id)
    clock_now[0] += 3600  # the worker went silent long ago
    with first.store.transaction() as db:
        assert first.store.engine.try_lock(db, "lease sweep")
        assert second.expire_leases() == 0  # the first coordinator is sweeping
    assert second.expire_leases() == 1
    assert first.task_detail(task_id, with_frames=False)["progress"]["queued"] == 2


@on_postgres
def test_a_lease_taken_back_by_one_coordinator_is_refused_by_the_other(database):
    from coordinator.errors import Conflict

    clock_now, first, second, task_id = two_schedulers(database, frames=1)
    silent = first.register_worker("silent", "host", "3.4.1", 2)["worker_id"]
    lease, _ = first.claim(silent)
    clock_now[0] += 3600
    assert second.expire_leases() == 1  # the other coordinator's reaper took the frame back
    other = second.register_worker("other", "host", "3.4.1", 2)["worker_id"]
    again, _ = second.claim(other)
    assert again["frame"] == lease["frame"]
    for coordinator in (first, second):
        with pytest.raises(Conflict):
            coordinator.report(silent, task_id, lease["frame"], lease["lease_id"], "rendering")
        with pytest.raises(Conflict):
            coordinator.finish_frame(silent, task_id, lease["frame"], lease["lease_id"], ("f_0001.png", "b" * 64, 10))
    second.finish_frame(other, task_id, again["frame"], again["lease_id"], ("f_0001.png", "c" * 64, 10))
    task = first.task_detail(task_id, with_frames=False)
    assert task["status"] == "done" and task["progress"]["done"] == 1


@on_postgres
def test_one_coordinator_at_a_time_sweeps_orphan_files(database):
    first, second = Store(database), Store(database)
    with first.exclusive("orphan sweep") as mine:
        assert mine
        with second.exclusive("orphan sweep") as theirs:
            assert not theirs
    with second.exclusive("orphan sweep") as theirs:
        assert theirs  # free again once the first is done


@on_postgres
def test_a_coordinator_on_postgresql_keeps_its_state_there_and_survives_a_database_restart(farm, postgres_cluster):
    farm.start_coordinator()
    assert not os.path.exists(os.path.join(farm.data_dir, "renderq.sqlite3"))
    api = farm.api
    status, answer = api.call("POST", "/register_worker", {"name": "w1", "blender_version": "3.4.1"})
    assert status == 200, answer
    # What the coordinator stored is in the database, for any other coordinator on it to read.
    assert [w["name"] for w in Store(farm.database).list_workers()] == ["w1"]

    postgres_cluster.restart()
    # Its connections were cut: each is made again, and no request fails for it.
    for name in ("w2", "w3"):
        status, answer = api.call("POST", "/register_worker", {"name": name, "blender_version": "3.4.1"})
        assert status == 200, answer
    assert sorted(api.workers()) == ["w1", "w2", "w3"]


def test_a_coordinator_whose_database_cannot_be_reached_says_so_and_exits(tmp_path):
    from harness import Process, free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/farm"  # nothing listens there
    coordinator = Process(["coordinator", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "data"),
                           "--database", url], str(tmp_path / "coordinator.log"))
    try:
        assert coordinator.wait(30) == 1
    finally:
        coordinator.kill_group()
    assert "cannot open the database: connection failed" in coordinator.output()


@contextlib.contextmanager
def second_coordinator(farm, tmp_path) -> Iterator:
    """A second coordinator process on the same database as `farm`'s (started first), stopped afterwards."""
    from harness import Farm

    farm.start_coordinator()
    second = Farm(str(tmp_path / "second"), database=farm.database)
    os.makedirs(second.root)
    try:
        second.start_coordinator()
        yield second
    finally:
        second.stop()


@on_postgres
def test_coordinators_on_one_database_share_their_tokens(farm, tmp_path):
    with second_coordinator(farm, tmp_path) as second:
        for role in ("admin", "artist", "worker"):
            assert second.token(role) == farm.token(role)  # its files hold the farm's tokens, not new ones
        # A worker registered through one coordinator is known to the other, with the same token.
        status, _ = farm.api.call("POST", "/register_worker", {"name": "w1", "blender_version": "3.4.1"},
                                  token=farm.token("worker"))
        assert status == 200
        assert "w1" in second.api.workers()
        status, _ = second.api.call("GET", "/list_workers", token="not-the-farm-token-0123456789")
        assert status == 401


def add_artist(database: str, data_dir: str, name: str) -> subprocess.CompletedProcess:
    """`renderq coordinator --add-artist NAME` on the cluster's database."""
    from harness import ROOT

    return subprocess.run([sys.executable, "-m", "renderq", "coordinator", "--data-dir", data_dir,
                           "--database", database, "--add-artist", name],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))


@on_postgres
def test_a_named_artist_added_on_the_database_works_on_every_coordinator_at_once(farm, tmp_path):
    with second_coordinator(farm, tmp_path) as second:
        added = add_artist(farm.database, str(tmp_path / "cli"), "dave")
        assert added.returncode == 0, added.stderr
        assert "kept in the database" in added.stdout
        token = added.stdout.split("token ", 1)[1].split()[0]
        for coordinator in (farm, second):  # both running coordinators know dave now, without a restart
            status, answer = coordinator.api.call("GET", "/tasks", token=token)
            assert status == 200, answer
        again = add_artist(farm.database, str(tmp_path / "cli"), "dave")
        assert again.returncode == 2 and "already a token for 'dave'" in again.stderr


def test_a_write_that_lost_to_another_coordinators_locks_is_a_503_to_try_again():
    # What the cluster throughput run met: after its turns gave way five times, a log append on a task row another
    # coordinator kept locked failed; it is answered as a busy database (clients retry or move on), not as a 500.
    from psycopg import errors as psycopg_errors

    from coordinator.errors import database_refusal

    for error in (psycopg_errors.LockNotAvailable("canceling statement due to lock timeout"),
                  psycopg_errors.DeadlockDetected("deadlock detected")):
        status, sentence = database_refusal(error)
        assert status == 503 and "busy" in sentence and "nothing was changed" in sentence
    assert database_refusal(psycopg_errors.DataException("bad"))[0] == 500


@on_postgres
def test_two_coordinators_turns_write_one_tasks_log_and_counts_without_waiting_for_each_other(database):
    # What the cluster throughput run met: each turn updated the task's row where a heartbeat's log line or a finish
    # ran, and held it until its COMMIT; the other coordinator's turns waited, gave way and failed. Now a turn
    # writes task rows at its end: both coordinators' turns, open at once far longer than a turn waits for a lock,
    # go through.
    import time

    _, first, second, task_id = two_schedulers(database, frames=6)
    errors: list[BaseException] = []

    def turns(scheduler: Scheduler, name: str) -> None:
        worker_id = scheduler.register_worker(name, "host", "3.4.1", 2)["worker_id"]
        try:
            for turn in range(3):
                with scheduler.store.batch():
                    lease, _ = scheduler.claim(worker_id)
                    scheduler.append_log(task_id, worker_id, f"{name} turn {turn}\n")
                    time.sleep(0.3)  # the other coordinator's turn runs meanwhile
                    scheduler.append_log(task_id, worker_id, f"{name} turn {turn} again\n")
                    scheduler.finish_frame(worker_id, task_id, lease["frame"], lease["lease_id"],
                                           (f"f_{lease['frame']:04d}.png", f"{lease['frame']:064x}", 10))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=turns, args=(scheduler, name))
               for scheduler, name in ((first, "a"), (second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    task = first.task_detail(task_id, with_frames=False)
    assert task["status"] == "done" and task["progress"]["done"] == 6 and task["started_at"] is not None
    log = first.read_log(task_id, 0)
    lines = log["text"].splitlines()
    assert sorted(lines) == sorted(f"{name} turn {turn}{again}" for name in "ab" for turn in range(3)
                                   for again in ("", " again"))
    assert log["size"] == log["next_offset"] == len(log["text"].encode())
    for name in "ab":  # a turn's lines stay in its order
        mine = [line for line in lines if line.startswith(name)]
        assert mine == [f"{name} turn {turn}{again}" for turn in range(3) for again in ("", " again")]
