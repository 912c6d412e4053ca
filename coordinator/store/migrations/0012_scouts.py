"""Scout frames: a task may render a few frames first and wait for approval before the rest.

- tasks.scout_frames: how many of its frames were scouts (0: none). Its other frames are stored with the frame
  status 'held', which no claim reads, until the task is approved; the task's status is then 'awaiting_approval'
  between its last scout and the approval.
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns

__depends__ = {"0010_worker_history"}

COLUMNS = {"tasks": {"scout_frames": "INTEGER NOT NULL DEFAULT 0"}}


def add_scout_columns(db) -> None:
    """Add the scouts' column."""
    add_missing_columns(db, COLUMNS)


steps = [step(add_scout_columns)]
