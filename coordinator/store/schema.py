"""The store's schema: numbered migrations in migrations/, applied by yoyo, which records each one it applied.

yoyo runs plain SQL files (and Python steps where SQL cannot say it) on SQLite and PostgreSQL alike, and keeps the
applied ones in its own tables (_yoyo_migration, _yoyo_log), so each runs once per database. A new schema change
is a new file, numbered after the last; a released file never changes (yoyo would take it for a new one).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def upgrade(path: str) -> list[str]:
    """Apply to the SQLite database at `path` every migration it has not had yet; returns their ids, in order.

    No yoyo lock row: the coordinator's data-dir lock already keeps a second coordinator away, and a lock row left
    by a coordinator killed mid-migration would otherwise stop every later start.
    """
    backend = get_backend("sqlite:///" + os.path.abspath(path))
    try:
        pending = backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))
        backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        backend.connection.close()


def applied_migrations(db: sqlite3.Connection) -> list[str]:
    """The ids of the migrations this database has had, in the order they were applied."""
    return [row[0] for row in db.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]
