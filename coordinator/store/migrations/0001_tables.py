"""The tables as the first release made them. IF NOT EXISTS: a database from before numbered migrations has them.

Written in SQLite's types; execute_ddl gives PostgreSQL its own. (Until both engines, this was 0001_tables.sql: yoyo
knows a migration by its id, so a database that had it does not run it again.)
"""

from yoyo import step

from coordinator.store.schema import execute_ddl

TABLES = """
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
    "offset" INTEGER NOT NULL,
    size INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (task_id, "offset")
) WITHOUT ROWID;
"""


def create_tables(db) -> None:
    """Create the first release's tables and indexes."""
    execute_ddl(db, TABLES)


steps = [step(create_tables)]
