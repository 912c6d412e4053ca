"""The store's part of webhooks (coordinator/notify.py): tasks whose status changed since the notifier last looked,
the URLs a task asked to be told at, and the outbox of events to deliver.

An event is queued in the same transaction that records the task's status as seen, and only if the task still has
that status: an event is neither lost (a crash before the COMMIT leaves the status unseen) nor queued twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .connection import StoreConnection
from .engine import Database

# The columns the notifier reads of a task whose status it has not seen yet (what an event's body tells).
UNSEEN_COLUMNS = "task_id, name, status, notified_status, owner, frames_total, frames_done, frames_failed"
OUTBOX_COLUMNS = "delivery_id, task_id, event, url, farm_wide, body, attempts, created_at, last_error"


def add_task_notify_urls(db: Database, task_id: int, urls: Iterable[str]) -> None:
    """Record the URLs a task's submit asked to be told at, in the submit's own transaction."""
    db.executemany("INSERT INTO task_notify_urls (task_id, url) VALUES (?, ?) ON CONFLICT DO NOTHING",
                   ((task_id, url) for url in urls))


class NotificationQueries(StoreConnection):
    """The outbox of webhook events and what feeds it."""

    def tasks_with_unseen_status(self, limit: int) -> list[dict[str, Any]]:
        """Tasks whose status changed since the notifier last recorded it, oldest first, at most `limit`."""
        rows = self.read().execute(f"SELECT {UNSEEN_COLUMNS} FROM tasks WHERE notified_status <> status "
                                   "ORDER BY task_id LIMIT ?", (limit,)).fetchall()
        return [dict(row) for row in rows]

    def task_notify_urls(self, task_ids: Sequence[int]) -> dict[int, list[str]]:
        """The URLs each of the tasks asked to be told at (tasks that asked none are left out)."""
        if not task_ids:
            return {}
        urls: dict[int, list[str]] = {}
        for row in self.read().execute(f"SELECT task_id, url FROM task_notify_urls WHERE task_id "
                                       f"{self.engine.in_list('?')} ORDER BY task_id, url",
                                       (self.engine.list_value(list(task_ids)),)):
            urls.setdefault(row["task_id"], []).append(row["url"])
        return urls

    def record_seen_statuses(self, seen: Sequence[tuple[int, str, list[dict[str, Any]]]]) -> int:
        """For each (task_id, status, events): record the status as seen and queue its events, unless the task's
        status changed meanwhile (then the next look sees the new one). One transaction; returns events queued."""
        queued = 0
        with self.transaction() as db:
            for task_id, status, events in seen:
                changed = db.execute("UPDATE tasks SET notified_status = status WHERE task_id = ? AND status = ?",
                                     (task_id, status)).rowcount
                if not changed or not events:
                    continue
                db.executemany(
                    "INSERT INTO notifications (delivery_id, task_id, event, url, farm_wide, body, state, created_at, "
                    "next_at) VALUES (:delivery_id, :task_id, :event, :url, :farm_wide, :body, 'pending', "
                    ":created_at, :created_at)", events)
                queued += len(events)
        return queued

    def due_notifications(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Pending deliveries whose next attempt is due, longest due first."""
        rows = self.read().execute(f"SELECT {OUTBOX_COLUMNS} FROM notifications WHERE state = 'pending' "
                                   "AND next_at <= ? ORDER BY next_at LIMIT ?", (now, limit)).fetchall()
        return [dict(row) for row in rows]

    def next_notification_due(self) -> float | None:
        """When the earliest pending delivery is due; None when none is pending."""
        row = self.read().execute("SELECT MIN(next_at) AS due FROM notifications WHERE state = 'pending'").fetchone()
        return None if row is None else row["due"]

    def notification_delivered(self, delivery_id: str, now: float) -> None:
        """The receiver took the event."""
        with self.transaction() as db:
            db.execute("UPDATE notifications SET state = 'delivered', attempts = attempts + 1, ended_at = ?, "
                       "last_error = '' WHERE delivery_id = ?", (now, delivery_id))

    def notification_retry(self, delivery_id: str, error: str, next_at: float) -> None:
        """An attempt failed; the next one is due at `next_at`."""
        with self.transaction() as db:
            db.execute("UPDATE notifications SET attempts = attempts + 1, next_at = ?, last_error = ? "
                       "WHERE delivery_id = ?", (next_at, error, delivery_id))

    def notification_given_up(self, delivery_id: str, error: str, now: float) -> None:
        """No more attempts: the last one failed and the time allowed has passed (or the URL is refused)."""
        with self.transaction() as db:
            db.execute("UPDATE notifications SET state = 'given_up', attempts = attempts + 1, ended_at = ?, "
                       "last_error = ? WHERE delivery_id = ?", (now, error, delivery_id))

    def notification_counts(self) -> dict[str, int]:
        """Deliveries by state: pending, delivered, given_up."""
        counts = {"pending": 0, "delivered": 0, "given_up": 0}
        for row in self.read().execute("SELECT state, COUNT(*) AS n FROM notifications GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def prune_notifications(self, ended_before: float) -> int:
        """Forget deliveries that ended (delivered or given up) before `ended_before`; how many."""
        with self.transaction() as db:
            return db.execute("DELETE FROM notifications WHERE state <> 'pending' AND ended_at < ?",
                              (ended_before,)).rowcount
