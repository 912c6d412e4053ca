"""PostgreSQL, the store's engine for a farm past one machine: several coordinators may share one database.

The query parts' SQL is written once, in SQLite's spelling; this engine runs it through psycopg 3 after turning its
`?` and `:name` parameters into psycopg's. Migrations write their tables in SQLite's types, which schema.postgres_ddl
maps to PostgreSQL's (64-bit integers, double precision, identity keys, byte-wise text order as SQLite's).
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql
from psycopg.pq import TransactionStatus

from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import parse_uri
from yoyo.migrations import default_migration_table

from .engine import Cursor, Database, Engine
from .schema import LogData, apply_pending

# The first half of every advisory lock key RenderQ takes, so its locks never meet another program's on the
# same database ("RQ" and a version).
ADVISORY_LOCK_CLASS = 0x5251_0001
# The advisory lock (second half) held while one coordinator migrates the schema: the others wait for it.
MIGRATION_LOCK = 1
# The longest a call after the first of a batch waits for a row lock: longer than another coordinator's batch
# holds its locks (about 20 ms and its COMMIT), far shorter than PostgreSQL's deadlock check (1 s).
BATCH_LOCK_WAIT_MS = 50
# SQLSTATEs of a statement that gave way to another session's locks: lock_not_available, deadlock_detected.
LOCK_CONFLICTS = ("55P03", "40P01")
# How often a listener whose connection was lost (a database restart, a cut network) tries again, in seconds; also
# how long it waits for a notification before it looks whether it should stop.
LISTEN_RETRY_SECONDS = 1.0
# How a coordinator notices a database it cannot reach, unless its URL says otherwise: a connection not made within
# CONNECT_TIMEOUT seconds fails, and so does an open one whose data stays unacknowledged TCP_USER_TIMEOUT_MS (a cut
# network): its requests are then refused with a 503 within seconds, and clients move on to another coordinator,
# rather than each request waiting as long as the cut lasts.
CONNECT_TIMEOUT = 5
TCP_USER_TIMEOUT_MS = 10_000
# SQLSTATEs of a server that cannot serve now: the connection_exception class (08...), and admin_shutdown,
# crash_shutdown and cannot_connect_now (a restart).
UNREACHABLE_STATES = ("57P01", "57P02", "57P03")


class PostgresEngine(Engine):
    """A PostgreSQL database named by a postgresql:// URL (user, password, host, port, database, options)."""

    name = "postgresql"
    # Several coordinators may claim at once: each skips the frames another one's claim in flight has locked, so
    # no frame is handed out twice and no claim waits for another.
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    shared = True
    group_commit = False
    errors = (psycopg.Error,)

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self) -> Database:
        return PostgresDatabase(self.url)

    def is_unreachable(self, error: BaseException) -> bool:
        state = getattr(error, "sqlstate", None)
        return isinstance(error, psycopg.OperationalError) and (
            state is None or state.startswith("08") or state in UNREACHABLE_STATES)

    def is_broken(self, db: Database) -> bool:
        return isinstance(db, PostgresDatabase) and db.connection.closed

    def in_list(self, param: str) -> str:
        return f"= ANY({param})"

    def list_value(self, values: Sequence[Any]) -> Any:
        return list(values)

    def json_length(self, column: str) -> str:
        return f"json_array_length({column}::json)"

    def table_columns(self, db: Database, table: str) -> list[str]:
        return [row["column_name"] for row in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position", (table,))]

    def upgrade(self) -> list[str]:
        return upgrade_postgres(self.url)

    def give_way(self, db: Database) -> None:
        db.execute(f"SET LOCAL lock_timeout = {BATCH_LOCK_WAIT_MS}")

    def wait_for_locks(self, db: Database) -> None:
        # Every turn takes task rows last and in task order, so none waits for another in a circle; a wait
        # with a session outside the turns (an admin's change) is PostgreSQL's deadlock check's to break.
        db.execute("SET LOCAL lock_timeout = DEFAULT")

    def is_lock_conflict(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) in LOCK_CONFLICTS

    def try_lock(self, db: Database, name: str) -> bool:
        row = db.execute("SELECT pg_try_advisory_xact_lock(?, hashtext(?))", (ADVISORY_LOCK_CLASS, name)).fetchone()
        return bool(row[0])

    @contextlib.contextmanager
    def hold(self, db: Database, name: str) -> Iterator[bool]:
        # A session lock: PostgreSQL frees it when the holder's connection ends, so a coordinator killed mid-job
        # leaves nothing to clear.
        taken = bool(db.execute("SELECT pg_try_advisory_lock(?, hashtext(?))",
                                (ADVISORY_LOCK_CLASS, name)).fetchone()[0])
        try:
            yield taken
        finally:
            if taken:
                with contextlib.suppress(psycopg.Error):
                    db.execute("SELECT pg_advisory_unlock(?, hashtext(?))", (ADVISORY_LOCK_CLASS, name))

    def notify(self, db: Database, channel: str, payload: str) -> None:
        db.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(self, channel: str, on_message: Callable[[str | None], None], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     **link_options(self.url, application_name="renderq-listener")) as connection:
                    connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
                    # Notifications sent while this one was not listening are lost: everything may have changed.
                    on_message(None)
                    while not stop.is_set():
                        for notification in connection.notifies(timeout=LISTEN_RETRY_SECONDS):
                            on_message(notification.payload)
            except psycopg.Error:
                stop.wait(LISTEN_RETRY_SECONDS)


class PostgresDatabase:
    """A psycopg connection that takes the store's SQL (see the module docstring), and connects again when the
    server dropped it (a restart) while no transaction was open on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = self._connect()

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, row_factory=_row_factory,
                               **link_options(self.url, application_name="renderq-coordinator"))

    def execute(self, sql: str, params: Any = None, /) -> Cursor:
        idle = self.connection.info.transaction_status == TransactionStatus.IDLE
        try:
            return self._execute(sql, params)
        except psycopg.OperationalError:
            if not (idle and self.connection.closed):
                raise
        # The connection was lost outside a transaction: the statement (a read, or the BEGIN of a transaction; the
        # store writes only inside transactions) did nothing, so it runs again on a new connection.
        self.connection = self._connect()
        return self._execute(sql, params)

    def _execute(self, sql: str, params: Any) -> Cursor:
        if params is None:
            return self.connection.execute(sql)
        return self.connection.execute(psycopg_sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Any], /) -> Cursor:
        cursor = self.connection.cursor()
        cursor.executemany(psycopg_sql(sql), params)
        return cursor

    def close(self) -> None:
        self.connection.close()


def link_options(url: str, **options: Any) -> dict[str, Any]:
    """The connection settings a coordinator adds to its database URL's (the URL's own win): `options`, and how
    long it waits on a database that does not answer (CONNECT_TIMEOUT, TCP_USER_TIMEOUT_MS)."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    options = {"connect_timeout": CONNECT_TIMEOUT, "tcp_user_timeout": TCP_USER_TIMEOUT_MS, **options}
    return {name: value for name, value in options.items() if name not in given}


