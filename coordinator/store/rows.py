"""What the store's parts share: column lists, and the statements several of them run."""

from __future__ import annotations

import json
from typing import Any

from renderq.model import FRAME_KIND_ENCODE, MERGE_FRAME, VIDEO_FRAME

from .engine import Database, Engine

# The status strings in the SQL of the store's parts are renderq.model's TaskStatus and FrameStatus values (its sets,
# such as TASK_OPEN and FRAME_ACTIVE, are spelled out as literals so SQLite can use the partial indexes);
# tests/test_model.py checks every one of them against the model.

# Columns of a task read only for its detail (see Store.__init__).
DETAIL_ONLY_COLUMNS = ("settings", "missing_assets")

FRAME_COLUMNS = (
    "task_id, frame, status, worker_id, lease_id, lease_expires, attempts, failures, started_at, ended_at, "
    "render_seconds, output, output_sha256, output_size, error, log_tail, preview_sha256, kind"
)


class OutputNameTaken(Exception):
    """Another frame of the task already has an output file of that name (by collision key)."""

    def __init__(self, frame: int, output: str) -> None:
        super().__init__(f"frame {frame} has the output {output!r}")
        self.frame = frame
        self.output = output


def output_holder(engine: Engine, db: Database, task_id: int, frame: int, key: str) -> dict | None:
    # A cleared output (requeued frame) leaves a stale key behind: `output IS NOT NULL` ignores it. Without the
    # index named, SQLite walks every frame of the task (20,000 of them: 2 ms per finished frame).
    row = db.execute(
        f"SELECT frame, output FROM frames {engine.indexed_by('frames_by_output_key')} "
        "WHERE task_id = ? AND output_key = ? "
        "AND frame != ? "
        "AND output IS NOT NULL LIMIT 1", (task_id, key, frame),
    ).fetchone()
    return dict(row) if row else None


def requeue(db: Database, where: str, params: tuple) -> int:
    cursor = db.execute(
        f"UPDATE frames SET status = 'queued', worker_id = NULL, lease_id = NULL, lease_expires = NULL, "
        f"render_deadline = NULL, output = NULL, output_sha256 = NULL, output_size = NULL, preview_sha256 = NULL "
        f"WHERE {where}",
        params,
    )
    return cursor.rowcount


def record_failure(engine: Engine, db: Database, task_id: int, frame: int, lease_id: str, worker_id: int, error: str,
                    log_tail: str, frame_fail_workers: int, now: float, *, keep_lease: bool) -> dict | None:
    """Count a failed render of a frame held under lease_id against its worker (for the frame and the task), then
    requeue the frame, or mark it failed once that many different workers failed it (a task's encode job: once it
    failed that many times, on any workers: a video that cannot be made fails alike everywhere, and a farm may
    have one worker with FFmpeg). keep_lease leaves a failed frame's lease on it, so the worker's repeated final
    report is recognised; a timeout kills the lease."""
    # Locked (PostgreSQL) until the end of the transaction: no other coordinator's report changes the frame between
    # this check and the update below.
    held = db.execute(
        "SELECT kind FROM frames WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')"
        + engine.for_update,
        (task_id, frame, lease_id),
    ).fetchone()
    if held is None:
        return None
    db.execute(
        "INSERT INTO frame_failures (task_id, frame, worker_id, failed_at, error, lease_id) VALUES (?, ?, ?, ?, ?, ?)",
        (task_id, frame, worker_id, now, error, lease_id if keep_lease else None),
    )
    # Uses frame_failures_by_frame: as many rows as this frame has failed since its last retry.
    counted = "count(*)" if held["kind"] == FRAME_KIND_ENCODE else "count(DISTINCT worker_id)"
    workers_failed = db.execute(
        f"SELECT {counted} FROM frame_failures WHERE task_id = ? AND frame = ? AND cleared = 0",
        (task_id, frame),
    ).fetchone()[0]
    final = workers_failed >= frame_fail_workers
    row = db.execute(
        f"UPDATE frames SET failures = failures + 1, error = ?, log_tail = ?, "
        f"attempts = CASE WHEN status = 'leased' THEN attempts + 1 ELSE attempts END, "
        f"status = ?, ended_at = CASE WHEN ? THEN ? ELSE ended_at END, "
        f"worker_id = CASE WHEN ? THEN worker_id ELSE NULL END, lease_id = ?, "
        f"lease_expires = NULL, render_deadline = NULL, output = NULL, output_sha256 = NULL, output_size = NULL, "
        f"preview_sha256 = NULL "
        f"WHERE task_id = ? AND frame = ? RETURNING {FRAME_COLUMNS}",
        (error, log_tail, "failed" if final else "queued", final, now, final,
         lease_id if final and keep_lease else None, task_id, frame),
    ).fetchone()
    db.execute(
        "INSERT INTO task_worker_failures (task_id, worker_id, failures) VALUES (?, ?, 1) "
        "ON CONFLICT (task_id, worker_id) DO UPDATE SET failures = task_worker_failures.failures + 1",
        (task_id, worker_id),
    )
    db.execute("UPDATE workers SET frames_failed = frames_failed + 1 WHERE worker_id = ?", (worker_id,))
    if final:
        db.execute("UPDATE tasks SET frames_failed = frames_failed + 1 WHERE task_id = ?", (task_id,))
        finish_task_if_complete(db, task_id, now)
    return dict(row)


