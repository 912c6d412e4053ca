"""Durable state of the farm (workers, tasks, frames, logs) in SQLite, behind one small interface.

Every method is one transaction. Claims and reports are single conditional statements inside
`BEGIN IMMEDIATE`, so two threads (or, later, two PostgreSQL sessions) can never hand out the same frame.
The store knows nothing about policy: the scheduler passes in the clock, lease lengths and limits.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
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
    },
    "workers": {
        "blender_version_key": "INTEGER NOT NULL DEFAULT 0",
    },
}

FRAME_COLUMNS = (
    "task_id, frame, status, worker_id, lease_id, lease_expires, attempts, failures, started_at, ended_at, "
    "render_seconds, output, output_sha256, output_size, error, log_tail"
)


class Store:
    """SQLite-backed state. One connection per thread; WAL so readers never wait for the writer."""

    def __init__(self, path: str, *, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        # executescript manages its own transaction, so the schema is not created inside transaction().
        db = self._connection()
        db.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, declaration in columns.items():
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA foreign_keys=OFF")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so a claim never deadlocks upgrading a read lock."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

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
                      now: float) -> dict:
        """Register a worker by name. A returning name keeps its id; frames it still held are requeued."""
        with self.transaction() as db:
            row = db.execute("SELECT worker_id FROM workers WHERE name = ?", (name,)).fetchone()
            if row is None:
                worker_id = db.execute(
                    "INSERT INTO workers (name, host, blender_version, blender_version_key, cpu_count, "
                    "registered_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, host, blender_version, version_key, cpu_count, now, now),
                ).lastrowid
            else:
                worker_id = row["worker_id"]
                db.execute(
                    "UPDATE workers SET host = ?, blender_version = ?, blender_version_key = ?, cpu_count = ?, "
                    "registered_at = ?, last_seen = ? WHERE worker_id = ?",
                    (host, blender_version, version_key, cpu_count, now, now, worker_id),
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

    def heartbeat(self, worker_id: int, leases: Sequence[str], now: float, lease_expires: float) -> list[str]:
        """Mark the worker seen and renew the leases it still validly holds; return the ones it lost."""
        with self.transaction() as db:
            db.execute("UPDATE workers SET last_seen = ? WHERE worker_id = ?", (now, worker_id))
            valid: set[str] = set()
            for lease_id in leases:
                row = db.execute(
                    "UPDATE frames SET lease_expires = ? WHERE lease_id = ? AND worker_id = ? "
                    "AND status IN ('leased', 'rendering') RETURNING lease_id",
                    (lease_expires, lease_id, worker_id),
                ).fetchone()
                if row is not None:
                    valid.add(lease_id)
            return [lease for lease in leases if lease not in valid]

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
                "blender_version_key, blender_version_exact, missing_assets, files_count, files_bytes) "
                "VALUES (:name, :priority, :frame_start, :frame_end, :frame_step, :frames_total, :manual, "
                ":submitted_by, :blend_sha256, :blend_filename, :settings, :created_at, :main_file, "
                ":blender_version, :blender_version_key, :blender_version_exact, :missing_assets, :files_count, "
                ":files_bytes)",
                {**task, "frames_total": len(frame_numbers), "manual": int(bool(worker_names)),
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

    def get_task(self, task_id: int) -> dict | None:
        row = self.read().execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task_row(self.read(), row) if row else None

    def list_tasks(self, status: str | None = None, limit: int = 1000) -> list[dict]:
        """Tasks newest first (optionally of one status), each with its assigned worker names."""
        db = self.read()
        if status:
            rows = db.execute(
                "SELECT * FROM tasks WHERE status = ? ORDER BY task_id DESC LIMIT ?", (status, limit)
            ).fetchall()
        else:
            rows = db.execute("SELECT * FROM tasks ORDER BY task_id DESC LIMIT ?", (limit,)).fetchall()
        return self._task_rows(db, rows)

    def list_tasks_for_status(self, newest: int) -> list[dict]:
        """The newest `newest` tasks plus every older task still open, newest first (the status page's list)."""
        db = self.read()
        rows = db.execute(
            "SELECT * FROM tasks WHERE task_id IN (SELECT task_id FROM tasks ORDER BY task_id DESC LIMIT ?) "
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

    def frames_of(self, task_id: int) -> list[dict]:
        return [
            dict(r)
            for r in self.read().execute(
                f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? ORDER BY frame", (task_id,)
            )
        ]

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

    def recent_frame_seconds_many(self, task_ids: Sequence[int], window: int) -> dict[int, list[float]]:
        """Like recent_frame_seconds, for several tasks in one query."""
        recent: dict[int, list[float]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                "SELECT task_id, render_seconds FROM (SELECT task_id, render_seconds, row_number() OVER "
                "(PARTITION BY task_id ORDER BY ended_at DESC) AS n FROM frames WHERE status = 'done' "
                "AND render_seconds IS NOT NULL AND task_id IN (SELECT value FROM json_each(?))) "
                "WHERE n <= ? ORDER BY task_id, n",
                (json.dumps(list(task_ids)), window),
            ):
                recent[r["task_id"]].append(r["render_seconds"])
        return recent

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

    def recent_frame_seconds(self, task_id: int, window: int) -> list[float]:
        """Exact render times of the task's most recently finished frames, newest first."""
        rows = self.read().execute(
            "SELECT render_seconds FROM frames WHERE task_id = ? AND status = 'done' AND render_seconds IS NOT NULL "
            "ORDER BY ended_at DESC LIMIT ?",
            (task_id, window),
        )
        return [r["render_seconds"] for r in rows]

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

    def retry_failed_frames(self, task_id: int) -> int:
        """Queue the task's failed frames again with their failures reset; returns how many.

        A failed task runs again (a paused one stays paused). The frame_failures history stays, so the retries
        still go to other workers first. The caller refuses canceled tasks.
        """
        with self.transaction() as db:
            count = db.execute(
                "UPDATE frames SET status = 'queued', failures = 0, worker_id = NULL, lease_id = NULL, "
                "lease_expires = NULL, started_at = NULL, ended_at = NULL, error = NULL, log_tail = NULL, "
                "output = NULL, output_sha256 = NULL, output_size = NULL WHERE task_id = ? AND status = 'failed'",
                (task_id,),
            ).rowcount
            if count:
                db.execute(
                    "UPDATE tasks SET frames_failed = max(0, frames_failed - ?), ended_at = NULL, "
                    "status = CASE WHEN status = 'paused' THEN 'paused' "
                    "WHEN started_at IS NULL THEN 'queued' ELSE 'running' END WHERE task_id = ?",
                    (count, task_id),
                )
            return count

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
                "UPDATE frames SET status = 'canceled', lease_expires = NULL "
                "WHERE task_id = ? AND status IN ('queued', 'leased', 'rendering')",
                (task_id,),
            )
            return True

    # -- claiming and reporting -----------------------------------------------------------------------------------

    def expire_leases(self, now: float) -> int:
        """Requeue every frame whose lease ran out (its worker stopped reporting)."""
        with self.transaction() as db:
            return _requeue(db, "status IN ('leased', 'rendering') AND lease_expires < ?", (now,))

    def claim_frame(
        self, worker: dict, lease_id: str, now: float, lease_expires: float, prefer_task_id: int | None
    ) -> dict | None:
        """Lease the best queued frame this worker may render, or None.

        Order: higher priority, then the worker's current task (its Blender is warm), then older tasks;
        within a task, frames this worker has not failed before, lowest number first.
        """
        with self.transaction() as db:
            # Paused (and ended) tasks are left out: their queued frames wait.
            tasks = db.execute(
                "SELECT t.task_id FROM tasks t WHERE t.status IN ('queued', 'running') "
                "AND (t.manual = 0 OR EXISTS (SELECT 1 FROM task_workers w WHERE w.task_id = t.task_id "
                "AND w.worker_name = :name)) "
                "AND (t.blender_version_key = 0 OR t.blender_version_key = :version "
                "OR (t.blender_version_exact = 0 AND t.blender_version_key < :version)) "
                "AND EXISTS (SELECT 1 FROM frames f WHERE f.task_id = t.task_id AND f.status = 'queued') "
                "ORDER BY t.priority DESC, (t.task_id = :prefer) DESC, t.task_id ASC LIMIT 1",
                {"name": worker["name"], "prefer": prefer_task_id if prefer_task_id is not None else -1,
                 "version": worker["blender_version_key"]},
            ).fetchone()
            if tasks is None:
                return None
            task_id = tasks["task_id"]
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
        self, task_id: int, frame: int, lease_id: str, started_at: float, lease_expires: float
    ) -> dict | None:
        with self.transaction() as db:
            row = db.execute(
                f"UPDATE frames SET status = 'rendering', started_at = ?, lease_expires = ?, attempts = attempts + 1 "
                f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status = 'leased' RETURNING {FRAME_COLUMNS}",
                (started_at, lease_expires, task_id, frame, lease_id),
            ).fetchone()
            return dict(row) if row else None

    def record_output(
        self, task_id: int, frame: int, lease_id: str, filename: str, sha256: str, size: int
    ) -> dict | None:
        with self.transaction() as db:
            row = db.execute(
                f"UPDATE frames SET output = ?, output_sha256 = ?, output_size = ? "
                f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering') "
                f"RETURNING {FRAME_COLUMNS}",
                (filename, sha256, size, task_id, frame, lease_id),
            ).fetchone()
            return dict(row) if row else None

    def mark_done(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, started_at: float | None,
        ended_at: float, render_seconds: float | None, now: float,
    ) -> dict | None:
        """Finish a frame exactly once: the update only matches while this lease is live."""
        with self.transaction() as db:
            row = db.execute(
                f"UPDATE frames SET status = 'done', started_at = coalesce(?, started_at), ended_at = ?, "
                f"render_seconds = ?, lease_expires = NULL, error = NULL, "
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

    def mark_failed(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, error: str, log_tail: str,
        max_attempts: int, now: float,
    ) -> dict | None:
        """Record a failed render: requeue it, or mark it failed once it has failed max_attempts times."""
        with self.transaction() as db:
            row = db.execute(
                f"UPDATE frames SET failures = failures + 1, error = ?, log_tail = ?, "
                f"attempts = CASE WHEN status = 'leased' THEN attempts + 1 ELSE attempts END, "
                f"status = CASE WHEN failures + 1 >= ? THEN 'failed' ELSE 'queued' END, "
                f"ended_at = CASE WHEN failures + 1 >= ? THEN ? ELSE ended_at END, "
                f"worker_id = CASE WHEN failures + 1 >= ? THEN worker_id ELSE NULL END, "
                f"lease_id = CASE WHEN failures + 1 >= ? THEN lease_id ELSE NULL END, "
                f"lease_expires = NULL, output = NULL, output_sha256 = NULL, output_size = NULL "
                f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering') "
                f"RETURNING {FRAME_COLUMNS}",
                (error, log_tail, max_attempts, max_attempts, now, max_attempts, max_attempts,
                 task_id, frame, lease_id),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "INSERT INTO frame_failures (task_id, frame, worker_id, failed_at, error) VALUES (?, ?, ?, ?, ?)",
                (task_id, frame, worker_id, now, error),
            )
            db.execute("UPDATE workers SET frames_failed = frames_failed + 1 WHERE worker_id = ?", (worker_id,))
            if row["status"] == "failed":
                db.execute("UPDATE tasks SET frames_failed = frames_failed + 1 WHERE task_id = ?", (task_id,))
                _finish_task_if_complete(db, task_id, now)
            return dict(row)

    def release_frame(self, task_id: int, frame: int, lease_id: str) -> dict | None:
        """Give a frame back unrendered; an attempt that never started does not count."""
        with self.transaction() as db:
            n = _requeue(db, "task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')",
                         (task_id, frame, lease_id))
            if n == 0:
                return None
            row = db.execute(f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND frame = ?",
                             (task_id, frame)).fetchone()
            return dict(row)

    def extend_all_leases(self, lease_expires: float) -> None:
        """After a coordinator restart, give workers time to reconnect before their leases count as lost."""
        with self.transaction() as db:
            db.execute(
                "UPDATE frames SET lease_expires = max(coalesce(lease_expires, 0), ?) "
                "WHERE status IN ('leased', 'rendering')",
                (lease_expires,),
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
        """Log bytes from offset (at most about max_bytes) and the log's total size."""
        db = self.read()
        total = db.execute("SELECT log_size FROM tasks WHERE task_id = ?", (task_id,)).fetchone()["log_size"]
        rows = db.execute(
            "SELECT offset, size, text FROM logs WHERE task_id = ? AND offset + size > ? ORDER BY offset",
            (task_id, offset),
        )
        pieces: list[bytes] = []
        taken = 0
        for row in rows:
            if taken >= max_bytes:
                break
            chunk = row["text"].encode("utf-8")[max(0, offset - row["offset"]):]
            pieces.append(chunk)
            taken += len(chunk)
        return b"".join(pieces), total


def _requeue(db: sqlite3.Connection, where: str, params: tuple) -> int:
    cursor = db.execute(
        f"UPDATE frames SET status = 'queued', worker_id = NULL, lease_id = NULL, lease_expires = NULL, "
        f"output = NULL, output_sha256 = NULL, output_size = NULL WHERE {where}",
        params,
    )
    return cursor.rowcount


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
    task["settings"] = json.loads(task["settings"] or "{}")
    task["missing_assets"] = json.loads(task.get("missing_assets") or "[]")
    if workers is None:
        workers = [
            r["worker_name"]
            for r in db.execute("SELECT worker_name FROM task_workers WHERE task_id = ? ORDER BY worker_name",
                                (task["task_id"],))
        ]
    task["workers"] = workers
    return task
