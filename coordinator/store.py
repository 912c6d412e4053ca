"""Durable state of the farm (workers, tasks, frames, logs) in SQLite, behind one small interface.

Every method is one transaction. Claims and reports are single conditional statements inside
`BEGIN IMMEDIATE`, so two threads (or, later, two PostgreSQL sessions) can never hand out the same frame.
Concurrent transactions share their COMMIT (group commit): each still returns only once its writes are durable.
The store knows nothing about policy: the scheduler passes in the clock, lease lengths and limits.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

ACTIVE_FRAME_STATES = ("leased", "rendering")
# A paused task is still open: its frames may be rendering, and resuming hands the queued ones out again.
OPEN_TASK_STATES = ("queued", "running", "paused")

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    worker_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL DEFAULT '',
    blender_version TEXT NOT NULL DEFAULT '',
    cpu_count INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_failed INTEGER NOT NULL DEFAULT 0,
    render_seconds_total REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    priority INTEGER NOT NULL DEFAULT 0,
    frame_start INTEGER NOT NULL,
    frame_end INTEGER NOT NULL,
    frame_step INTEGER NOT NULL,
    frames_total INTEGER NOT NULL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_failed INTEGER NOT NULL DEFAULT 0,
    manual INTEGER NOT NULL DEFAULT 0,
    submitted_by TEXT NOT NULL DEFAULT '',
    blend_sha256 TEXT NOT NULL,
    blend_filename TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    log_size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(status, priority DESC, task_id);
CREATE TABLE IF NOT EXISTS task_files (
    task_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (task_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS task_files_by_hash ON task_files(sha256);
CREATE TABLE IF NOT EXISTS task_workers (
    task_id INTEGER NOT NULL,
    worker_name TEXT NOT NULL,
    PRIMARY KEY (task_id, worker_name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frames (
    task_id INTEGER NOT NULL,
    frame INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    worker_id INTEGER,
    lease_id TEXT,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    ended_at REAL,
    render_seconds REAL,
    output TEXT,
    output_sha256 TEXT,
    output_size INTEGER,
    error TEXT,
    log_tail TEXT,
    PRIMARY KEY (task_id, frame)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS frames_by_status ON frames(task_id, status, frame);
CREATE INDEX IF NOT EXISTS frames_by_lease ON frames(lease_expires) WHERE status IN ('leased', 'rendering');
CREATE INDEX IF NOT EXISTS frames_by_worker ON frames(worker_id) WHERE status IN ('leased', 'rendering');
CREATE INDEX IF NOT EXISTS frames_by_end ON frames(task_id, ended_at) WHERE status = 'done';
CREATE INDEX IF NOT EXISTS frames_by_output ON frames(output_sha256) WHERE output_sha256 IS NOT NULL;
CREATE TABLE IF NOT EXISTS frame_failures (
    task_id INTEGER NOT NULL,
    frame INTEGER NOT NULL,
    worker_id INTEGER NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS frame_failures_by_frame ON frame_failures(task_id, frame, worker_id);
-- Failed reports per worker and task since the task's last retry: a worker with bad_worker_failures of them gets
-- no more frames of the task. One row per pair, so the claim checks it with one primary-key lookup.
CREATE TABLE IF NOT EXISTS task_worker_failures (
    task_id INTEGER NOT NULL,
    worker_id INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, worker_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    task_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (task_id, offset)
) WITHOUT ROWID;
"""

# Columns added after the first release; a data dir from an older coordinator gets them on start.
ADDED_COLUMNS = {
    "tasks": {
        "main_file": "TEXT NOT NULL DEFAULT ''",
        "blender_version": "TEXT NOT NULL DEFAULT ''",
        "blender_version_key": "INTEGER NOT NULL DEFAULT 0",
        "blender_version_exact": "INTEGER NOT NULL DEFAULT 0",
        "missing_assets": "TEXT NOT NULL DEFAULT '[]'",
        "files_count": "INTEGER NOT NULL DEFAULT 0",
        "files_bytes": "INTEGER NOT NULL DEFAULT 0",
        "files_deleted_at": "REAL",
        # Seconds; NULL: no limit on one frame's render time.
        "frame_timeout": "REAL",
        "no_progress_timeout": "REAL NOT NULL DEFAULT 600",
        "needs_python": "INTEGER NOT NULL DEFAULT 0",
        "owner": "TEXT NOT NULL DEFAULT ''",
    },
    "workers": {
        "blender_version_key": "INTEGER NOT NULL DEFAULT 0",
        "allows_python": "INTEGER NOT NULL DEFAULT 0",
    },
    "frames": {
        # The coordinator's own time after which a frame still 'rendering' counts as timed out (NULL: never).
        "render_deadline": "REAL",
        # renderq.paths.collision_key(output): two frames of a task may not have outputs with the same key.
        "output_key": "TEXT",
    },
    "frame_failures": {
        # 1 once the frame was retried: the failure no longer counts towards marking the frame failed.
        "cleared": "INTEGER NOT NULL DEFAULT 0",
        # The lease the worker reported the failure under, so a repeated report is recognised (NULL: timed out).
        "lease_id": "TEXT",
    },
}

# Indexes on added columns, made once the columns exist.
ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS frames_by_deadline ON frames(render_deadline) WHERE status = 'rendering'",
    # The order claims hand out tasks in, so a claim reads tasks only until the first one it may take.
    ("CREATE INDEX IF NOT EXISTS tasks_claimable ON tasks(priority DESC, task_id) "
     "WHERE status IN ('queued', 'running')"),
    "CREATE INDEX IF NOT EXISTS frames_by_output_key ON frames(task_id, output_key) WHERE output_key IS NOT NULL",
    # Tasks from before task trees have no task_files rows: the orphan sweep finds their .blend through this.
    "CREATE INDEX IF NOT EXISTS tasks_by_untreed_blend ON tasks(blend_sha256) WHERE main_file = ''",
)

# How long a statement waits for another connection's lock before failing, and how long the checkpoint's last
# step waits for readers (writers wait for it meanwhile).
BUSY_TIMEOUT_MS = 30_000
CHECKPOINT_WAIT_MS = 20
# The WAL starts over once it holds this many pages (SQLite's own checkpoint threshold: about 4 MB).
WAL_RESTART_PAGES = 1000

