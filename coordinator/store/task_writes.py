"""The writes to a task's own row that a turn of worker calls gathers and makes once, just before its COMMIT.

Why: on PostgreSQL a row stays locked from its UPDATE until the COMMIT. The workers' calls of every coordinator land
on the rows of the few open tasks (a heartbeat's log lines move the log's end, a finished frame counts as done, the
first claim starts the task), so updating a task's row where each call ran held it for the rest of the turn, and
the other coordinators' turns queued on it until their calls gave way and failed with lock timeouts. Gathered, each
task's row is updated once per turn, at its end, in task order: held only for the COMMIT, never by two turns in a
circle. On SQLite it saves the repeated UPDATEs of one row in a turn.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .engine import Database
from .rows import finish_task_if_complete


@dataclasses.dataclass
class LogEnd:
    """The size of a task's log after an append the turn has not written yet: `size` once it has (None if the task
    was deleted meanwhile)."""

    size: int | None = None


@dataclasses.dataclass
class _TaskChanges:
    logs: list[tuple[str, int, LogEnd]] = dataclasses.field(default_factory=list)
    done: int = 0
    started_at: float | None = None
    complete_at: float | None = None


class TaskRowWrites:
    """What a turn's calls changed on task rows, to write in one go (see the module docstring)."""

    def __init__(self) -> None:
        # In call order, so the writes of a call undone by its savepoint can be dropped: (task_id, kind, value).
        self._changes: list[tuple[int, str, Any]] = []

    def mark(self) -> int:
        """Where the changes stand now, for undo_to."""
        return len(self._changes)

    def undo_to(self, mark: int) -> None:
        """Drop the changes made since `mark` (their call's savepoint was rolled back)."""
        del self._changes[mark:]

    def append_log(self, task_id: int, text: str) -> LogEnd:
        """Append text to the task's log at the end of the turn; the log's size then."""
        end = LogEnd()
        self._changes.append((task_id, "log", (text, len(text.encode("utf-8")), end)))
        return end

    def count_done(self, task_id: int, now: float) -> None:
        """Count a frame of the task done, and end the task if it was its last open frame."""
        self._changes.append((task_id, "done", now))

    def start(self, task_id: int, now: float) -> None:
        """The task's first frame was claimed: it is running from `now` on (if it was still queued)."""
        self._changes.append((task_id, "start", now))

    def write(self, db: Database) -> None:
        """Make the gathered changes inside the turn's transaction, one task at a time in task order."""
        by_task: dict[int, _TaskChanges] = {}
        for task_id, kind, value in self._changes:
            changes = by_task.setdefault(task_id, _TaskChanges())
            if kind == "log":
                changes.logs.append(value)
            elif kind == "done":
                changes.done += 1
                changes.complete_at = value
            elif changes.started_at is None:
                changes.started_at = value
        self._changes.clear()
        for task_id in sorted(by_task):
            _write_task(db, task_id, by_task[task_id])


def _write_task(db: Database, task_id: int, changes: _TaskChanges) -> None:
    """One task's row changes: one UPDATE, then its log's chunks at the offsets it reserved."""
    log_bytes = sum(size for _, size, _ in changes.logs)
    started = changes.started_at is not None
    row = db.execute(
        "UPDATE tasks SET log_size = log_size + ?, frames_done = frames_done + ?, "
        "started_at = CASE WHEN ? AND status = 'queued' THEN coalesce(started_at, ?) ELSE started_at END, "
        "status = CASE WHEN ? AND status = 'queued' THEN 'running' ELSE status END "
        "WHERE task_id = ? RETURNING log_size",
        (log_bytes, changes.done, started, changes.started_at, started, task_id),
    ).fetchone()
    if row is None:
        return  # the task was deleted meanwhile, its log and frames with it
    offset = row["log_size"] - log_bytes
    for text, size, end in changes.logs:
        if size:
            db.execute('INSERT INTO logs (task_id, "offset", size, text) VALUES (?, ?, ?, ?)',
                       (task_id, offset, size, text))
        offset += size
        end.size = offset
    if changes.complete_at is not None:
        finish_task_if_complete(db, task_id, changes.complete_at)


def settled(result: Any) -> Any:
    """A call's answer with the log sizes its turn has now written in place of their LogEnd."""
    if isinstance(result, dict) and any(isinstance(value, LogEnd) for value in result.values()):
        return {key: value.size if isinstance(value, LogEnd) else value for key, value in result.items()}
    return result
