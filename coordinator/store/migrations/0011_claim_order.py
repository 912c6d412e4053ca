"""The order a task's frames are claimed in (issue 17).

- frames.claim_rank: fixed at submit (coordinator/claim_order.py); the claim takes the task's queued frame of the
  lowest rank. Frames from before this keep their own number as their rank, which claims them as before (lowest
  number first); the encode job's rank is its number, past every frame's, so it stays last.
- tasks.render_order: 'sampled' or 'sequential', as submitted; 'sequential' for the tasks from before this.
- frames_by_status gets the rank before the frame number, so the claim's lookup of a task's first queued frame stays
  a walk of that index alone.
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns, execute_ddl

__depends__ = {"0010_worker_history"}

COLUMNS = {
    "frames": {"claim_rank": "INTEGER NOT NULL DEFAULT 0"},
    "tasks": {"render_order": "TEXT NOT NULL DEFAULT 'sequential'"},
}

INDEX = """
UPDATE frames SET claim_rank = frame;
DROP INDEX IF EXISTS frames_by_status;
CREATE INDEX IF NOT EXISTS frames_by_status ON frames(task_id, status, claim_rank, frame);
"""


def add_claim_order(db) -> None:
    """Add the columns, rank the existing frames by number, and put the rank into the claim's index."""
    add_missing_columns(db, COLUMNS)
    execute_ddl(db, INDEX)


steps = [step(add_claim_order)]
