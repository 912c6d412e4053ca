"""Group commit under concurrency: every acknowledged write is there, every failed one is wholly undone, and the WAL
stays bounded when the coordinator checkpoints it. Several stores on one database (as several coordinators on one
PostgreSQL) never hand out a frame twice and count every frame done exactly once. Both engines, but the WAL."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time

import pytest

from coordinator.batcher import Batcher
from coordinator.scheduler import Policy, Scheduler, TaskFile, TaskSpec
from coordinator.store import Store

pytestmark = pytest.mark.both_databases


class Boom(Exception):
    """A failure raised inside one writer's transaction."""


def test_concurrent_writers_share_commits_without_losing_or_leaking_writes(database):
    store = Store(database)
    with store.transaction() as db:
        db.execute("CREATE TABLE scratch (writer INTEGER, n INTEGER, part INTEGER)")
    acknowledged: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        chance = random.Random(number)
        try:
            for n in range(40):
                fail = chance.random() < 0.2
                try:
                    with store.transaction(durable=chance.random() < 0.7) as db:
                        # Two rows per write: a rollback must take both or neither.
                        db.execute("INSERT INTO scratch VALUES (?, ?, 1)", (number, n))
                        db.execute("INSERT INTO scratch VALUES (?, ?, 2)", (number, n))
                        if fail:
                            raise Boom()
                except Boom:
                    continue
                with lock:
                    acknowledged.append((number, n))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    with store.transaction():
        pass  # the last non-durable writes are committed with this one
    check = Store(database).read()  # a connection of its own: it sees only what was committed
    rows = check.execute("SELECT writer, n, COUNT(*) FROM scratch GROUP BY writer, n").fetchall()
    assert all(count == 2 for _, _, count in rows)
    assert sorted((writer, n) for writer, n, _ in rows) == sorted(acknowledged)
    assert len(acknowledged) > 400


@pytest.mark.sqlite_only
def _count_syncs(store: Store, delay: float = 0.0) -> list[float]:
    """Record when each of the store's WAL syncs ended (it still syncs; `delay` makes the disk look slow)."""
    ended: list[float] = []
    sync = store.engine.sync

    def counted() -> None:
        time.sleep(delay)
        sync()
        ended.append(time.monotonic())

    store.engine.sync = counted  # type: ignore[method-assign]  # counts the real sync, on this store only
    return ended


def test_on_sqlite_a_commit_is_synced_after_it_and_one_sync_covers_the_commits_before_it(tmp_path):
    path = str(tmp_path / "state.sqlite3")
    store = Store(path)
    # SQLite's own sync inside the COMMIT is off: the store syncs the WAL itself, after the COMMIT.
    assert store.read().execute("PRAGMA synchronous").fetchone()[0] == 1
    syncs = _count_syncs(store)
    with store.transaction() as db:
        db.execute("CREATE TABLE scratch (n INTEGER)")
    assert len(syncs) == 1  # a write returns once it is on disk
    with store.transaction(durable=False) as db:
        db.execute("INSERT INTO scratch VALUES (1)")
    assert len(syncs) == 1  # a write nobody is promised waits for no disk
    batches = []
    for n in (2, 3):
        with store.batch(sync=False), store.transaction() as db:
            db.execute("INSERT INTO scratch VALUES (?)", (n,))
        batches.append(store.last_batch())
    assert len(syncs) == 1 and batches[0] < batches[1]
    store.make_durable(batches[1])
    store.make_durable(batches[0])  # covered by the sync of the later batch
    assert len(syncs) == 2
    assert [row[0] for row in store.read().execute("SELECT n FROM scratch ORDER BY n")] == [1, 2, 3]
    # synchronous "normal" (no power cut to survive): never synced after a COMMIT.
    relaxed = Store(str(tmp_path / "relaxed.sqlite3"), synchronous="normal")
    relaxed_syncs = _count_syncs(relaxed)
    with relaxed.transaction() as db:
        db.execute("CREATE TABLE scratch (n INTEGER)")
    assert relaxed_syncs == []


