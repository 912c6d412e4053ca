"""Durable state of the farm (workers, tasks, frames, logs) in SQLite, behind one small interface.

Every method is one transaction. Claims and reports are single conditional statements inside
`BEGIN IMMEDIATE`, so two threads (or, later, two PostgreSQL sessions) can never hand out the same frame.
The store knows nothing about policy: the scheduler passes in the clock, lease lengths and limits.

The parts: connection (connections and group commit), schema (numbered migrations), workers, tasks, frames
(claims and reports) and files (file records and logs); rows holds what several of them share.
"""

from __future__ import annotations

from .files import FileQueries
from .frames import FrameQueries
from .rows import DETAIL_ONLY_COLUMNS, FRAME_COLUMNS, OutputNameTaken
from .schema import upgrade
from .tasks import TaskQueries
from .workers import WorkerQueries

__all__ = ["FRAME_COLUMNS", "OutputNameTaken", "Store"]


class Store(WorkerQueries, TaskQueries, FrameQueries, FileQueries):
    """SQLite-backed state. One connection per thread; writers take turns (see transaction()), and WAL lets readers
    go on meanwhile. Opening a store brings its database's schema up to date."""

    def __init__(self, path: str, *, synchronous: str = "full") -> None:
        super().__init__(path, synchronous=synchronous)
        db = self._connection()  # first, so the database is in WAL mode before the migrations write to it
        self.migrations_applied = upgrade(path)
        # A task's summary leaves out its settings and missing assets (only its detail and its leases need them), so
        # listing many tasks reads none of that text.
        columns = [row["name"] for row in db.execute("PRAGMA table_info(tasks)")
                   if row["name"] not in DETAIL_ONLY_COLUMNS]
        self._summary_columns = (", ".join(columns)
                                 + ", json_array_length(missing_assets) AS missing_assets_count")