@functools.lru_cache(maxsize=4096)
def psycopg_sql(sql: str) -> str:
    """SQL with `?` and `:name` parameters in psycopg's style (%s, %(name)s); a literal % is doubled. Quoted
    strings and names keep their `?` and `:`; `::` casts are left alone."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(sql):
        char = sql[i]
        if char == "%":
            out.append("%%")
        elif quote:
            out.append(char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == ":" and (name := _PARAMETER_NAME.match(sql, i + 1)) and sql[i - 1:i] != ":":
            out.append(f"%({name.group()})s")
            i = name.end()
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


_PARAMETER_NAME = re.compile(r"[A-Za-z_]\w*")


class Row:
    """A row read by column name or by position, and turned into a dict by dict(row), as sqlite3.Row is."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Any:
    index = {column.name: position for position, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


def upgrade_postgres(url: str) -> list[str]:
    """Apply to the PostgreSQL database at `url` every migration it has not had yet; returns their ids, in order.

    Coordinators starting together take turns through an advisory lock, which PostgreSQL frees when its holder's
    connection ends: so a yoyo lock row found while holding it was left by a coordinator killed mid-migration
    (its transaction rolled back), and is cleared.
    """
    backend = _PostgresBackend(parse_uri("postgresql+psycopg://" + url.split("://", 1)[1]), default_migration_table)
    try:
        backend.connection.execute("SELECT pg_advisory_lock(%s, %s)", (ADVISORY_LOCK_CLASS, MIGRATION_LOCK))
        backend.init_database()
        backend.break_lock()
        return apply_pending(backend)
    finally:
        backend.connection.close()


class _PostgresBackend(LogData, PostgresqlPsycopgBackend):
    """yoyo's psycopg 3 backend with the log of LogData."""