def test_a_turn_is_answered_only_once_its_commit_is_on_disk_while_the_next_turn_runs(tmp_path):
    store = Store(str(tmp_path / "state.sqlite3"))
    with store.transaction() as db:
        db.execute("CREATE TABLE scratch (n INTEGER)")
    syncs = _count_syncs(store, delay=0.3)
    batcher = Batcher(store)
    written: dict[int, float] = {}

    def write(n: int) -> int:
        written[n] = time.monotonic()
        with store.transaction() as db:
            db.execute("INSERT INTO scratch VALUES (?)", (n,))
        return n

    async def calls() -> list[tuple[int, float]]:
        async def one(n: int) -> tuple[int, float]:
            answer = await batcher.call(lambda: write(n))
            return answer, time.monotonic()
        first = asyncio.ensure_future(one(1))
        await asyncio.sleep(0.1)  # the first turn is committed and its sync under way
        second = await one(2)
        return [await first, second]

    try:
        answers = asyncio.run(calls())
    finally:
        batcher.close()
    # Each answer came after a sync that ended after it was committed; the second turn ran during the first sync.
    assert [n for n, _ in answers] == [1, 2]
    assert 1 <= len(syncs) <= 2
    assert syncs[0] <= answers[0][1] and syncs[-1] <= answers[1][1]
    assert written[2] < syncs[0]
    assert [row[0] for row in store.read().execute("SELECT n FROM scratch ORDER BY n")] == [1, 2]


def test_a_call_that_comes_just_after_a_lone_one_joins_its_turn(tmp_path):
    """A turn that would start with only a few calls waits GATHER_SECONDS for more, since each COMMIT writes every
    page it changed: a call queued half a millisecond after a lone one shares its turn. A busy machine can delay the
    second call past the wait, so most of five tries must share, not all; without the wait almost none would."""
    store = Store(str(tmp_path / "state.sqlite3"))
    turns: list[int] = []
    batcher = Batcher(store, on_turn=lambda calls, _seconds, _commit: turns.append(calls))

    async def pair() -> None:
        first = asyncio.ensure_future(batcher.call(lambda: 1))
        await asyncio.sleep(0)  # the first call is queued and the turn thread woken
        time.sleep(0.0005)  # noqa: ASYNC251 - the loop itself must not run meanwhile, as under load
        second = asyncio.ensure_future(batcher.call(lambda: 2))
        assert [await first, await second] == [1, 2]

    try:
        for _ in range(5):
            asyncio.run(pair())
    finally:
        batcher.close()
    assert sum(turns) == 10
    assert turns.count(2) >= 3, turns


def test_checkpoints_keep_the_wal_bounded(tmp_path):
    path = str(tmp_path / "db.sqlite3")
    store = Store(path)
    store.checkpoint_in_background()
    with store.transaction() as db:
        db.execute("CREATE TABLE scratch (payload BLOB)")
    # About 26 MB written in all; without the checkpoints (autocheckpoint is off) the WAL would hold all of it.
    for _ in range(20):
        for _ in range(20):
            with store.transaction() as db:
                db.execute("INSERT INTO scratch VALUES (?)", (os.urandom(64 * 1024),))
        store.checkpoint()
    assert os.path.getsize(path + "-wal") < 12 * 1024 * 1024


def test_coordinators_on_one_database_never_hand_out_a_frame_twice(database):
    """Three stores on one database, as three coordinators, each with workers claiming and finishing in threads:
    every frame is leased to one worker at a time, done exactly once, and the task ends done."""
    schedulers = [Scheduler(Store(database), Policy()) for _ in range(3)]
    frames = 120
    task_id = schedulers[0].submit_task(TaskSpec(name="shot", files=[TaskFile("shot.blend", "a" * 64, 100)],
                                                 main_file="shot.blend", frame_start=1, frame_end=frames))["task_id"]
    leased: list[tuple[int, str]] = []
    done: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        scheduler = schedulers[number % len(schedulers)]
        try:
            worker_id = scheduler.register_worker(f"w{number}", "host", "3.4.1", 2)["worker_id"]
            while True:
                lease, _ = scheduler.claim(worker_id)
                if lease is None:
                    with lock:
                        if len(done) == frames:
                            return
                    continue
                with lock:
                    leased.append((lease["frame"], lease["lease_id"]))
                frame = lease["frame"]
                scheduler.report(worker_id, task_id, frame, lease["lease_id"], "rendering", started_at=1.0)
                scheduler.finish_frame(worker_id, task_id, frame, lease["lease_id"],
                                       (f"f_{frame:04d}.png", "b" * 64, 10), render_seconds=0.1)
                with lock:
                    done.append(frame)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert sorted(frame for frame, _ in leased) == list(range(1, frames + 1))  # no frame leased twice
    assert sorted(done) == list(range(1, frames + 1))
    task = Scheduler(Store(database), Policy()).task_detail(task_id, with_frames=False)
    assert task["status"] == "done" and task["progress"]["done"] == frames


