"""The store's schema: numbered migrations in migrations/, applied by yoyo, which records each one it applied.

yoyo runs plain SQL files (and Python steps where SQL cannot say it) on SQLite and PostgreSQL alike, and keeps the
applied ones in its own tables (_yoyo_migration, _yoyo_log), so each runs once per database. A new schema change
is a new file, numbered after the last; a released file's id never changes (yoyo knows a migration by its id).
Tables are defined in SQLite's types through execute_ddl, which gives PostgreSQL its own (postgres.postgres_ddl).
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from yoyo import read_migrations
from yoyo.backends.base import DatabaseBackend
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.backends.core.sqlite3 import SQLiteBackend
from yoyo.connections import parse_uri
from yoyo.migrations import default_migration_table

from .engine import Database

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def upgrade_sqlite(path: str) -> list[str]:
    """Apply to the SQLite database at `path` every migration it has not had yet; returns their ids, in order.

    A yoyo lock row left by a coordinator killed mid-migration is cleared first: the coordinator's data-dir lock
    already keeps a second coordinator away, and the row would otherwise stop every later start.
    """
    backend = _SQLiteBackend(parse_uri("sqlite:///" + os.path.abspath(path)), default_migration_table)
    try:
        backend.init_database()
        backend.break_lock()
        return _apply(backend)
    finally:
        backend.connection.close()


def upgrade_postgres(url: str) -> list[str]:
    """Apply to the PostgreSQL database at `url` every migration it has not had yet; returns their ids, in order.

    Coordinators starting together take turns through an advisory lock, which PostgreSQL frees when its holder's
    connection ends: so a yoyo lock row found while holding it was left by a coordinator killed mid-migration
    (its transaction rolled back), and is cleared.
    """
    from .postgres import ADVISORY_LOCK_CLASS, MIGRATION_LOCK

    backend = _PostgresBackend(parse_uri("postgresql+psycopg://" + url.split("://", 1)[1]), default_migration_table)
    try:
        backend.connection.execute("SELECT pg_advisory_lock(%s, %s)", (ADVISORY_LOCK_CLASS, MIGRATION_LOCK))
        backend.init_database()
        backend.break_lock()
        return _apply(backend)
    finally:
        backend.connection.close()


def _apply(backend: DatabaseBackend) -> list[str]:
    pending = backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))
    backend.apply_migrations(pending)
    return [migration.id for migration in pending]


def applied_migrations(db: Database) -> list[str]:
    """The ids of the migrations this database has had, in the order they were applied."""
    return [row[0] for row in db.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]


# -- for the migrations' steps (they are given yoyo's connection: sqlite3's or psycopg's) --------------------------

def is_postgres(connection: Any) -> bool:
    """Whether a migration step runs on PostgreSQL (else SQLite)."""
    return type(connection).__module__.startswith("psycopg")


def execute_ddl(connection: Any, script: str) -> None:
    """Run table definitions written in SQLite's types (statements ending in ';'), in the connection's engine."""
    if is_postgres(connection):
        from .postgres import postgres_ddl

        script = postgres_ddl(script)
    cursor = connection.cursor()
    for statement in script.split(";"):
        if statement.strip():
            cursor.execute(statement)


def add_missing_columns(connection: Any, columns: dict[str, dict[str, str]]) -> None:
    """Add each column ({table: {column: declaration in SQLite's types}}) its table lacks."""
    cursor = connection.cursor()
    for table, declarations in columns.items():
        if is_postgres(connection):
            cursor.execute("SELECT column_name FROM information_schema.columns "
                           "WHERE table_schema = current_schema() AND table_name = %s", (table,))
        else:
            cursor.execute(f"PRAGMA table_info({table})")  # SQLite has no ADD COLUMN IF NOT EXISTS
        present = {row[0] if is_postgres(connection) else row[1] for row in cursor.fetchall()}
        for column, declaration in declarations.items():
            if column not in present:
                execute_ddl(connection, f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


class _LogData:
    """A migration log that cannot stop or stall the coordinator's start.

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


class _SQLiteBackend(_LogData, SQLiteBackend):
    """yoyo's SQLite backend with the log of _LogData."""


class _PostgresBackend(_LogData, PostgresqlPsycopgBackend):
    """yoyo's psycopg 3 backend (it loads psycopg only when it connects) with the log of _LogData."""


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
