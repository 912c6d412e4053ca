"""Durable state of the farm (workers, tasks, frames, logs) in SQLite or PostgreSQL, behind one small interface.

Every method is one transaction. Claims and reports are single conditional statements inside a write transaction
(SQLite's `BEGIN IMMEDIATE`; on PostgreSQL claims lock the frame row and skip rows locked by another coordinator's
claim), so no two threads or coordinators can hand out the same frame, and a report counts only under its live
lease. The store knows nothing about policy: the scheduler passes in the clock, lease lengths and limits.

The parts: engine (what an engine provides; sqlite and postgres are the two), connection (connections and group
commit), schema (numbered migrations, shared by both engines), workers, tasks, frames (claims and reports), files
(file records and logs), farm (secrets the coordinators of one database share) and notifications (the webhooks'
outbox); rows holds what several of them share.
"""

from __future__ import annotations

from .engine import is_postgres_url
from .farm import FarmQueries
from .files import FileQueries
from .frames import FrameQueries
from .notifications import NotificationQueries
from .rows import DETAIL_ONLY_COLUMNS, FRAME_COLUMNS, OutputNameTaken
from .tasks import TaskQueries
from .workers import WorkerQueries

__all__ = ["FRAME_COLUMNS", "OutputNameTaken", "Store", "is_postgres_url"]


class Store(WorkerQueries, TaskQueries, FrameQueries, FileQueries, FarmQueries, NotificationQueries):
    """The farm's state in the database `database` names: a postgresql:// URL, else a SQLite file's path. One
    connection per thread; writers take turns (see transaction()), and readers go on meanwhile. Opening a store
    brings its database's schema up to date."""

    def __init__(self, database: str, *, synchronous: str = "full") -> None:
        super().__init__(database, synchronous=synchronous)
        try:
            db = self._connection()  # first, so a SQLite file is in WAL mode before the migrations write to it
            self.migrations_applied = self.engine.upgrade()
        except self.engine.errors as error:
            # The coordinator prints this sentence and exits (an unreachable server, a wrong password, ...).
            raise ValueError(f"cannot open the database: {error}".strip()) from error
        # A task's summary leaves out its settings and missing assets (only its detail and its leases need them), so
        # listing many tasks reads none of that text.
        columns = [name for name in self.engine.table_columns(db, "tasks") if name not in DETAIL_ONLY_COLUMNS]
        self._summary_columns = (", ".join(columns) + ", "
                                 + self.engine.json_length("missing_assets") + " AS missing_assets_count")
