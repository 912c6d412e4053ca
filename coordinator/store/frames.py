"""The store's frames: claims, leases and the reports of rendered and failed frames."""

from __future__ import annotations

from renderq.capabilities import ENCODE_BIT
from renderq.model import VIDEO_FRAME

from ..claim_order import AHEAD_GUARD_FRAMES, withheld_from_ahead_claim
from .connection import StoreConnection
from .engine import Database
from .rows import FRAME_COLUMNS, OutputNameTaken, finish_task_if_complete, output_holder, record_failure, requeue
from .task_writes import TaskRowWrites

# A frame that is not a task's encode job. The job is always frame VIDEO_FRAME, past every frame Blender renders, so
# the claim tells it by its number: `frame` is in the index the claim reads (frames_by_status: task, status, claim
# rank, frame), `kind` is not, and testing `kind` there made every claim read the task's frame rows one by one (3-8
# times the claim's time).
_NOT_ENCODE_JOB = f"f.frame < {VIDEO_FRAME}"

# Whether the worker (named parameters name, version, allows_python, offers, worker_id, blocked_at, can_encode) may
# take a frame of the open task t now: assigned to it (or to anyone), the right Blender, Python allowed if needed, its
# engine and GPU offered (bits: renderq.capabilities), every tag of the task, not blocked, and a frame queued that it
# can do (an encode job only if it offers ENCODE_BIT: it has FFmpeg). Each test is a column test or index lookups; a
# task without tags (most) skips the tag lookups.
_CLAIMABLE_BY_WORKER = (
    "(t.manual = 0 OR EXISTS (SELECT 1 FROM task_workers w WHERE w.task_id = t.task_id AND w.worker_name = :name)) "
    "AND (t.blender_version_key = 0 OR t.blender_version_key = :version "
    "OR (t.blender_version_exact = 0 AND t.blender_version_key < :version)) "
    "AND (t.needs_python = 0 OR :allows_python = 1) "
    "AND (t.needs & :offers) = t.needs "
    "AND (t.tags = '[]' OR NOT EXISTS (SELECT 1 FROM task_tags tt WHERE tt.task_id = t.task_id AND NOT EXISTS ("
    "SELECT 1 FROM worker_tags wt WHERE wt.worker_id = :worker_id AND wt.tag = tt.tag))) "
    "AND NOT EXISTS (SELECT 1 FROM task_worker_failures b WHERE b.task_id = t.task_id "
    "AND b.worker_id = :worker_id AND b.failures >= :blocked_at) "
    "AND EXISTS (SELECT 1 FROM frames f WHERE f.task_id = t.task_id AND f.status = 'queued' "
    f"AND (:can_encode = 1 OR {_NOT_ENCODE_JOB}))"
)


