"""SQLite, the store's embedded engine: one file in the data dir, no server (the default)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from renderq.platform import ProcessTurns

from .engine import Database, Engine
from .schema import upgrade_sqlite

# How long a statement waits for another connection's lock before failing.
BUSY_TIMEOUT_MS = 30_000


class SQLiteEngine(Engine):
    """A SQLite file in WAL mode; `synchronous` is "full" (a power cut loses nothing acknowledged) or "normal".

    "full" is kept by syncing the WAL after each COMMIT ourselves (sync()), not by SQLite inside it: SQLite's FULL
    adds only that fsync to NORMAL, and done inside the COMMIT it holds the write lock meanwhile. Done after it, by
    whichever thread must answer first, the next writers' transactions run while the disk works, and one fsync
    covers every COMMIT before it."""

    name = "sqlite"
    # IMMEDIATE takes the write lock at once, so a claim never deadlocks upgrading a read lock.
    begin = "BEGIN IMMEDIATE"
    checkpoints = True
    errors = (sqlite3.Error,)

    def __init__(self, path: str, *, synchronous: str = "full") -> None:
        self.path = path
        self.syncs_after_commit = synchronous.lower() == "full"
        # SQLite's default: the commit that fills the WAL past 1000 pages copies them into the database file.
        self.autocheckpoint = 1000
        # The processes of one coordinator (--processes) write in turns through a lock they wait on in the kernel.
        # Without it they would wait in SQLite's busy handler, which sleeps and polls: a process whose writes come
        # back to back keeps the lock while another sleeps, and that one's answers wait up to seconds.
        self._turns: ProcessTurns | None = None

    def connect(self) -> Database:
        # check_same_thread=False: a write batch opened on this connection takes other threads' writes too.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                             check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # "full" is sync()'s, after the COMMIT
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint}")
        # sqlite3 types its parameters more narrowly than Database's Any; it takes every value the store passes.
        return cast(Database, db)

    def take_write_turn(self) -> None:
        if self._turns is None:
            self._turns = ProcessTurns(self.path + ".writers")
        self._turns.take()

    def give_write_turn(self) -> None:
        if self._turns is not None:
            self._turns.give()

    def sync(self) -> None:
        # By path each time: SQLite deletes the WAL when its last connection closes (after copying it into the
        # database file and syncing that), and a descriptor kept open would then sync a file nobody reads.
        try:
            wal = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            # The data and the size the file needs to be read back, as SQLite's own sync does: not its times.
            os.fdatasync(wal)
        finally:
            os.close(wal)

    def indexed_by(self, index: str) -> str:
        return f"INDEXED BY {index}"

    def in_list(self, param: str) -> str:
        return f"IN (SELECT value FROM json_each({param}))"

    def list_value(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    def table_columns(self, db: Database, table: str) -> list[str]:
        return [row["name"] for row in db.execute(f"PRAGMA table_info({table})")]

    def commit_failed(self, error: BaseException) -> BaseException:
        return sqlite3.OperationalError(f"the transaction could not be committed: {error}")

    def upgrade(self) -> list[str]:
        return upgrade_sqlite(self.path)
