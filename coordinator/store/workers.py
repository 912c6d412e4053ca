"""The store's workers: registration, heartbeats, switching ON and OFF, tags."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from renderq.capabilities import ALL_ENGINES

from .connection import StoreConnection
from .engine import Database
from .rows import FRAME_COLUMNS, requeue

# A worker row's columns that hold JSON lists (devices, engines, tags): read back as lists.
_JSON_COLUMNS = ("devices", "engines", "tags")
# The frame columns, of the frames table as `f` (joined with its task).
_FRAME_COLUMNS_OF_F = ", ".join("f." + column.strip() for column in FRAME_COLUMNS.split(","))


class WorkerQueries(StoreConnection):
    """Workers and the frames they hold."""

    def upsert_worker(self, name: str, host: str, blender_version: str, version_key: int, cpu_count: int,
                      now: float, allows_python: bool = False, offered: dict[str, Any] | None = None) -> dict:
        """Register a worker by name. A returning name keeps its id; frames it still held are requeued.

        `offered`: what it can do ({devices, engines, tags, video_encoders, offers}: renderq.capabilities); none
        from a worker that does not say (it keeps every engine and encodes no video). Tags an admin set stay; the
        worker's own replace them otherwise.
        """
        offered = {"devices": [], "engines": [], "tags": [], "video_encoders": "", "offers": ALL_ENGINES,
                   **(offered or {})}
        with self.transaction() as db:
            # ON CONFLICT: a worker of that name registering at the same moment elsewhere (another thread or
            # coordinator) inserts it first; this one then updates it, as a returning worker.
            row = db.execute(
                "INSERT INTO workers (name, host, blender_version, blender_version_key, cpu_count, "
                "registered_at, last_seen, allows_python) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING worker_id",
                (name, host, blender_version, version_key, cpu_count, now, now, int(allows_python)),
            ).fetchone()
            if row is not None:
                worker_id = row["worker_id"]
            else:
                worker_id = db.execute("SELECT worker_id FROM workers WHERE name = ?", (name,)).fetchone()[0]
                db.execute(
                    "UPDATE workers SET host = ?, blender_version = ?, blender_version_key = ?, cpu_count = ?, "
                    "registered_at = ?, last_seen = ?, allows_python = ? WHERE worker_id = ?",
                    (host, blender_version, version_key, cpu_count, now, now, int(allows_python), worker_id),
                )
                requeue(db, "worker_id = ? AND status IN ('leased', 'rendering')", (worker_id,))
            db.execute("UPDATE workers SET devices = ?, engines = ?, video_encoders = ?, offers = ? "
                       "WHERE worker_id = ?",
                       (json.dumps(offered["devices"]), json.dumps(offered["engines"]), offered["video_encoders"],
                        offered["offers"], worker_id))
            if not db.execute("SELECT tags_by_admin FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()[0]:
                _write_tags(db, worker_id, offered["tags"])
            return _worker_row(db.execute("SELECT * FROM workers WHERE worker_id = ?", (worker_id,)).fetchone())

    def set_worker_tags(self, worker_id: int, tags: Sequence[str]) -> None:
        """An admin sets the worker's tags: they stay until an admin changes them, whatever the worker's --tag."""
        with self.transaction() as db:
            _write_tags(db, worker_id, tags)
            db.execute("UPDATE workers SET tags_by_admin = 1 WHERE worker_id = ?", (worker_id,))

    def get_worker(self, worker_id: int | None = None, name: str | None = None) -> dict | None:
        if worker_id is not None:
            row = self.read().execute("SELECT * FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
        else:
            row = self.read().execute("SELECT * FROM workers WHERE name = ?", (name,)).fetchone()
        return _worker_row(row) if row else None

    def list_workers(self) -> list[dict]:
        return [_worker_row(r) for r in self.read().execute("SELECT * FROM workers ORDER BY name")]

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
                requeue(db, "worker_id = ? AND status = 'leased'", (worker_id,))

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

    def worker_done_frames(self, worker_id: int, limit: int) -> list[dict]:
        """The worker's `limit` frames that ended last among those it rendered (done), latest first, with their
        task's name: read through frames_done_by_worker, never by scanning the frames."""
        return [dict(r) for r in self.read().execute(
            f"SELECT {_FRAME_COLUMNS_OF_F}, t.name AS task_name FROM frames f JOIN tasks t ON t.task_id = f.task_id "
            "WHERE f.worker_id = ? AND f.status = 'done' ORDER BY f.ended_at DESC LIMIT ?", (worker_id, limit))]

    def worker_failures(self, worker_id: int, limit: int) -> list[dict]:
        """The worker's `limit` latest failed reports (task, frame, when, error), latest first."""
        return [dict(r) for r in self.read().execute(
            "SELECT x.task_id, t.name AS task_name, x.frame, x.failed_at, x.error FROM frame_failures x "
            "JOIN tasks t ON t.task_id = x.task_id WHERE x.worker_id = ? ORDER BY x.failed_at DESC LIMIT ?",
            (worker_id, limit))]


def _worker_row(row: Any) -> dict:
    """A workers row as a dict, its JSON lists read."""
    worker = dict(row)
    for column in _JSON_COLUMNS:
        if column in worker:
            worker[column] = json.loads(worker[column] or "[]")
    return worker


def _write_tags(db: Database, worker_id: int, tags: Sequence[str]) -> None:
    """Replace the worker's tags: the row's list (for reading) and the claim's rows (worker_tags)."""
    db.execute("UPDATE workers SET tags = ? WHERE worker_id = ?", (json.dumps(sorted(set(tags))), worker_id))
    db.execute("DELETE FROM worker_tags WHERE worker_id = ?", (worker_id,))
    db.executemany("INSERT INTO worker_tags (worker_id, tag) VALUES (?, ?)", ((worker_id, tag) for tag in set(tags)))
