"""The store's workers: registration, heartbeats, switching ON and OFF."""

from __future__ import annotations

from collections.abc import Sequence

from .connection import StoreConnection
from .rows import requeue


class WorkerQueries(StoreConnection):
    """Workers and the frames they hold."""

    def upsert_worker(self, name: str, host: str, blender_version: str, version_key: int, cpu_count: int,
                      now: float, allows_python: bool = False, video_encoders: str = "") -> dict:
        """Register a worker by name. A returning name keeps its id; frames it still held are requeued.
        video_encoders: what its FFmpeg encodes ('' for no FFmpeg: it gets no encode job)."""
        with self.transaction() as db:
            # ON CONFLICT: a worker of that name registering at the same moment elsewhere (another thread or
            # coordinator) inserts it first; this one then updates it, as a returning worker.
            row = db.execute(
                "INSERT INTO workers (name, host, blender_version, blender_version_key, cpu_count, "
                "registered_at, last_seen, allows_python, video_encoders) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING worker_id",
                (name, host, blender_version, version_key, cpu_count, now, now, int(allows_python), video_encoders),
            ).fetchone()
            if row is not None:
                worker_id = row["worker_id"]
            else:
                worker_id = db.execute("SELECT worker_id FROM workers WHERE name = ?", (name,)).fetchone()[0]
                db.execute(
                    "UPDATE workers SET host = ?, blender_version = ?, blender_version_key = ?, cpu_count = ?, "
                    "registered_at = ?, last_seen = ?, allows_python = ?, video_encoders = ? WHERE worker_id = ?",
                    (host, blender_version, version_key, cpu_count, now, now, int(allows_python), video_encoders,
                     worker_id),
                )
                requeue(db, "worker_id = ? AND status IN ('leased', 'rendering')", (worker_id,))
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
