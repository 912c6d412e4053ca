"""The store's schema: numbered migrations in migrations/, applied by yoyo, which records each one it applied.

yoyo runs plain SQL files (and Python steps where SQL cannot say it) on SQLite and PostgreSQL alike, and keeps the
applied ones in its own tables (_yoyo_migration, _yoyo_log), so each runs once per database. A new schema change
is a new file, numbered after the last; a released file never changes (yoyo would take it for a new one).
"""

from __future__ import annotations

import getpass
import os
import socket
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from yoyo import read_migrations
from yoyo.backends.core.sqlite3 import SQLiteBackend
from yoyo.connections import parse_uri
from yoyo.migrations import default_migration_table

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def upgrade(path: str) -> list[str]:
    """Apply to the SQLite database at `path` every migration it has not had yet; returns their ids, in order.

    A yoyo lock row left by a coordinator killed mid-migration is cleared first: the coordinator's data-dir lock
    already keeps a second coordinator away, and the row would otherwise stop every later start.
    """
    backend = _SQLiteBackend(parse_uri("sqlite:///" + os.path.abspath(path)), default_migration_table)
    backend.init_database()
    backend.break_lock()
    try:
        pending = backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))
        backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        backend.connection.close()


def applied_migrations(db: sqlite3.Connection) -> list[str]:
    """The ids of the migrations this database has had, in the order they were applied."""
    return [row[0] for row in db.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]


class _SQLiteBackend(SQLiteBackend):
    """yoyo's SQLite backend, with a migration log that cannot stop or stall the coordinator's start.

    yoyo's own log names the user (getpass.getuser() raises in a container whose user id has no name) and the
    fully qualified host name (a reverse DNS lookup: seconds on a badly configured network); the same columns here
    take what is known without either.
    """

    def get_log_data(self, migration: Any = None, operation: str = "apply") -> dict[str, Any]:
        return {
            "id": str(uuid.uuid1()),
            "migration_id": migration.id if migration else None,
            "migration_hash": migration.hash if migration else None,
            "username": _user_name(),
            "hostname": socket.gethostname(),
            "created_at_utc": datetime.now(timezone.utc).replace(tzinfo=None),
            "operation": operation,
        }


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