def finish_task_if_complete(db: Database, task_id: int, now: float) -> None:
    """End the task once no frame of it is open: done, or failed if a frame failed. A task that asks for a video
    and whose frames all rendered gets its encode job first, and ends when that does; a tiled still whose tiles all
    rendered gets its merge job alike."""
    open_frames = db.execute(
        "SELECT 1 FROM frames WHERE task_id = ? AND status IN ('queued', 'leased', 'rendering') LIMIT 1", (task_id,)
    ).fetchone()
    if open_frames is None:
        if (await_approval_if_scouted(db, task_id) or queue_encode_job(db, task_id)
                or queue_merge_job(db, task_id)):
            return
        db.execute(
            "UPDATE tasks SET status = CASE WHEN frames_failed > 0 THEN 'failed' ELSE 'done' END, ended_at = ? "
            "WHERE task_id = ? AND status IN ('queued', 'running', 'paused')",
            (now, task_id),
        )


def await_approval_if_scouted(db: Database, task_id: int) -> bool:
    """The one place a task starts waiting for approval: once its scouts are done (or failed for good) and only
    held frames are left, its status becomes 'awaiting_approval' until it is approved or canceled. Whether the task
    has held frames (and so waits)."""
    held = db.execute("SELECT 1 FROM frames WHERE task_id = ? AND status = 'held' LIMIT 1", (task_id,)).fetchone()
    if held is None:
        return False
    # A paused task whose scouts ended waits for approval too: nothing of it is rendering any more.
    db.execute("UPDATE tasks SET status = 'awaiting_approval' WHERE task_id = ? AND status IN ('queued', 'running', "
               "'paused')", (task_id,))
    return True


def queue_encode_job(db: Database, task_id: int) -> bool:
    """Add the task's encode job (a frame row of kind 'encode', counted in frames_total) if the task asks for a
    video, every frame rendered and the job is not there yet; whether it was added."""
    return _queue_last_job(db, task_id, "video", VIDEO_FRAME, "encode")


def queue_merge_job(db: Database, task_id: int) -> bool:
    """Add a tiled still's merge job (a frame row of kind 'merge', counted in frames_total) once every tile
    rendered and the job is not there yet; whether it was added."""
    return _queue_last_job(db, task_id, "tiles", MERGE_FRAME, "merge")


def _queue_last_job(db: Database, task_id: int, asked_by: str, frame: int, kind: str) -> bool:
    """Add the job that ends a task (its row `frame` of `kind`) if the task's column `asked_by` asks for it, no frame
    of it failed and it is still open; whether it was added. `asked_by` and `kind` are our own constants."""
    task = db.execute(f"SELECT {asked_by}, frames_failed, status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    if task is None or not task[asked_by] or task["frames_failed"] or task["status"] not in TASK_OPEN_SQL:
        return False
    added = db.execute(
        # Ranked past every frame (their ranks are below their count): claimed last.
        f"INSERT INTO frames (task_id, frame, kind, claim_rank) VALUES (?, ?, '{kind}', ?) ON CONFLICT DO NOTHING",
        (task_id, frame, frame),
    ).rowcount
    if added:
        db.execute("UPDATE tasks SET frames_total = frames_total + 1 WHERE task_id = ?", (task_id,))
    return bool(added)


# renderq.model.TASK_OPEN, as the statuses queue_encode_job and queue_merge_job compare with.
TASK_OPEN_SQL = ("queued", "running", "paused", "awaiting_approval")


def task_row(db: Database, row: Any, workers: list[str] | None = None) -> dict[str, Any]:
    task = dict(row)
    if "settings" in task:
        task["settings"] = json.loads(task["settings"] or "{}")
    if "missing_assets" in task:
        task["missing_assets"] = json.loads(task["missing_assets"] or "[]")
    if "tags" in task:
        task["tags"] = json.loads(task["tags"] or "[]")
    if "video" in task:
        task["video"] = json.loads(task["video"]) if task["video"] else None
    if workers is None:
        workers = [
            r["worker_name"]
            for r in db.execute("SELECT worker_name FROM task_workers WHERE task_id = ? ORDER BY worker_name",
                                (task["task_id"],))
        ]
    task["workers"] = workers
    return task