# Columns of a task read only for its detail (see Store.__init__).
_DETAIL_ONLY_COLUMNS = ("settings", "missing_assets")

FRAME_COLUMNS = (
    "task_id, frame, status, worker_id, lease_id, lease_expires, attempts, failures, started_at, ended_at, "
    "render_seconds, output, output_sha256, output_size, error, log_tail"
)


class Store:
    """SQLite-backed state. One connection per thread; writers take turns (see transaction()), and WAL lets readers
    go on meanwhile."""

    def __init__(self, path: str, *, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        # SQLite's default: the commit that fills the WAL past 1000 pages copies them into the database file.
        self._autocheckpoint = 1000
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
        # executescript manages its own transaction, so the schema is not created inside transaction().
        db = self._connection()
        db.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, declaration in columns.items():
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        for index in ADDED_INDEXES:
            db.execute(index)
        # A task's summary leaves out its settings and missing assets (only its detail and its leases need them), so
        # listing many tasks reads none of that text.
        columns = [row["name"] for row in db.execute("PRAGMA table_info(tasks)")
                   if row["name"] not in _DETAIL_ONLY_COLUMNS]
        self._summary_columns = (", ".join(columns)
                                 + ", json_array_length(missing_assets) AS missing_assets_count")

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False: a write batch opened on this connection takes other threads' writes too.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute(f"PRAGMA wal_autocheckpoint={self._autocheckpoint}")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: the block's writes all happen or none do, and are durable once it returns.

        durable=False, for writes nobody is promised (a heartbeat's "last seen"): the block may return before its
        batch is committed, so its thread is not held up by the fsync.

        Writers take turns. The first opens a transaction on its connection (BEGIN IMMEDIATE, so a claim never
        deadlocks upgrading a read lock); the writers queued behind it run their blocks in that same transaction,
        each inside its own savepoint, so a block that raises undoes only its own writes. The last writer in line
        (or the one that fills the batch) commits for all of them, and every block returns only after that
        COMMIT: under load one fsync acknowledges many writes instead of each paying its own, and no thread sleeps
        in SQLite's busy handler.
        """
        with self._queue_lock:
            self._queued_writes += 1
        self._write_lock.acquire()
        with self._queue_lock:
            self._queued_writes -= 1
        batch = self._batch
        first = not batch.open
        try:
            if first:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                batch.begin(db)
            else:
                db = batch.db
                db.execute("SAVEPOINT write")
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
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
            finally:
                self._end_turn()
            # The batch may run on this thread's connection: wait until it is free before this thread reads again.
            with contextlib.suppress(sqlite3.Error):
                self._wait_for_commit(number)
            raise
        if not first:
            try:
                db.execute("RELEASE write")
            except BaseException:
                self._end_turn()
                raise
        self._end_turn()
        # A batch that runs on this thread's connection (it came first) is waited for in any case.
        if durable or first:
            self._wait_for_commit(number)

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
            batch.db.execute(statement)
        except BaseException as problem:  # noqa: BLE001 - every writer in the batch is told, below
            error = problem
            with contextlib.suppress(sqlite3.Error):
                batch.db.execute("ROLLBACK")
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
                raise sqlite3.OperationalError(f"the transaction could not be committed: {error}") from error

    def checkpoint_in_background(self) -> None:
        """Leave WAL checkpoints to checkpoint() (the coordinator's reaper thread calls it every second) instead of
        the commit that happens to fill the WAL, which would copy pages and fsync the database file while every
        other writer waits for it."""
        self._autocheckpoint = 0
        self._connection().execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database file, so the WAL can start over.

        Most pages are copied while writers go on. The WAL starts over only after a checkpoint that copied all of
        it, which writers appending all the time would never allow: so once it is long enough, the pages written
        meanwhile are copied with the write lock held (a short pause, like a writer's turn).
        """
        db = self._connection()
        _, wal_pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages < WAL_RESTART_PAGES:
            return
        with self._queue_lock:
            self._queued_writes += 1
        self._write_lock.acquire()
        with self._queue_lock:
            self._queued_writes -= 1
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

    def read(self) -> sqlite3.Connection:
        """A connection for reads outside a transaction (each statement sees a consistent snapshot)."""
        return self._connection()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- workers --------------------------------------------------------------------------------------------------

    def upsert_worker(self, name: str, host: str, blender_version: str, version_key: int, cpu_count: int,
                      now: float, allows_python: bool = False) -> dict:
        """Register a worker by name. A returning name keeps its id; frames it still held are requeued."""
        with self.transaction() as db:
            row = db.execute("SELECT worker_id FROM workers WHERE name = ?", (name,)).fetchone()
            if row is None:
                worker_id = db.execute(
                    "INSERT INTO workers (name, host, blender_version, blender_version_key, cpu_count, "
                    "registered_at, last_seen, allows_python) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, host, blender_version, version_key, cpu_count, now, now, int(allows_python)),
                ).lastrowid
            else:
                worker_id = row["worker_id"]
                db.execute(
                    "UPDATE workers SET host = ?, blender_version = ?, blender_version_key = ?, cpu_count = ?, "
                    "registered_at = ?, last_seen = ?, allows_python = ? WHERE worker_id = ?",
                    (host, blender_version, version_key, cpu_count, now, now, int(allows_python), worker_id),
                )
                _requeue(db, "worker_id = ? AND status IN ('leased', 'rendering')", (worker_id,))
            return dict(db.execute("SELECT * FROM workers WHERE worker_id = ?", (worker_id,)).fetchone())

    def get_worker(self, worker_id: int | None = None, name: str | None = None) -> dict | None:
        if worker_id is not None:
            row = self.read().execute("SELECT * FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
        else:
            row = self.read().execute("SELECT * FROM workers WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def list_workers(self) -> list[dict]:
        return [dict(r) for r in self.read().execute("SELECT * FROM workers ORDER BY name")]

    def count_workers_seen_since(self, since: float) -> int:
        """How many workers have been heard from at or after `since`."""
        return self.read().execute("SELECT COUNT(*) FROM workers WHERE last_seen >= ?", (since,)).fetchone()[0]

    def heartbeat(self, worker_id: int, leases: Sequence[str], now: float,
                  lease_expires: float) -> tuple[bool, list[str]] | None:
        """Mark the worker seen and renew the leases it still validly holds: (whether it is switched ON, the
        leases it lost), or None when there is no such worker. Not durable: a renewal lost in a crash is made good
        by the lease extension after a restart and by the next heartbeat."""
        with self.transaction(durable=False) as db:
            seen = db.execute("UPDATE workers SET last_seen = ? WHERE worker_id = ? RETURNING enabled",
                              (now, worker_id)).fetchone()
            if seen is None:
                return None
            valid: set[str] = set()
            for lease_id in leases:
                row = db.execute(
                    "UPDATE frames SET lease_expires = ? WHERE lease_id = ? AND worker_id = ? "
                    "AND status IN ('leased', 'rendering') RETURNING lease_id",
                    (lease_expires, lease_id, worker_id),
                ).fetchone()
                if row is not None:
                    valid.add(lease_id)
            return bool(seen["enabled"]), [lease for lease in leases if lease not in valid]

    def set_worker_enabled(self, worker_id: int, enabled: bool) -> None:
        """Switch a worker ON or OFF; OFF gives back the frames it claimed but has not started."""
        with self.transaction() as db:
            db.execute("UPDATE workers SET enabled = ? WHERE worker_id = ?", (int(enabled), worker_id))
            if not enabled:
                _requeue(db, "worker_id = ? AND status = 'leased'", (worker_id,))

    def current_frames(self, worker_id: int | None = None, task_id: int | None = None) -> list[dict]:
        """Frames now leased or rendering (of one worker, one task, or all), with task and worker names."""
        sql = (
            "SELECT f.task_id, f.frame, f.status, f.started_at, f.worker_id, t.name AS task_name, "
            "w.name AS worker_name FROM frames f JOIN tasks t ON t.task_id = f.task_id "
            "LEFT JOIN workers w ON w.worker_id = f.worker_id WHERE f.status IN ('leased', 'rendering')"
        )
        if worker_id is not None:
            return [dict(r) for r in self.read().execute(sql + " AND f.worker_id = ?", (worker_id,))]
        if task_id is not None:
            return [dict(r) for r in self.read().execute(sql + " AND f.task_id = ?", (task_id,))]
        return [dict(r) for r in self.read().execute(sql)]

    # -- tasks ----------------------------------------------------------------------------------------------------

    def insert_task(self, task: dict, frame_numbers: Sequence[int], worker_names: Sequence[str],
                    files: Sequence[tuple[str, str, int]]) -> int:
        """Store a task, its files (path, sha256, size) and all its frames at once: fully queued or absent."""
        with self.transaction() as db:
            task_id = db.execute(
                "INSERT INTO tasks (name, priority, frame_start, frame_end, frame_step, frames_total, manual, "
                "submitted_by, blend_sha256, blend_filename, settings, created_at, main_file, blender_version, "
                "blender_version_key, blender_version_exact, missing_assets, files_count, files_bytes, "
                "frame_timeout, no_progress_timeout, needs_python, owner) "
                "VALUES (:name, :priority, :frame_start, :frame_end, :frame_step, :frames_total, :manual, "
                ":submitted_by, :blend_sha256, :blend_filename, :settings, :created_at, :main_file, "
                ":blender_version, :blender_version_key, :blender_version_exact, :missing_assets, :files_count, "
                ":files_bytes, :frame_timeout, :no_progress_timeout, :needs_python, :owner)",
                {"frame_timeout": None, "no_progress_timeout": 600.0, "owner": "", **task,
                 "needs_python": int(bool(task.get("needs_python"))),
                 "frames_total": len(frame_numbers), "manual": int(bool(worker_names)),
                 "settings": json.dumps(task.get("settings") or {}),
                 "missing_assets": json.dumps(list(task.get("missing_assets") or [])),
                 "blender_version_exact": int(bool(task.get("blender_version_exact"))),
                 "files_count": len(files), "files_bytes": sum(size for _, _, size in files)},
            ).lastrowid
            db.executemany("INSERT INTO task_files (task_id, path, sha256, size) VALUES (?, ?, ?, ?)",
                           ((task_id, path, sha256, size) for path, sha256, size in files))
            db.executemany("INSERT INTO frames (task_id, frame) VALUES (?, ?)", ((task_id, n) for n in frame_numbers))
            db.executemany(
                "INSERT OR IGNORE INTO task_workers (task_id, worker_name) VALUES (?, ?)",
                ((task_id, name) for name in worker_names),
            )
            return task_id

    def get_task(self, task_id: int, detail: bool = False) -> dict | None:
        """One task's row; with `detail`, also its settings and missing assets."""
        columns = f"{self._summary_columns}, settings, missing_assets" if detail else self._summary_columns
        row = self.read().execute(f"SELECT {columns} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        # Only a task assigned to named workers has any in task_workers.
        return _task_row(self.read(), row, None if row["manual"] else [])

    def list_tasks(self, status: str | None = None, limit: int = 1000) -> list[dict]:
        """Tasks newest first (optionally of one status), each with its assigned worker names."""
        db = self.read()
        if status:
            rows = db.execute(
                f"SELECT {self._summary_columns} FROM tasks WHERE status = ? ORDER BY task_id DESC LIMIT ?",
                (status, limit)
            ).fetchall()
        else:
            rows = db.execute(f"SELECT {self._summary_columns} FROM tasks ORDER BY task_id DESC LIMIT ?",
                              (limit,)).fetchall()
        return self._task_rows(db, rows)

    def list_tasks_for_status(self, newest: int) -> list[dict]:
        """The newest `newest` tasks plus every older task still open, newest first (the status page's list)."""
        db = self.read()
        rows = db.execute(
            f"SELECT {self._summary_columns} FROM tasks WHERE task_id IN "
            "(SELECT task_id FROM tasks ORDER BY task_id DESC LIMIT ?) "
            "OR status IN ('queued', 'running', 'paused') ORDER BY task_id DESC",
            (newest,),
        ).fetchall()
        return self._task_rows(db, rows)

    def _task_rows(self, db: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[dict]:
        # One query for the assigned workers of all the rows, not one per task.
        workers: dict[int, list[str]] = {}
        manual = [r["task_id"] for r in rows if r["manual"]]
        if manual:
            for r in db.execute("SELECT task_id, worker_name FROM task_workers WHERE task_id IN "
                                "(SELECT value FROM json_each(?)) ORDER BY task_id, worker_name",
                                (json.dumps(manual),)):
                workers.setdefault(r["task_id"], []).append(r["worker_name"])
        return [_task_row(db, r, workers.get(r["task_id"], [])) for r in rows]

    def task_settings(self, task_id: int) -> dict:
        """A task's settings (what a lease carries to the worker)."""
        row = self.read().execute("SELECT settings FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return json.loads(row["settings"] or "{}") if row else {}

    def frames_page(self, task_id: int, after: int | None, limit: int, status: str | None = None) -> list[dict]:
        """At most `limit` frames of the task numbered above `after` (from the first when None), optionally only
        those in one status, by frame number."""
        sql = f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND frame > ?"
        params: list[Any] = [task_id, after if after is not None else -(2**63)]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        params.append(limit)
        return [dict(r) for r in self.read().execute(sql + " ORDER BY frame LIMIT ?", params)]

    def latest_done_frames(self, task_id: int, count: int) -> list[dict]:
        """The task's `count` done frames that ended last, latest first."""
        return [dict(r) for r in self.read().execute(
            f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND status = 'done' "
            "ORDER BY ended_at DESC, frame DESC LIMIT ?", (task_id, count))]

    def get_frame(self, task_id: int, frame: int) -> dict | None:
        row = self.read().execute(
            f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND frame = ?", (task_id, frame)
        ).fetchone()
        return dict(row) if row else None

    def frame_counts(self, task_id: int) -> dict[str, int]:
        rows = self.read().execute(
            "SELECT status, count(*) AS n FROM frames WHERE task_id = ? GROUP BY status", (task_id,)
        )
        return {r["status"]: r["n"] for r in rows}

    def frame_counts_many(self, task_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Frames per status of each task, in one query: {task_id: {status: count}}."""
        counts: dict[int, dict[str, int]] = {task_id: {} for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                "SELECT task_id, status, count(*) AS n FROM frames WHERE task_id IN "
                "(SELECT value FROM json_each(?)) GROUP BY task_id, status",
                (json.dumps(list(task_ids)),),
            ):
                counts[r["task_id"]][r["status"]] = r["n"]
        return counts

    def done_frame_times_many(self, task_ids: Sequence[int], timed_most: int | None = None
                              ) -> dict[int, list[tuple]]:
        """The done frames of each task, in one query: {task_id: [(frame, render_seconds, worker_id, started_at,
        ended_at), ...]} by frame (what the ETA is estimated from). With `timed_most`, only the last that many
        frames with a render time (by number) carry their times; the others are (frame, None, None, None, None),
        so a task of many done frames costs a few small tuples each."""
        done: dict[int, list[tuple]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                "SELECT task_id, frame, render_seconds, worker_id, started_at, ended_at, row_number() OVER ("
                "PARTITION BY task_id, render_seconds > 0 ORDER BY frame DESC) AS from_last FROM frames "
                "WHERE status = 'done' AND task_id IN (SELECT value FROM json_each(?)) ORDER BY task_id, frame",
                (json.dumps(list(task_ids)),),
            ):
                if timed_most is None or (r["render_seconds"] or 0) > 0 and r["from_last"] <= timed_most:
                    done[r["task_id"]].append((r["frame"], r["render_seconds"], r["worker_id"], r["started_at"],
                                               r["ended_at"]))
                else:
                    done[r["task_id"]].append((r["frame"], None, None, None, None))
        return done

    def failed_frame_numbers(self, task_ids: Sequence[int]) -> dict[int, list[int]]:
        """The failed frames of each task, in one query: {task_id: [frame, ...]}."""
        failed: dict[int, list[int]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                "SELECT task_id, frame FROM frames WHERE status = 'failed' AND task_id IN "
                "(SELECT value FROM json_each(?)) ORDER BY task_id, frame",
                (json.dumps(list(task_ids)),),
            ):
                failed[r["task_id"]].append(r["frame"])
        return failed

    def blocked_workers_many(self, task_ids: Sequence[int], bad_worker_failures: int) -> dict[int, list[dict]]:
        """The workers blocked from each task (bad_worker_failures or more failed reports since its last retry),
        in one query: {task_id: [{"worker": name, "worker_id": id, "failures": n}, ...]} by name."""
        blocked: dict[int, list[dict]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                "SELECT b.task_id, b.worker_id, b.failures, w.name FROM task_worker_failures b "
                "LEFT JOIN workers w ON w.worker_id = b.worker_id WHERE b.failures >= ? AND b.task_id IN "
                "(SELECT value FROM json_each(?)) ORDER BY b.task_id, w.name, b.worker_id",
                (bad_worker_failures, json.dumps(list(task_ids))),
            ):
                blocked[r["task_id"]].append({"worker": r["name"], "worker_id": r["worker_id"],
                                              "failures": r["failures"]})
        return blocked

    def failure_reported(self, task_id: int, frame: int, lease_id: str, worker_id: int) -> bool:
        """Whether this worker already reported the frame failed under this lease (a repeated report)."""
        return self.read().execute(
            "SELECT 1 FROM frame_failures WHERE task_id = ? AND frame = ? AND worker_id = ? AND lease_id = ? LIMIT 1",
            (task_id, frame, worker_id, lease_id),
        ).fetchone() is not None

    def frame_failed_workers(self, task_id: int, first: int, last: int) -> dict[int, list[str]]:
        """The workers each frame of the task from `first` to `last` has failed on since its last retry:
        {frame: [name, ...]}."""
        failed_on: dict[int, list[str]] = {}
        for r in self.read().execute(
            "SELECT DISTINCT x.frame, w.name FROM frame_failures x JOIN workers w ON w.worker_id = x.worker_id "
            "WHERE x.task_id = ? AND x.frame BETWEEN ? AND ? AND x.cleared = 0 ORDER BY x.frame, w.name",
            (task_id, first, last),
        ):
            failed_on.setdefault(r["frame"], []).append(r["name"])
        return failed_on

    def set_task_priority(self, task_id: int, priority: int) -> bool:
        """Change a task's priority; the next claims use it. False when there is no such task."""
        with self.transaction() as db:
            return db.execute("UPDATE tasks SET priority = ? WHERE task_id = ? RETURNING task_id",
                              (priority, task_id)).fetchone() is not None

    def pause_task(self, task_id: int) -> bool:
        """Stop handing out the task's frames. Frames being rendered go on; frames claimed but not started yet
        go back to the queue (their workers learn it at their next heartbeat). False unless queued or running."""
        with self.transaction() as db:
            updated = db.execute(
                "UPDATE tasks SET status = 'paused' WHERE task_id = ? AND status IN ('queued', 'running') "
                "RETURNING task_id",
                (task_id,),
            ).fetchone()
            if updated is None:
                return False
            _requeue(db, "task_id = ? AND status = 'leased'", (task_id,))
            return True

    def resume_task(self, task_id: int) -> bool:
        """Hand out a paused task's frames again. False unless the task is paused."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE tasks SET status = CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END "
                "WHERE task_id = ? AND status = 'paused' RETURNING task_id",
                (task_id,),
            ).fetchone() is not None

    def retry_failed_frames(self, task_id: int) -> tuple[int, int]:
        """Queue the task's failed frames again with their failures reset and unblock every worker blocked from
        the task; returns (frames queued again, worker failure counts cleared).

        A failed task runs again (a paused one stays paused). The frame_failures history stays, so the retries
        still go to other workers first, but it no longer counts towards failing the retried frames.
        The caller refuses canceled tasks.
        """
        with self.transaction() as db:
            db.execute(
                "UPDATE frame_failures SET cleared = 1 WHERE task_id = ? AND cleared = 0 AND frame IN "
                "(SELECT frame FROM frames WHERE task_id = ? AND status = 'failed')",
                (task_id, task_id),
            )
            count = db.execute(
                "UPDATE frames SET status = 'queued', failures = 0, worker_id = NULL, lease_id = NULL, "
                "lease_expires = NULL, render_deadline = NULL, started_at = NULL, ended_at = NULL, error = NULL, "
                "log_tail = NULL, output = NULL, output_sha256 = NULL, output_size = NULL "
                "WHERE task_id = ? AND status = 'failed'",
                (task_id,),
            ).rowcount
            unblocked = db.execute("DELETE FROM task_worker_failures WHERE task_id = ?", (task_id,)).rowcount
            if count:
                db.execute(
                    "UPDATE tasks SET frames_failed = max(0, frames_failed - ?), ended_at = NULL, "
                    "status = CASE WHEN status = 'paused' THEN 'paused' "
                    "WHEN started_at IS NULL THEN 'queued' ELSE 'running' END WHERE task_id = ?",
                    (count, task_id),
                )
            return count, unblocked

    def cancel_task(self, task_id: int, now: float) -> bool:
        """Cancel every frame not finished. False when the task had already ended."""
        with self.transaction() as db:
            updated = db.execute(
                "UPDATE tasks SET status = 'canceled', ended_at = ? WHERE task_id = ? "
                "AND status IN ('queued', 'running', 'paused') RETURNING task_id",
                (now, task_id),
            ).fetchone()
            if updated is None:
                return False
            # The lease ids stay on the rows so a worker's next heartbeat learns they are revoked.
            db.execute(
                "UPDATE frames SET status = 'canceled', lease_expires = NULL, render_deadline = NULL "
                "WHERE task_id = ? AND status IN ('queued', 'leased', 'rendering')",
                (task_id,),
            )
            return True

    # -- claiming and reporting -----------------------------------------------------------------------------------

    def expire_leases(self, now: float, frame_fail_workers: int) -> int:
        """Requeue every frame whose lease ran out (its worker stopped reporting), and fail, as a failure of its
        worker, every frame still rendering past its render deadline (its worker never reported the timeout).
        Returns how many frames were taken back."""
        with self.transaction() as db:
            expired = _requeue(db, "status IN ('leased', 'rendering') AND lease_expires < ?", (now,))
            overdue = db.execute(
                "SELECT f.task_id, f.frame, f.worker_id, f.lease_id, t.frame_timeout FROM frames f "
                "JOIN tasks t ON t.task_id = f.task_id WHERE f.status = 'rendering' AND f.render_deadline < ?",
                (now,),
            ).fetchall()
            for row in overdue:
                error = (f"timed out: frame {row['frame']} was still rendering long after the task's frame timeout "
                         f"of {row['frame_timeout'] or 0:g} s, and its worker did not report it")
                # The lease dies with it, so that worker's later reports about the frame are refused.
                _record_failure(db, row["task_id"], row["frame"], row["lease_id"], row["worker_id"], error, "",
                                frame_fail_workers, now, keep_lease=False)
            return expired + len(overdue)

    def claim_frame(
        self, worker: dict, lease_id: str, now: float, lease_expires: float, prefer_task_id: int | None,
        bad_worker_failures: int,
    ) -> dict | None:
        """Lease the best queued frame this worker may render, or None.

        Order: higher priority, then the worker's current task (its Blender is warm), then older tasks;
        within a task, frames this worker has not failed before, lowest number first. Tasks the worker is blocked
        from (bad_worker_failures failed reports) and tasks that run Python, unless the worker allows it, are
        left out.
        """
        values = {"name": worker["name"], "version": worker["blender_version_key"],
                  "allows_python": int(bool(worker["allows_python"])), "worker_id": worker["worker_id"],
                  "blocked_at": bad_worker_failures, "prefer": prefer_task_id}
        with self.transaction() as db:
            # Walks tasks_claimable in order and stops at the first task this worker may take: a claim does not
            # look at (or sort) every open task. Paused (and ended) tasks are left out: their queued frames wait.
            best = db.execute(
                f"SELECT t.task_id, t.priority FROM tasks t INDEXED BY tasks_claimable "
                f"WHERE t.status IN ('queued', 'running') "
                f"AND {_CLAIMABLE_BY_WORKER} ORDER BY t.priority DESC, t.task_id ASC LIMIT 1",
                values,
            ).fetchone()
            if best is None:
                return None
            task_id = best["task_id"]
            if prefer_task_id is not None and prefer_task_id != task_id:
                # The worker's current task goes first among tasks of the same priority.
                preferred = db.execute(
                    f"SELECT t.task_id FROM tasks t WHERE t.task_id = :prefer AND t.status IN ('queued', 'running') "
                    f"AND t.priority = :priority AND {_CLAIMABLE_BY_WORKER}",
                    {**values, "priority": best["priority"]},
                ).fetchone()
                if preferred is not None:
                    task_id = prefer_task_id
            row = db.execute(
                "SELECT frame FROM frames f WHERE task_id = ? AND status = 'queued' AND NOT EXISTS ("
                "SELECT 1 FROM frame_failures x WHERE x.task_id = f.task_id AND x.frame = f.frame "
                "AND x.worker_id = ?) ORDER BY frame LIMIT 1",
                (task_id, worker["worker_id"]),
            ).fetchone()
            if row is None:
                row = db.execute(
                    "SELECT frame FROM frames WHERE task_id = ? AND status = 'queued' ORDER BY frame LIMIT 1",
                    (task_id,),
                ).fetchone()
            frame = db.execute(
                f"UPDATE frames SET status = 'leased', worker_id = ?, lease_id = ?, lease_expires = ? "
                f"WHERE task_id = ? AND frame = ? AND status = 'queued' RETURNING {FRAME_COLUMNS}",
                (worker["worker_id"], lease_id, lease_expires, task_id, row["frame"]),
            ).fetchone()
            db.execute(
                "UPDATE tasks SET status = 'running', started_at = coalesce(started_at, ?) "
                "WHERE task_id = ? AND status = 'queued'",
                (now, task_id),
            )
            return dict(frame)

    def mark_rendering(
        self, task_id: int, frame: int, lease_id: str, started_at: float, lease_expires: float,
        deadline_after_timeout: float,
    ) -> dict | None:
        """Blender started the frame. When the task has a frame timeout, the frame's render deadline becomes
        deadline_after_timeout + that timeout (a time of the coordinator's clock)."""
        with self.transaction() as db:
            row = db.execute(
                f"UPDATE frames SET status = 'rendering', started_at = ?, lease_expires = ?, attempts = attempts + 1, "
                f"render_deadline = (SELECT ? + frame_timeout FROM tasks WHERE task_id = frames.task_id) "
                f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status = 'leased' RETURNING {FRAME_COLUMNS}",
                (started_at, lease_expires, deadline_after_timeout, task_id, frame, lease_id),
            ).fetchone()
            return dict(row) if row else None

    def record_output(
        self, task_id: int, frame: int, lease_id: str, filename: str, key: str, sha256: str, size: int
    ) -> dict | None:
        """Set the frame's output file; raises OutputNameTaken when another frame's output has the same `key`."""
        with self.transaction() as db:
            holder = _output_holder(db, task_id, frame, key)
            if holder is not None:
                raise OutputNameTaken(holder["frame"], holder["output"])
            row = db.execute(
                f"UPDATE frames SET output = ?, output_key = ?, output_sha256 = ?, output_size = ? "
                f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering') "
                f"RETURNING {FRAME_COLUMNS}",
                (filename, key, sha256, size, task_id, frame, lease_id),
            ).fetchone()
            return dict(row) if row else None

    def output_holder(self, task_id: int, frame: int, key: str) -> dict | None:
        """Another frame of the task whose output has collision key `key` ({"frame", "output"}), or None."""
        return _output_holder(self._connection(), task_id, frame, key)

    def mark_done(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, started_at: float | None,
        ended_at: float, render_seconds: float | None, now: float,
    ) -> dict | None:
        """Finish a frame exactly once: the update only matches while this lease is live."""
        with self.transaction() as db:
            return _mark_done(db, task_id, frame, lease_id, worker_id, started_at, ended_at, render_seconds, now)

    def finish_frame(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, output: tuple[str, str, str, int],
        started_at: float | None, ended_at: float, render_seconds: float | None, now: float,
    ) -> dict | None:
        """Record the frame's output (filename, collision key, sha256, size) and mark it done in one transaction,
        fenced by the lease: None (and nothing written) when the lease is not live; OutputNameTaken as
        record_output."""
        filename, key, sha256, size = output
        with self.transaction() as db:
            holder = _output_holder(db, task_id, frame, key)
            if holder is not None:
                raise OutputNameTaken(holder["frame"], holder["output"])
            updated = db.execute(
                "UPDATE frames SET output = ?, output_key = ?, output_sha256 = ?, output_size = ? "
                "WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')",
                (filename, key, sha256, size, task_id, frame, lease_id),
            ).rowcount
            if not updated:
                return None
            return _mark_done(db, task_id, frame, lease_id, worker_id, started_at, ended_at, render_seconds, now)

    def mark_failed(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, error: str, log_tail: str,
        frame_fail_workers: int, now: float,
    ) -> dict | None:
        """Record a failed render: requeue it, or mark it failed once it has failed on frame_fail_workers
        different workers since its last retry. None when the lease is not live."""
        with self.transaction() as db:
            return _record_failure(db, task_id, frame, lease_id, worker_id, error, log_tail, frame_fail_workers,
                                   now, keep_lease=True)

    def release_frame(self, task_id: int, frame: int, lease_id: str, needs_python: bool = False) -> dict | None:
        """Give a frame back unrendered; an attempt that never started does not count. With needs_python the
        worker found that the file runs Python it may not run: the task is marked as needing Python."""
        with self.transaction() as db:
            n = _requeue(db, "task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')",
                         (task_id, frame, lease_id))
            if n == 0:
                return None
            if needs_python:
                db.execute("UPDATE tasks SET needs_python = 1 WHERE task_id = ?", (task_id,))
            row = db.execute(f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND frame = ?",
                             (task_id, frame)).fetchone()
            return dict(row)

    def extend_all_leases(self, lease_expires: float) -> None:
        """After a coordinator restart, give workers time to reconnect before their leases count as lost (or their
        frames as timed out: the worker may have reported its own timeout while the coordinator was down)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE frames SET lease_expires = max(coalesce(lease_expires, 0), ?), "
                "render_deadline = CASE WHEN render_deadline IS NULL THEN NULL ELSE max(render_deadline, ?) END "
                "WHERE status IN ('leased', 'rendering')",
                (lease_expires, lease_expires),
            )

    # -- files ----------------------------------------------------------------------------------------------------

    def task_files(self, task_id: int) -> list[dict]:
        return [dict(r) for r in self.read().execute(
            "SELECT path, sha256, size FROM task_files WHERE task_id = ? ORDER BY path", (task_id,))]

    def task_disk_bytes(self) -> dict[int, int]:
        """Bytes each task's inputs and rendered frames take (a file shared by two tasks counts for both)."""
        usage: dict[int, int] = {}
        db = self.read()
        for row in db.execute("SELECT task_id, sum(size) AS n FROM task_files GROUP BY task_id"):
            usage[row["task_id"]] = row["n"] or 0
        for row in db.execute("SELECT task_id, sum(output_size) AS n FROM frames WHERE output_sha256 IS NOT NULL "
                              "GROUP BY task_id"):
            usage[row["task_id"]] = usage.get(row["task_id"], 0) + (row["n"] or 0)
        return usage

    def referenced_blobs(self, hashes: Sequence[str]) -> set[str]:
        """Those of the hashes a stored task uses: a file of its tree, a frame's output, or (tasks from before task
        trees) its .blend while its files are kept. The orphan sweep deletes only the others."""
        listed = json.dumps(list(hashes))
        rows = self.read().execute(
            "SELECT sha256 FROM task_files WHERE sha256 IN (SELECT value FROM json_each(:h)) UNION "
            "SELECT output_sha256 FROM frames WHERE output_sha256 IN (SELECT value FROM json_each(:h)) UNION "
            "SELECT blend_sha256 FROM tasks WHERE main_file = '' AND files_deleted_at IS NULL "
            "AND blend_sha256 IN (SELECT value FROM json_each(:h))",
            {"h": listed},
        ).fetchall()
        return {row[0] for row in rows}

    def forget_task_files(self, task_id: int, now: float) -> list[str]:
        """Drop an ended task's file records; returns the hashes no other task still uses (safe to delete)."""
        with self.transaction() as db:
            hashes = {r["sha256"] for r in db.execute("SELECT sha256 FROM task_files WHERE task_id = ?", (task_id,))}
            hashes |= {r["output_sha256"] for r in db.execute(
                "SELECT output_sha256 FROM frames WHERE task_id = ? AND output_sha256 IS NOT NULL", (task_id,))}
            db.execute("DELETE FROM task_files WHERE task_id = ?", (task_id,))
            db.execute("UPDATE frames SET output_sha256 = NULL, output_size = NULL WHERE task_id = ?", (task_id,))
            db.execute("UPDATE tasks SET files_deleted_at = ? WHERE task_id = ?", (now, task_id))
            unused = []
            for sha256 in sorted(hashes):
                used = db.execute(
                    "SELECT 1 FROM task_files WHERE sha256 = ? UNION ALL "
                    "SELECT 1 FROM frames WHERE output_sha256 = ? LIMIT 1", (sha256, sha256)).fetchone()
                if used is None:
                    unused.append(sha256)
            return unused

    # -- logs -----------------------------------------------------------------------------------------------------

    def append_log(self, task_id: int, text: str) -> int:
        """Append to a task's log; returns the log's new size in bytes."""
        size = len(text.encode("utf-8"))
        with self.transaction() as db:
            row = db.execute("SELECT log_size FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            offset = row["log_size"]
            if size:
                db.execute("INSERT INTO logs (task_id, offset, size, text) VALUES (?, ?, ?, ?)",
                           (task_id, offset, size, text))
                db.execute("UPDATE tasks SET log_size = ? WHERE task_id = ?", (offset + size, task_id))
            return offset + size

    def read_log(self, task_id: int, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Log bytes from offset, at most max_bytes (cut between UTF-8 characters, at least one character), and the
        log's total size."""
        db = self.read()
        total = db.execute("SELECT log_size FROM tasks WHERE task_id = ?", (task_id,)).fetchone()["log_size"]
        if max_bytes <= 0:
            return b"", total
        # From the chunk holding `offset` on, found by the primary key rather than by reading every chunk before it.
        rows = db.execute(
            "SELECT offset, text FROM logs WHERE task_id = ? AND offset >= coalesce("
            "(SELECT max(offset) FROM logs WHERE task_id = ? AND offset <= ?), 0) ORDER BY offset",
            (task_id, task_id, offset),
        )
        pieces: list[bytes] = []
        taken = 0
        for row in rows:
            chunk = row["text"].encode("utf-8")[max(0, offset - row["offset"]):]
            pieces.append(chunk)
            taken += len(chunk)
            if taken >= max_bytes:
                break
        data = b"".join(pieces)
        if len(data) > max_bytes:
            end = max_bytes
            while 0 < end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a character
                end -= 1
            data = data[:end or _utf8_length(data)]
        return data, total


class _Batch:
    """The write transaction open on one thread's connection: the writes sharing one COMMIT."""

    # A batch commits once it holds this many writes or is this old, even with writers still in line, so a
    # steady stream of writes cannot keep the first ones waiting for their COMMIT.
    MAX_WRITES = 200
    MAX_SECONDS = 0.02

    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None
        self.number = 0
        self.writes = 0
        self.started = 0.0

    @property
    def open(self) -> bool:
        return self.db is not None

    def begin(self, db: sqlite3.Connection) -> None:
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
# frame queued. Each test is one index lookup.
_CLAIMABLE_BY_WORKER = (
    "(t.manual = 0 OR EXISTS (SELECT 1 FROM task_workers w WHERE w.task_id = t.task_id AND w.worker_name = :name)) "
    "AND (t.blender_version_key = 0 OR t.blender_version_key = :version "
    "OR (t.blender_version_exact = 0 AND t.blender_version_key < :version)) "
    "AND (t.needs_python = 0 OR :allows_python = 1) "
    "AND NOT EXISTS (SELECT 1 FROM task_worker_failures b WHERE b.task_id = t.task_id "
    "AND b.worker_id = :worker_id AND b.failures >= :blocked_at) "
    "AND EXISTS (SELECT 1 FROM frames f WHERE f.task_id = t.task_id AND f.status = 'queued')"
)


class OutputNameTaken(Exception):
    """Another frame of the task already has an output file of that name (by collision key)."""

    def __init__(self, frame: int, output: str) -> None:
        super().__init__(f"frame {frame} has the output {output!r}")
        self.frame = frame
        self.output = output


def _output_holder(db: sqlite3.Connection, task_id: int, frame: int, key: str) -> dict | None:
    # A cleared output (requeued frame) leaves a stale key behind: `output IS NOT NULL` ignores it.
    row = db.execute(
        "SELECT frame, output FROM frames WHERE task_id = ? AND output_key = ? AND frame != ? "
        "AND output IS NOT NULL LIMIT 1", (task_id, key, frame),
    ).fetchone()
    return dict(row) if row else None


def _requeue(db: sqlite3.Connection, where: str, params: tuple) -> int:
    cursor = db.execute(
        f"UPDATE frames SET status = 'queued', worker_id = NULL, lease_id = NULL, lease_expires = NULL, "
        f"render_deadline = NULL, output = NULL, output_sha256 = NULL, output_size = NULL WHERE {where}",
        params,
    )
    return cursor.rowcount


def _record_failure(db: sqlite3.Connection, task_id: int, frame: int, lease_id: str, worker_id: int, error: str,
                    log_tail: str, frame_fail_workers: int, now: float, *, keep_lease: bool) -> dict | None:
    """Count a failed render of a frame held under lease_id against its worker (for the frame and the task), then
    requeue the frame, or mark it failed once that many different workers failed it. keep_lease leaves a failed
    frame's lease on it, so the worker's repeated final report is recognised; a timeout kills the lease."""
    held = db.execute(
        "SELECT 1 FROM frames WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')",
        (task_id, frame, lease_id),
    ).fetchone()
    if held is None:
        return None
    db.execute(
        "INSERT INTO frame_failures (task_id, frame, worker_id, failed_at, error, lease_id) VALUES (?, ?, ?, ?, ?, ?)",
        (task_id, frame, worker_id, now, error, lease_id if keep_lease else None),
    )
    # Uses frame_failures_by_frame: as many rows as this frame has failed since its last retry.
    workers_failed = db.execute(
        "SELECT count(DISTINCT worker_id) FROM frame_failures WHERE task_id = ? AND frame = ? AND cleared = 0",
        (task_id, frame),
    ).fetchone()[0]
    final = workers_failed >= frame_fail_workers
    row = db.execute(
        f"UPDATE frames SET failures = failures + 1, error = ?, log_tail = ?, "
        f"attempts = CASE WHEN status = 'leased' THEN attempts + 1 ELSE attempts END, "
        f"status = ?, ended_at = CASE WHEN ? THEN ? ELSE ended_at END, "
        f"worker_id = CASE WHEN ? THEN worker_id ELSE NULL END, lease_id = ?, "
        f"lease_expires = NULL, render_deadline = NULL, output = NULL, output_sha256 = NULL, output_size = NULL "
        f"WHERE task_id = ? AND frame = ? RETURNING {FRAME_COLUMNS}",
        (error, log_tail, "failed" if final else "queued", final, now, final,
         lease_id if final and keep_lease else None, task_id, frame),
    ).fetchone()
    db.execute(
        "INSERT INTO task_worker_failures (task_id, worker_id, failures) VALUES (?, ?, 1) "
        "ON CONFLICT (task_id, worker_id) DO UPDATE SET failures = failures + 1",
        (task_id, worker_id),
    )
    db.execute("UPDATE workers SET frames_failed = frames_failed + 1 WHERE worker_id = ?", (worker_id,))
    if final:
        db.execute("UPDATE tasks SET frames_failed = frames_failed + 1 WHERE task_id = ?", (task_id,))
        _finish_task_if_complete(db, task_id, now)
    return dict(row)


def _utf8_length(data: bytes) -> int:
    """Bytes of the first UTF-8 character in data (a reader always gets at least one)."""
    end = 1
    while end < len(data) and data[end] & 0xC0 == 0x80:
        end += 1
    return end


def _finish_task_if_complete(db: sqlite3.Connection, task_id: int, now: float) -> None:
    open_frames = db.execute(
        "SELECT 1 FROM frames WHERE task_id = ? AND status IN ('queued', 'leased', 'rendering') LIMIT 1", (task_id,)
    ).fetchone()
    if open_frames is None:
        db.execute(
            "UPDATE tasks SET status = CASE WHEN frames_failed > 0 THEN 'failed' ELSE 'done' END, ended_at = ? "
            "WHERE task_id = ? AND status IN ('queued', 'running', 'paused')",
            (now, task_id),
        )


def _task_row(db: sqlite3.Connection, row: sqlite3.Row, workers: list[str] | None = None) -> dict[str, Any]:
    task = dict(row)
    if "settings" in task:
        task["settings"] = json.loads(task["settings"] or "{}")
    if "missing_assets" in task:
        task["missing_assets"] = json.loads(task["missing_assets"] or "[]")
    if workers is None:
        workers = [
            r["worker_name"]
            for r in db.execute("SELECT worker_name FROM task_workers WHERE task_id = ? ORDER BY worker_name",
                                (task["task_id"],))
        ]
    task["workers"] = workers
    return task


def _mark_done(db: sqlite3.Connection, task_id: int, frame: int, lease_id: str, worker_id: int,
               started_at: float | None, ended_at: float, render_seconds: float | None, now: float) -> dict | None:
    """Mark a frame with an output done and count it, inside the caller's transaction; None if the lease is gone."""
    row = db.execute(
        f"UPDATE frames SET status = 'done', started_at = coalesce(?, started_at), ended_at = ?, "
        f"render_seconds = ?, lease_expires = NULL, render_deadline = NULL, error = NULL, "
        f"attempts = CASE WHEN attempts = 0 THEN 1 ELSE attempts END "
        f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering') "
        f"AND output_sha256 IS NOT NULL RETURNING {FRAME_COLUMNS}",
        (started_at, ended_at, render_seconds, task_id, frame, lease_id),
    ).fetchone()
    if row is None:
        return None
    db.execute("UPDATE tasks SET frames_done = frames_done + 1 WHERE task_id = ?", (task_id,))
    db.execute(
        "UPDATE workers SET frames_done = frames_done + 1, "
        "render_seconds_total = render_seconds_total + coalesce(?, 0) WHERE worker_id = ?",
        (render_seconds, worker_id),
    )
    _finish_task_if_complete(db, task_id, now)
    return dict(row)
