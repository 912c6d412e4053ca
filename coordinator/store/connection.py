"""The store's connections and its write transactions (group commit), under the queries of the other parts.

One connection per thread, of the engine the database string names (engine.py: SQLite or PostgreSQL). Every write is
one transaction, returned from only once its writes are durable. On SQLite concurrent transactions of this process
share their COMMIT (group commit) and then share the fsync that makes it durable (make_durable), which the
batcher's turns leave to another thread; on PostgreSQL transactions run side by side, and a batcher's turn shares
one COMMIT.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from .engine import Database, Engine
from .engines import engine_for
from .sqlite import BUSY_TIMEOUT_MS
from .task_writes import TaskRowWrites

# How long the checkpoint's last step waits for readers (writers wait for it meanwhile).
CHECKPOINT_WAIT_MS = 20
# The WAL starts over once it holds this many pages (SQLite's own checkpoint threshold: about 4 MB).
WAL_RESTART_PAGES = 1000


class StoreConnection:
    """One connection per thread; writers of this process take turns on SQLite (see transaction()), and readers go
    on meanwhile. The query parts (workers, tasks, frames, files, farm) build on it.

    `database` is a postgresql:// URL or the path of a SQLite file; `synchronous` is SQLite's ("full" or
    "normal")."""

    def __init__(self, database: str, *, synchronous: str = "full") -> None:
        self.database = database
        self.engine: Engine = engine_for(database, synchronous=synchronous)
        self._local = threading.local()
        # Group commit (see transaction()): one thread writes at a time, and the writes of threads that queue up
        # behind each other share one COMMIT, so one fsync acknowledges many of them.
        self._write_lock = threading.Lock()
        self._batch = _Batch()
        # Writers waiting for the write lock: the one holding it commits when there are none.
        self._queue_lock = threading.Lock()
        self._queued_writes = 0
        self._committed = threading.Condition()
        self._committed_batch = 0
        self._failed_batches: dict[int, BaseException] = {}
        # The last batch known to be on disk (engines that sync after COMMIT), and the lock of the one fsync at a
        # time: writers waiting meanwhile find their batch covered by it and return without one of their own.
        self._durable_batch = 0
        self._sync_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _connection(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None or self.engine.is_broken(db):
            # A connection the server dropped (PostgreSQL restarted) is replaced: the statement that found it
            # broken failed, the next one gets a new connection.
            db = self.engine.connect()
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Database]:
        """A write transaction: the block's writes all happen or none do, and are durable once it returns.

        durable=False, for writes nobody is promised (a heartbeat's "last seen"): the block may return before its
        batch is committed, so its thread is not held up by the fsync.

        Writers of this process take turns. The first opens a transaction on its connection (the engine's
        `begin`); the writers queued behind it run their blocks in that same transaction, each inside its own
        savepoint, so a block that raises undoes only its own writes. The last writer in line (or the one that
        fills the batch) commits for all of them, and every block returns only after that COMMIT: under load one
        fsync acknowledges many writes instead of each paying its own, and no thread sleeps in SQLite's busy
        handler.

        On PostgreSQL (no group_commit) each block is a transaction of its own on its thread's connection, run
        alongside the others: row locks order them, and its server commits many at once itself.
        """
        outer = getattr(self._local, "batch", None)
        if outer is not None:
            with self._batch_savepoint(outer):
                yield outer
            return
        if not self.engine.group_commit:
            with self._own_transaction() as db:
                yield db
            return
        self._take_write_turn()
        batch = self._batch
        first = not batch.open
        try:
            if first:
                db = self._connection()
                self.engine.take_write_turn()
                try:
                    db.execute(self.engine.begin)
                except BaseException:
                    self.engine.give_write_turn()
                    raise
                batch.begin(db)
            else:
                db = batch.connection
                db.execute("SAVEPOINT turn")
            batch.writes += 1
            number = batch.number
        except BaseException:
            self._end_turn()
            raise
        try:
            yield db
        except BaseException:
            if first:
                # Nobody joined yet (they wait for the write lock): the whole transaction is this block's.
                self._finish_batch("ROLLBACK")
                self._write_lock.release()
                raise
            try:
                db.execute("ROLLBACK TO SAVEPOINT turn")
                db.execute("RELEASE SAVEPOINT turn")
            finally:
                self._end_turn()
            # The batch may run on this thread's connection: wait until it is free before this thread reads again.
            with contextlib.suppress(*self.engine.errors):
                self._wait_for_commit(number)
            raise
        if not first:
            try:
                db.execute("RELEASE SAVEPOINT turn")
            except BaseException:
                self._end_turn()
                raise
        self._end_turn()
        # A batch that runs on this thread's connection (it came first) is waited for in any case.
        if durable or first:
            self._wait_for_commit(number)
        self._local.last_batch = number
        if durable and not getattr(self._local, "defer_sync", False):
            self.make_durable(number)

    @contextlib.contextmanager
    def batch(self, sync: bool = True) -> Iterator[None]:
        """Run many transactions of this thread as one: each transaction() inside becomes a savepoint (a block
        that raises undoes only its own writes), and they share one COMMIT when the block ends, durable before
        batch() returns. For a thread that applies queued requests in turns (coordinator.batcher).

        sync=False returns once the COMMIT is done but maybe not yet on disk: the caller then passes last_batch()
        to make_durable() (on another thread, say) before it tells anyone the writes happened.

        After the first block, a block that would wait long for a row another coordinator locked gives way
        instead (the engine's lock_conflict, see give_way): the caller runs it again first in its next batch."""
        # Read when the transaction ends (the blocks inside are savepoints and end before it).
        self._local.defer_sync = not sync
        try:
            with self.transaction() as db:
                self._local.batch = db
                self._local.batch_blocks = 0
                self._local.task_writes = TaskRowWrites()
                try:
                    yield
                    self.engine.wait_for_locks(db)
                    self._local.task_writes.write(db)
                finally:
                    self._local.batch = None
                    self._local.task_writes = None
        finally:
            self._local.defer_sync = False

    def last_batch(self) -> int:
        """The number of the batch this thread's last transaction was committed in (for make_durable)."""
        return int(getattr(self._local, "last_batch", 0))

    def make_durable(self, number: int) -> None:
        """Return once batch `number`, already committed, is on disk: for engines that write a COMMIT first and
        sync it after (SQLite's WAL, see SQLiteEngine.sync). One fsync covers every batch committed before it
        began, so writers that wait for it meanwhile need none of their own."""
        if not self.engine.syncs_after_commit or self._durable_batch >= number:
            return
        with self._sync_lock:
            if self._durable_batch >= number:
                return
            committed = self._committed_batch
            self.engine.sync()
            self._durable_batch = max(self._durable_batch, committed)

    def task_writes(self) -> TaskRowWrites | None:
        """Where this thread's batch gathers its writes to task rows (task_writes.py); None outside a batch."""
        return getattr(self._local, "task_writes", None)

    @contextlib.contextmanager
    def _batch_savepoint(self, outer: Database) -> Iterator[None]:
        """A block inside batch() on this thread: a savepoint of its transaction, committed with the rest of it."""
        self._local.batch_blocks += 1
        if self._local.batch_blocks == 2:
            # The batch holds the first block's row locks now: waiting for another batch that waits for these
            # would be a deadlock, so the blocks after it wait only briefly.
            self.engine.give_way(outer)
        mark = self._local.task_writes.mark()
        try:
            with _savepoint(outer):
                yield
        except BaseException:
            self._local.task_writes.undo_to(mark)
            raise

    @contextlib.contextmanager
    def _own_transaction(self) -> Iterator[Database]:
        """A transaction of the block alone, on this thread's connection (engines without group commit)."""
        db = self._connection()
        db.execute(self.engine.begin)
        try:
            yield db
        except BaseException:
            with contextlib.suppress(*self.engine.errors):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _take_write_turn(self) -> None:
        """Wait for the write lock, counted meanwhile as a writer in line (so the holder leaves its batch open)."""
        with self._queue_lock:
            self._queued_writes += 1
        self._write_lock.acquire()
        with self._queue_lock:
            self._queued_writes -= 1

    def _end_turn(self) -> None:
        """Commit the open batch unless another writer is next in line to add to it (and it is not full yet),
        then give up the write lock. Called holding the write lock."""
        try:
            if self._batch.open and (not self._queued_writes or self._batch.full()):
                self._finish_batch("COMMIT")
        finally:
            self._write_lock.release()

    def _finish_batch(self, statement: str) -> None:
        """COMMIT (or ROLLBACK) the open batch and wake the writers waiting for it."""
        batch = self._batch
        number = batch.number
        error: BaseException | None = None
        try:
            batch.connection.execute(statement)
        except BaseException as problem:  # noqa: BLE001 - every writer in the batch is told, below
            error = problem
            with contextlib.suppress(*self.engine.errors):
                batch.connection.execute("ROLLBACK")
        finally:
            self.engine.give_write_turn()
        batch.end()
        with self._committed:
            self._committed_batch = number
            if error is not None:
                self._failed_batches[number] = error
                for old in [n for n in self._failed_batches if n < number - 100]:
                    del self._failed_batches[old]
            self._committed.notify_all()

    def _wait_for_commit(self, number: int) -> None:
        """Return once batch `number` is committed; raise its COMMIT's error if it failed."""
        if self._committed_batch < number:
            with self._committed:
                while self._committed_batch < number:
                    self._committed.wait()
        if self._failed_batches:
            error = self._failed_batches.get(number)
            if error is not None:
                raise self.engine.commit_failed(error) from error

    def checkpoint_in_background(self) -> None:
        """Leave WAL checkpoints to checkpoint() (the coordinator's reaper thread calls it every second) instead of
        the commit that happens to fill the WAL, which would copy pages and fsync the database file while every
        other writer waits for it. (Only SQLite has a WAL to checkpoint.)"""
        if not self.engine.checkpoints:
            return
        self.engine.autocheckpoint = 0  # type: ignore[attr-defined]  # the SQLite engine's, for new connections
        self._connection().execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database file, so the WAL can start over.

        Most pages are copied while writers go on. The WAL starts over only after a checkpoint that copied all of
        it, which writers appending all the time would never allow: so once it is long enough, the pages written
        meanwhile are copied with the write lock held (a short pause, like a writer's turn).
        """
        if not self.engine.checkpoints:
            return
        db = self._connection()
        _, wal_pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages < WAL_RESTART_PAGES:
            return
        self._take_write_turn()
        try:
            if self._batch.open:
                self._finish_batch("COMMIT")  # this turn is ours: commit the open batch before copying it
            # RESTART also waits for the readers still on the old pages, so the next writer starts the WAL over;
            # only briefly, as writers wait meanwhile (the next second tries again).
            db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            try:
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def exclusive(self, job: str) -> Iterator[bool]:
        """For a job that one coordinator at a time runs (the orphan file sweep): yields True when this one runs it
        now, False when another coordinator on the same database does (PostgreSQL's advisory lock)."""
        with self.engine.hold(self._connection(), job) as ours:
            yield ours

    def read(self) -> Database:
        """A connection for reads outside a transaction (each statement sees a consistent snapshot); inside
        batch(), the batch's own, so a read sees the writes made before it in the batch."""
        return getattr(self._local, "batch", None) or self._connection()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


@contextlib.contextmanager
def _savepoint(db: Database) -> Iterator[None]:
    """A savepoint: its writes are undone if the block raises, and kept (until the enclosing COMMIT) if not."""
    db.execute("SAVEPOINT nested")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK TO SAVEPOINT nested")
        db.execute("RELEASE SAVEPOINT nested")
        raise
    db.execute("RELEASE SAVEPOINT nested")


class _Batch:
    """The write transaction open on one thread's connection: the writes sharing one COMMIT."""

    # A batch commits once it holds this many writes or is this old, even with writers still in line, so a
    # steady stream of writes cannot keep the first ones waiting for their COMMIT.
    MAX_WRITES = 200
    MAX_SECONDS = 0.02

    def __init__(self) -> None:
        self.db: Database | None = None
        self.number = 0
        self.writes = 0
        self.started = 0.0

    @property
    def open(self) -> bool:
        return self.db is not None

    @property
    def connection(self) -> Database:
        """The open batch's connection; only asked for while a batch is open."""
        if self.db is None:
            raise RuntimeError("no write batch is open")
        return self.db

    def begin(self, db: Database) -> None:
        self.db = db
        self.number += 1
        self.writes = 0
        self.started = time.monotonic()

    def end(self) -> None:
        self.db = None

    def full(self) -> bool:
        return self.writes >= self.MAX_WRITES or time.monotonic() - self.started >= self.MAX_SECONDS


# Whether the worker (named parameters name, version, allows_python, worker_id, blocked_at) may take a frame of the
# open task t now: assigned to it (or to anyone), the right Blender, Python allowed if needed, not blocked, and a