class FrameQueries(StoreConnection):
    """Claiming a frame and everything reported about it."""

    def expire_leases(self, now: float, frame_fail_workers: int) -> int:
        """Requeue every frame whose lease ran out (its worker stopped reporting), and fail, as a failure of its
        worker, every frame still rendering past its render deadline (its worker never reported the timeout).
        Returns how many frames were taken back. One coordinator at a time sweeps; the others' sweeps meanwhile do
        nothing and return 0."""
        # Most seconds nothing is due, and finding that out needs no write turn, which every writer waits behind: at
        # 5,000 simulated workers the sweep's turn, every second, waited up to a second for the write lock, and the
        # turns of worker calls queued behind it.
        due = self.read().execute(
            "SELECT 1 FROM frames WHERE status IN ('leased', 'rendering') AND lease_expires < ? "
            "UNION ALL SELECT 1 FROM frames WHERE status = 'rendering' AND render_deadline < ? LIMIT 1",
            (now, now)).fetchone()
        if due is None:
            return 0
        with self.transaction() as db:
            if not self.engine.try_lock(db, "lease sweep"):
                return 0
            expired = requeue(db, "status IN ('leased', 'rendering') AND lease_expires < ?", (now,))
            overdue = db.execute(
                "SELECT f.task_id, f.frame, f.worker_id, f.lease_id, t.frame_timeout FROM frames f "
                "JOIN tasks t ON t.task_id = f.task_id WHERE f.status = 'rendering' AND f.render_deadline < ?",
                (now,),
            ).fetchall()
            for row in overdue:
                error = (f"timed out: frame {row['frame']} was still rendering long after the task's frame timeout "
                         f"of {row['frame_timeout'] or 0:g} s, and its worker did not report it")
                # The lease dies with it, so that worker's later reports about the frame are refused.
                record_failure(self.engine, db, row["task_id"], row["frame"], row["lease_id"], row["worker_id"],
                               error, "", frame_fail_workers, now, keep_lease=False)
            return expired + len(overdue)

    def claim_frame(
        self, worker: dict, lease_id: str, now: float, lease_expires: float, prefer_task_id: int | None,
        bad_worker_failures: int, ahead: bool = False,
    ) -> dict | None:
        """Lease the best queued frame this worker may render, or None.

        Order: higher priority, then the worker's current task (its Blender is warm), then older tasks;
        within a task, frames this worker has not failed before, lowest claim rank first (the task's render order,
        fixed at submit). A claim `ahead` (the worker is still rendering a frame) gets none of the chosen task's last
        frames (claim_order.withheld_from_ahead_claim). Tasks the worker is blocked
        from (bad_worker_failures failed reports) and tasks that run Python, unless the worker allows it, are
        left out, and so are tasks whose engine, GPU or tags the worker does not offer.
        """
        values = {"name": worker["name"], "version": worker["blender_version_key"],
                  "allows_python": int(bool(worker["allows_python"])), "offers": worker["offers"],
                  "worker_id": worker["worker_id"], "blocked_at": bad_worker_failures, "prefer": prefer_task_id,
                  # The encode bit as a flag: the claim's frame tests compare it, not the whole of `offers`.
                  "can_encode": int(bool(worker["offers"] & ENCODE_BIT))}
        with self.transaction() as db:
            # Walks tasks_claimable in order and stops at the first task this worker may take: a claim does not
            # look at (or sort) every open task. Paused (and ended) tasks are left out: their queued frames wait.
            best = db.execute(
                f"SELECT t.task_id, t.priority FROM tasks t {self.engine.indexed_by('tasks_claimable')} "
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
            if ahead and _kept_for_free_workers(db, task_id, worker["worker_id"]):
                return None
            # The frame row stays locked until the COMMIT (PostgreSQL): another coordinator's claim skips it.
            row = db.execute(
                f"SELECT frame FROM frames f WHERE task_id = ? AND status = 'queued' AND (? = 1 OR {_NOT_ENCODE_JOB}) "
                "AND NOT EXISTS (SELECT 1 FROM frame_failures x WHERE x.task_id = f.task_id AND x.frame = f.frame "
                f"AND x.worker_id = ?) ORDER BY claim_rank, frame LIMIT 1{self.engine.skip_locked}",
                (task_id, values["can_encode"], worker["worker_id"]),
            ).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT frame FROM frames f WHERE task_id = ? AND status = 'queued' "
                    f"AND (? = 1 OR {_NOT_ENCODE_JOB}) ORDER BY claim_rank, frame LIMIT 1{self.engine.skip_locked}",
                    (task_id, values["can_encode"]),
                ).fetchone()
            if row is None:
                return None  # every queued frame of the task is being claimed by other coordinators just now
            frame = db.execute(
                f"UPDATE frames SET status = 'leased', worker_id = ?, lease_id = ?, lease_expires = ? "
                f"WHERE task_id = ? AND frame = ? AND status = 'queued' RETURNING {FRAME_COLUMNS}",
                (worker["worker_id"], lease_id, lease_expires, task_id, row["frame"]),
            ).fetchone()
            if frame is None:
                return None
            writes = self.task_writes()
            if writes is not None:
                writes.start(task_id, now)
            else:
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
            holder = output_holder(self.engine, db, task_id, frame, key)
            if holder is not None:
                raise OutputNameTaken(holder["frame"], holder["output"])
            row = db.execute(
                f"UPDATE frames SET output = ?, output_key = ?, output_sha256 = ?, output_size = ?, "
                f"preview_sha256 = NULL "
                f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering') "
                f"RETURNING {FRAME_COLUMNS}",
                (filename, key, sha256, size, task_id, frame, lease_id),
            ).fetchone()
            return dict(row) if row else None

    def output_holder(self, task_id: int, frame: int, key: str) -> dict | None:
        """Another frame of the task whose output has collision key `key` ({"frame", "output"}), or None."""
        return output_holder(self.engine, self._connection(), task_id, frame, key)

    def mark_done(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, started_at: float | None,
        ended_at: float, render_seconds: float | None, now: float,
    ) -> dict | None:
        """Finish a frame exactly once: the update only matches while this lease is live."""
        with self.transaction() as db:
            return _mark_done(db, self.task_writes(), task_id, frame, lease_id, worker_id, started_at, ended_at,
                              render_seconds, now)

    def finish_frame(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, output: tuple[str, str, str, int],
        started_at: float | None, ended_at: float, render_seconds: float | None, now: float,
        preview_sha256: str | None = None,
    ) -> dict | None:
        """Record the frame's output (filename, collision key, sha256, size) and its preview, if any, and mark it
        done in one transaction, fenced by the lease: None (and nothing written) when the lease is not live;
        OutputNameTaken as record_output."""
        filename, key, sha256, size = output
        with self.transaction() as db:
            holder = output_holder(self.engine, db, task_id, frame, key)
            if holder is not None:
                raise OutputNameTaken(holder["frame"], holder["output"])
            updated = db.execute(
                "UPDATE frames SET output = ?, output_key = ?, output_sha256 = ?, output_size = ?, "
                "preview_sha256 = ? "
                "WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')",
                (filename, key, sha256, size, preview_sha256, task_id, frame, lease_id),
            ).rowcount
            if not updated:
                return None
            return _mark_done(db, self.task_writes(), task_id, frame, lease_id, worker_id, started_at, ended_at,
                              render_seconds, now)

    def mark_failed(
        self, task_id: int, frame: int, lease_id: str, worker_id: int, error: str, log_tail: str,
        frame_fail_workers: int, now: float,
    ) -> dict | None:
        """Record a failed render: requeue it, or mark it failed once it has failed on frame_fail_workers
        different workers since its last retry. None when the lease is not live."""
        with self.transaction() as db:
            return record_failure(self.engine, db, task_id, frame, lease_id, worker_id, error, log_tail,
                                  frame_fail_workers, now, keep_lease=True)

    def release_frame(self, task_id: int, frame: int, lease_id: str, needs_python: bool = False) -> dict | None:
        """Give a frame back unrendered; an attempt that never started does not count. With needs_python the
        worker found that the file runs Python it may not run: the task is marked as needing Python."""
        with self.transaction() as db:
            n = requeue(db, "task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering')",
                         (task_id, frame, lease_id))
            if n == 0:
                return None
            if needs_python:
                db.execute("UPDATE tasks SET needs_python = 1 WHERE task_id = ?", (task_id,))
            row = db.execute(f"SELECT {FRAME_COLUMNS} FROM frames WHERE task_id = ? AND frame = ?",
                             (task_id, frame)).fetchone()
            return dict(row)

    def video_inputs(self, task_id: int, after: int | None, limit: int) -> list[dict]:
        """Up to `limit` of the rendered frames a task's video (or a tiled still's merge job: its tiles) is made of,
        numbered above `after`, in frame order: {frame, output, sha256, size}."""
        rows = self.read().execute(
            "SELECT frame, output, output_sha256 AS sha256, output_size AS size FROM frames "
            "WHERE task_id = ? AND status = 'done' AND frame > ? AND kind IN ('render', 'tile') "
            "AND output_sha256 IS NOT NULL "
            "ORDER BY frame LIMIT ?",
            (task_id, -(2**62) if after is None else after, limit),
        ).fetchall()
        return [dict(row) for row in rows]

    def extend_all_leases(self, lease_expires: float) -> None:
        """After a coordinator restart, give workers time to reconnect before their leases count as lost (or their
        frames as timed out: the worker may have reported its own timeout while the coordinator was down)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE frames SET "
                "lease_expires = CASE WHEN lease_expires > :until THEN lease_expires ELSE :until END, "
                "render_deadline = CASE WHEN render_deadline < :until THEN :until ELSE render_deadline END "
                "WHERE status IN ('leased', 'rendering')",
                {"until": lease_expires},
            )


def _mark_done(db: Database, writes: TaskRowWrites | None, task_id: int, frame: int, lease_id: str, worker_id: int,
               started_at: float | None, ended_at: float, render_seconds: float | None, now: float) -> dict | None:
    """Mark a frame with an output done and count it, inside the caller's transaction (the task's count at the end
    of the batch, if there is one: task_writes.py); None if the lease is gone."""
    row = db.execute(
        f"UPDATE frames SET status = 'done', started_at = coalesce(?, started_at), ended_at = ?, "
        f"render_seconds = ?, lease_expires = NULL, render_deadline = NULL, error = NULL, "
        # A frame done straight from 'leased' had no rendering report (a large farm's start reports may lose the
        # race to the result): its attempt is counted here.
        f"attempts = CASE WHEN status = 'leased' THEN attempts + 1 ELSE attempts END "
        f"WHERE task_id = ? AND frame = ? AND lease_id = ? AND status IN ('leased', 'rendering') "
        f"AND output_sha256 IS NOT NULL RETURNING {FRAME_COLUMNS}",
        (started_at, ended_at, render_seconds, task_id, frame, lease_id),
    ).fetchone()
    if row is None:
        return None
    db.execute(
        "UPDATE workers SET frames_done = frames_done + 1, "
        "render_seconds_total = render_seconds_total + coalesce(?, 0) WHERE worker_id = ?",
        (render_seconds, worker_id),
    )
    if writes is not None:
        writes.count_done(task_id, now)
    else:
        db.execute("UPDATE tasks SET frames_done = frames_done + 1 WHERE task_id = ?", (task_id,))
        finish_task_if_complete(db, task_id, now)
    return dict(row)


def _kept_for_free_workers(db: Database, task_id: int, worker_id: int) -> bool:
    """Whether the task's queued frames are its last ones, which a claim ahead by `worker_id` does not get."""
    queued = db.execute(
        "SELECT COUNT(*) AS n FROM (SELECT 1 FROM frames WHERE task_id = ? AND status = 'queued' LIMIT ?) q",
        (task_id, AHEAD_GUARD_FRAMES + 1),
    ).fetchone()["n"]
    if queued > AHEAD_GUARD_FRAMES:
        return False
    holders = db.execute(
        "SELECT COUNT(*) AS n FROM (SELECT DISTINCT worker_id FROM frames WHERE task_id = ? "
        "AND status IN ('leased', 'rendering') AND worker_id <> ? LIMIT ?) h",
        (task_id, worker_id, queued),
    ).fetchone()["n"]
    return withheld_from_ahead_claim(queued, holders)