def test_turns_of_coordinators_on_one_database_never_deadlock(database, db_engine):
    """Three coordinators' batchers (one transaction per turn) finishing frames of four tasks at once: their turns
    lock the tasks' rows in any order, yet no call fails, none waits for a deadlock to be found, and every frame is
    done exactly once (on PostgreSQL a call that would wait for another turn's locks gives way and goes first in
    the next turn)."""
    import asyncio

    from coordinator.batcher import Batcher

    if db_engine == "postgresql":
        import psycopg

        # PostgreSQL would end a deadlock after a second by failing one side; here it never does, so turns that
        # deadlocked would wait until the time limit below.
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database.rsplit("/", 1)[1]}" SET deadlock_timeout = \'1h\'')
    schedulers = [Scheduler(Store(database), Policy()) for _ in range(3)]
    tasks = [schedulers[0].submit_task(TaskSpec(name=f"shot{n}", files=[TaskFile("shot.blend", "a" * 64, 100)],
                                                main_file="shot.blend", frame_start=1, frame_end=40))["task_id"]
             for n in range(4)]
    batchers = [Batcher(scheduler.store) for scheduler in schedulers]
    done: list[tuple[int, int]] = []

    import functools

    async def worker(number: int) -> None:
        scheduler, batcher = schedulers[number % 3], batchers[number % 3]
        worker_id = (await batcher.call(lambda: scheduler.register_worker(f"w{number}", "h", "3.4.1", 2)))["worker_id"]
        while True:
            lease, _ = await batcher.call(lambda: scheduler.claim(worker_id, prefer_task_id=tasks[number % 4]))
            if lease is None:
                return
            task_id, frame = lease["task_id"], lease["frame"]
            await batcher.call(functools.partial(scheduler.finish_frame, worker_id, task_id, frame, lease["lease_id"],
                                                 (f"f_{frame:04d}.png", "b" * 64, 10)))
            await batcher.call(lambda: scheduler.heartbeat(worker_id, []))
            done.append((task_id, frame))

    async def farm() -> None:
        await asyncio.gather(*(worker(number) for number in range(24)))

    try:
        asyncio.run(asyncio.wait_for(farm(), 60))
    finally:
        for batcher in batchers:
            batcher.close()
    assert sorted(done) == sorted((task_id, frame) for task_id in tasks for frame in range(1, 41))
    for task_id in tasks:
        assert schedulers[1].task_detail(task_id, with_frames=False)["status"] == "done"


def test_a_call_undone_in_a_turn_leaves_nothing_on_its_tasks_row(database):
    # A turn writes task rows (log, done count) at its end: a call whose savepoint was rolled back must not have
    # its share written there.
    scheduler = Scheduler(Store(database), Policy())
    task_id = scheduler.submit_task(TaskSpec(name="shot", files=[TaskFile("shot.blend", "a" * 64, 100)],
                                             main_file="shot.blend", frame_start=1, frame_end=2))["task_id"]
    worker_id = scheduler.register_worker("w", "host", "3.4.1", 2)["worker_id"]
    with scheduler.store.batch():
        kept = scheduler.append_log(task_id, worker_id, "kept\n")
        lease, _ = scheduler.claim(worker_id)
        with pytest.raises(Boom), scheduler.store.transaction():
            scheduler.append_log(task_id, worker_id, "undone\n")
            scheduler.finish_frame(worker_id, task_id, lease["frame"], lease["lease_id"], ("f.png", "b" * 64, 1))
            raise Boom
    assert kept.size == 5
    assert scheduler.read_log(task_id, 0)["text"] == "kept\n"
    task = scheduler.task_detail(task_id, with_frames=False)
    assert task["status"] == "running" and task["progress"]["done"] == 0 and task["progress"]["leased"] == 1


def test_a_lease_sweep_with_nothing_due_takes_no_write_turn(tmp_path):
    """Most sweeps find nothing due: they must not queue for the write lock that every writer waits behind, so one
    finishes at once even while another connection holds that lock."""
    path = str(tmp_path / "db.sqlite3")
    store = Store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another serving process mid-turn
    swept: list[int] = []
    sweep = threading.Thread(target=lambda: swept.append(store.expire_leases(time.time(), 3)))
    sweep.start()
    sweep.join(5)  # a write turn would wait for the lock up to BUSY_TIMEOUT_MS (30 s)
    finished = not sweep.is_alive()
    holder.execute("ROLLBACK")
    sweep.join(60)
    assert finished and swept == [0]
