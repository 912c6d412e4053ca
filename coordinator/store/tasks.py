"""The store's tasks: submitting, listing, and the owner's and admin's actions on them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from renderq.model import DEFAULT_RENDER_ORDER, VIDEO_FRAME, TaskStatus

from ..claim_order import claim_ranks
from .connection import StoreConnection
from .engine import Database
from .notifications import add_task_notify_urls
from .rows import FRAME_COLUMNS, requeue, task_row


class TaskQueries(StoreConnection):
    """Tasks and what is read of their frames."""

    _summary_columns: str


    def insert_task(self, task: dict, frame_numbers: Sequence[int], worker_names: Sequence[str],
                    files: Sequence[tuple[str, str, int]]) -> int:
        """Store a task, its files (path, sha256, size) and all its frames at once: fully queued or absent. The frames
        are numbered `frame_numbers` (lowest first) and ranked for claims in the task's `render_order`. With `scouts`
        (frame numbers) in the task, only those are queued and its other frames are held."""
        with self.transaction() as db:
            task_id = db.execute(
                "INSERT INTO tasks (name, priority, frame_start, frame_end, frame_step, frames_total, manual, "
                "submitted_by, blend_sha256, blend_filename, settings, created_at, main_file, blender_version, "
                "blender_version_key, blender_version_exact, missing_assets, files_count, files_bytes, "
                "frame_timeout, no_progress_timeout, needs_python, owner, render_engine, device, tags, needs, video, "
                "render_order, status, notified_status) "
                "VALUES (:name, :priority, :frame_start, :frame_end, :frame_step, :frames_total, :manual, "
                ":submitted_by, :blend_sha256, :blend_filename, :settings, :created_at, :main_file, "
                ":blender_version, :blender_version_key, :blender_version_exact, :missing_assets, :files_count, "
                ":files_bytes, :frame_timeout, :no_progress_timeout, :needs_python, :owner, :render_engine, "
                ":device, :tags, :needs, :video, :render_order, :status, :status) RETURNING task_id",
                {"frame_timeout": None, "no_progress_timeout": 600.0, "owner": "", "render_engine": "",
                 "device": "", "needs": 0, "render_order": DEFAULT_RENDER_ORDER,
                 # Seen by the notifier as it starts: a new task is no event, and needs no write of the notifier's.
                 **task, "status": TaskStatus.QUEUED.value, "tags": json.dumps(sorted(set(task.get("tags") or []))),
                 "needs_python": int(bool(task.get("needs_python"))),
                 "frames_total": len(frame_numbers), "manual": int(bool(worker_names)),
                 "settings": json.dumps(task.get("settings") or {}),
                 "missing_assets": json.dumps(list(task.get("missing_assets") or [])),
                 "video": json.dumps(task["video"]) if task.get("video") else "",
                 "blender_version_exact": int(bool(task.get("blender_version_exact"))),
                 "files_count": len(files), "files_bytes": sum(size for _, _, size in files)},
            ).fetchone()[0]
            db.executemany("INSERT INTO task_files (task_id, path, sha256, size) VALUES (?, ?, ?, ?)",
                           ((task_id, path, sha256, size) for path, sha256, size in files))
            # Each frame's claim rank, fixed now: the claim takes the lowest rank queued. A tiled still's frames are
            # its tiles (renderq.tiles).
            ranks = claim_ranks(len(frame_numbers), task.get("render_order", DEFAULT_RENDER_ORDER))
            kind = "tile" if task.get("tiles") else "render"
            db.executemany("INSERT INTO frames (task_id, frame, kind, claim_rank) VALUES (?, ?, ?, ?)",
                           ((task_id, n, kind, rank) for n, rank in zip(frame_numbers, ranks, strict=True)))
            if task.get("scouts"):
                self._hold_all_but(db, task_id, task["scouts"])
            if task.get("tiles"):
                db.execute("UPDATE tasks SET tiles = ? WHERE task_id = ?", (task["tiles"], task_id))
            db.executemany(
                "INSERT INTO task_workers (task_id, worker_name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                ((task_id, name) for name in worker_names),
            )
            db.executemany("INSERT INTO task_tags (task_id, tag) VALUES (?, ?)",
                           ((task_id, tag) for tag in set(task.get("tags") or [])))
            add_task_notify_urls(db, task_id, task.get("notify") or ())
            return task_id

    def _hold_all_but(self, db: Database, task_id: int, scouts: Sequence[int]) -> None:
        """Hold every frame of a new task but its scouts, until it is approved."""
        db.execute("UPDATE tasks SET scout_frames = ? WHERE task_id = ?", (len(scouts), task_id))
        db.execute(f"UPDATE frames SET status = 'held' WHERE task_id = ? AND NOT (frame {self.engine.in_list('?')})",
                   (task_id, self.engine.list_value(list(scouts))))

    def get_task(self, task_id: int, detail: bool = False) -> dict | None:
        """One task's row; with `detail`, also its settings and missing assets."""
        columns = f"{self._summary_columns}, settings, missing_assets" if detail else self._summary_columns
        row = self.read().execute(f"SELECT {columns} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        # Only a task assigned to named workers has any in task_workers.
        return task_row(self.read(), row, None if row["manual"] else [])

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
            "OR status IN ('queued', 'running', 'paused', 'awaiting_approval') ORDER BY task_id DESC",
            (newest,),
        ).fetchall()
        return self._task_rows(db, rows)

    def _task_rows(self, db: Database, rows: list[Any]) -> list[dict]:
        # One query for the assigned workers of all the rows, not one per task.
        workers: dict[int, list[str]] = {}
        manual = [r["task_id"] for r in rows if r["manual"]]
        if manual:
            for r in db.execute("SELECT task_id, worker_name FROM task_workers WHERE task_id "
                                f"{self.engine.in_list('?')} ORDER BY task_id, worker_name",
                                (self.engine.list_value(manual),)):
                workers.setdefault(r["task_id"], []).append(r["worker_name"])
        return [task_row(db, r, workers.get(r["task_id"], [])) for r in rows]

    def lease_fields(self, task_id: int) -> dict | None:
        """What a claim's answer tells the worker about the task (its file, Blender, settings, limits, device, video
        and tiles), in one read: the claim runs in the workers' turn, where every read counts."""
        row = self.read().execute(
            "SELECT task_id, name, blend_sha256, blend_filename, main_file, files_count, blender_version, settings, "
            "frame_timeout, no_progress_timeout, needs_python, device, video, tiles, frame_start "
            "FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        task = dict(row)
        task["settings"] = json.loads(task["settings"] or "{}")
        task["video"] = json.loads(task["video"]) if task["video"] else None
        return task

    def has_task(self, task_id: int) -> bool:
        """Whether the task exists (a check that reads no more than its key)."""
        return self.read().execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone() is not None

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
        """The task's `count` done frames that ended last, latest first (a tiled still's tiles are parts, not its
        images: only its merged still is shown)."""
        return [dict(r) for r in self.read().execute(
            f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND status = 'done' AND kind != 'tile' "
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

    def frame_totals(self) -> dict[str, int]:
        """Frames of every task by status (what GET /metrics reports): one pass over the frames."""
        return {r["status"]: r["n"] for r in self.read().execute("SELECT status, count(*) AS n FROM frames "
                                                                 "GROUP BY status")}

    def frame_counts_many(self, task_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Frames per status of each task, in one query: {task_id: {status: count}}."""
        counts: dict[int, dict[str, int]] = {task_id: {} for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                f"SELECT task_id, status, count(*) AS n FROM frames WHERE task_id {self.engine.in_list('?')} "
                "GROUP BY task_id, status",
                (self.engine.list_value(task_ids),),
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
                f"WHERE status = 'done' AND task_id {self.engine.in_list('?')} ORDER BY task_id, frame",
                (self.engine.list_value(task_ids),),
            ):
                if timed_most is None or (r["render_seconds"] or 0) > 0 and r["from_last"] <= timed_most:
                    done[r["task_id"]].append((r["frame"], r["render_seconds"], r["worker_id"], r["started_at"],
                                               r["ended_at"]))
                else:
                    done[r["task_id"]].append((r["frame"], None, None, None, None))
        return done

    def frames_claimed_last_many(self, task_ids: Sequence[int], count: int) -> dict[int, list[int]]:
        """The last `count` frames of each task still to render (queued, held, leased or rendering; not its encode job)
        by claim rank, in claim order, in one query: {task_id: [frame, ...]}."""
        last: dict[int, list[int]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                "SELECT task_id, frame FROM (SELECT task_id, frame, claim_rank, row_number() OVER ("
                "PARTITION BY task_id ORDER BY claim_rank DESC) AS from_last FROM frames "
                "WHERE status IN ('queued', 'held', 'leased', 'rendering') AND frame < ? "
                f"AND task_id {self.engine.in_list('?')}) AS open_frames WHERE from_last <= ? "
                "ORDER BY task_id, claim_rank",
                (VIDEO_FRAME, self.engine.list_value(task_ids), count),
            ):
                last[r["task_id"]].append(r["frame"])
        return last

    def failed_frame_numbers(self, task_ids: Sequence[int]) -> dict[int, list[int]]:
        """The failed frames of each task, in one query: {task_id: [frame, ...]}."""
        failed: dict[int, list[int]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            for r in self.read().execute(
                f"SELECT task_id, frame FROM frames WHERE status = 'failed' AND task_id {self.engine.in_list('?')} "
                "ORDER BY task_id, frame",
                (self.engine.list_value(task_ids),),
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
                "LEFT JOIN workers w ON w.worker_id = b.worker_id WHERE b.failures >= ? AND b.task_id "
                f"{self.engine.in_list('?')} ORDER BY b.task_id, w.name, b.worker_id",
                (bad_worker_failures, self.engine.list_value(task_ids)),
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
            requeue(db, "task_id = ? AND status = 'leased'", (task_id,))
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
                "log_tail = NULL, output = NULL, output_sha256 = NULL, output_size = NULL, preview_sha256 = NULL "
                "WHERE task_id = ? AND status = 'failed'",
                (task_id,),
            ).rowcount
            unblocked = db.execute("DELETE FROM task_worker_failures WHERE task_id = ?", (task_id,)).rowcount
            if count:
                db.execute(
                    "UPDATE tasks SET frames_failed = CASE WHEN frames_failed > ? THEN frames_failed - ? ELSE 0 END, "
                    "ended_at = NULL, "
                    "status = CASE WHEN status = 'paused' THEN 'paused' "
                    "WHEN started_at IS NULL THEN 'queued' ELSE 'running' END WHERE task_id = ?",
                    (count, count, task_id),
                )
            return count, unblocked

    def cancel_task(self, task_id: int, now: float) -> bool:
        """Cancel every frame not finished. False when the task had already ended."""
        with self.transaction() as db:
            updated = db.execute(
                "UPDATE tasks SET status = 'canceled', ended_at = ? WHERE task_id = ? "
                "AND status IN ('queued', 'running', 'paused', 'awaiting_approval') RETURNING task_id",
                (now, task_id),
            ).fetchone()
            if updated is None:
                return False
            # The lease ids stay on the rows so a worker's next heartbeat learns they are revoked.
            db.execute(
                "UPDATE frames SET status = 'canceled', lease_expires = NULL, render_deadline = NULL "
                "WHERE task_id = ? AND status IN ('queued', 'leased', 'rendering', 'held')",
                (task_id,),
            )
            return True

    def approve_task(self, task_id: int) -> bool:
        """Hand out the held frames of a task awaiting approval: it runs on. False unless it awaits approval."""
        with self.transaction() as db:
            updated = db.execute(
                "UPDATE tasks SET status = CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END "
                "WHERE task_id = ? AND status = 'awaiting_approval' RETURNING task_id",
                (task_id,),
            ).fetchone()
            if updated is None:
                return False
            db.execute("UPDATE frames SET status = 'queued' WHERE task_id = ? AND status = 'held'", (task_id,))
            return True
