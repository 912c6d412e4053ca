"""Webhooks (coordinator/notify.py): where each task's events go, and the outbox of events not yet delivered.

- tasks.notified_status: the last status of the task the notifier has seen. A task whose status differs from it has
  changed since; if its new status is an event's (done, failed, awaiting approval), the notifier queues that event
  in the same transaction that records the status as seen, so an event is never lost, even across restarts. A task
  that existed before this migration counts as seen in its present status (its old ending sends nothing).
- task_notify_urls: the URLs a task's submit asked to be told at (`notify`), apart from the task's row, so that a
  URL (which may hold a receiver's secret) is never part of what task listings show.
- notifications: the outbox, one row per event and URL; `body` holds the exact bytes sent (and signed) at every
  attempt, `delivery_id` the id receivers deduplicate by. `state` is 'pending' until it is 'delivered' or
  'given_up' (no DEFAULT: a delivery's state is not a task status, which tests/test_model.py finds by that word).
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns, execute_ddl

__depends__ = {"0010_worker_history"}

COLUMNS = {"tasks": {"notified_status": "TEXT NOT NULL DEFAULT ''"}}

TABLES = """
CREATE TABLE IF NOT EXISTS task_notify_urls (
    task_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (task_id, url)
);
CREATE TABLE IF NOT EXISTS notifications (
    delivery_id TEXT PRIMARY KEY,
    task_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    farm_wide INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    ended_at REAL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications(next_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notifications_ended ON notifications(ended_at) WHERE state <> 'pending';
"""


def add_notifications(db) -> None:
    """Add the notified status (every existing task counts as seen), the per-task URLs and the outbox."""
    add_missing_columns(db, COLUMNS)
    execute_ddl(db, TABLES)
    cursor = db.cursor()
    cursor.execute("UPDATE tasks SET notified_status = status")
    # Only tasks whose status changed since the notifier last looked: the few open ones and the just ended.
    cursor.execute("CREATE INDEX IF NOT EXISTS tasks_status_unseen ON tasks(task_id) WHERE notified_status <> status")


steps = [step(add_notifications)]
