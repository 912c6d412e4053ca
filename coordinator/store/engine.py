"""What the store's two database engines (SQLite, PostgreSQL) must provide, and how one is picked.

The query parts write their SQL once, in SQLite's spelling (`?` and `:name` parameters); an engine connects, runs that
SQL on its database (PostgreSQL's translates the parameter style) and supplies the few fragments that differ
(index hints, lists as parameters, row locks for claims, reading a table's columns, its migrations). Everything
engine-specific lives in sqlite.py or postgres.py, nowhere else; engines.py picks one for a database string.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    """What the store reads from a statement it ran (sqlite3.Cursor and psycopg's cursor both are this)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """One connection, taking SQL in SQLite's spelling; its rows are read by column name or position."""

    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Any], /) -> Cursor: ...

    def close(self) -> None: ...


class Engine(abc.ABC):
    """One database engine: how to connect, and the SQL that differs from SQLite's (see the module docstring)."""

    name = ""
    # The statement that opens a write transaction.
    begin = "BEGIN"
    # Appended to the claim's SELECT of a frame: other coordinators' claims in flight skip the rows it locks.
    skip_locked = ""
    # Appended to a SELECT that checks a row the transaction then changes: locks it against other coordinators.
    for_update = ""
    # Whether the database has a write-ahead log the coordinator checkpoints itself (SQLite's WAL).
    checkpoints = False
    # Whether several coordinators may share the database (then they share the farm's secrets through it).
    shared = False
    # Whether the writers of one process share transactions and their COMMIT (see StoreConnection.transaction):
    # SQLite takes one writer at a time, so its writers queue and commit together; PostgreSQL runs them side by side.
    group_commit = True
    # Whether a COMMIT returns before it is on disk, so writers call sync() before they answer (SQLite's WAL).
    syncs_after_commit = False
    # The exceptions the engine's driver raises for a database error.
    errors: tuple[type[Exception], ...] = ()

    @abc.abstractmethod
    def connect(self) -> Database:
        """A new connection in autocommit mode (transactions are opened with `begin`)."""

    def take_write_turn(self) -> None:
        """Before a group of writers opens its transaction: wait for the other processes' groups (see SQLite's)."""
        return None

    def give_write_turn(self) -> None:
        """After the group's COMMIT or ROLLBACK: the next process's group may begin."""
        return None

    def sync(self) -> None:
        """Put every COMMIT made so far on disk (engines with syncs_after_commit)."""
        return None

    def is_broken(self, db: Database) -> bool:
        """Whether the connection was lost (the server restarted), so a new one must be made."""
        return False

    def indexed_by(self, index: str) -> str:
        """An index hint after a table name (SQLite's planner needs some; PostgreSQL has none and needs none)."""
        return ""

    @abc.abstractmethod
    def in_list(self, param: str) -> str:
        """The condition "is one of the values of the list parameter `param`" (`?` or `:name`), after a column."""

    @abc.abstractmethod
    def list_value(self, values: Sequence[Any]) -> Any:
        """A list of values as the engine takes it for in_list's parameter."""

    def json_length(self, column: str) -> str:
        """The number of items of the JSON array held as text in `column`."""
        return f"json_array_length({column})"

    @abc.abstractmethod
    def table_columns(self, db: Database, table: str) -> list[str]:
        """The names of a table's columns, in order."""

    def commit_failed(self, error: BaseException) -> BaseException:
        """The error every writer of a group commit whose COMMIT failed is given (engines with group_commit; the
        others never commit for several writers, so the failure is their own)."""
        return error

    @abc.abstractmethod
    def upgrade(self) -> list[str]:
        """Apply the migrations the database has not had yet; returns their ids, in order."""

    def is_unreachable(self, error: BaseException) -> bool:
        """Whether `error` says the database cannot be reached now (a server restarting, a cut network): the
        request is refused with a 503, which sends clients on to another coordinator. A SQLite file is always
        there."""
        return False

    def give_way(self, db: Database) -> None:
        """Inside a batch's transaction: from now on a statement that waits long for another session's row lock
        fails (is_lock_conflict) instead of waiting. Nothing to do where one process owns the database."""
        return None

    def wait_for_locks(self, db: Database) -> None:
        """Inside a batch's transaction, undoing give_way: the batch's last statements (its task rows, see
        task_writes.py) wait for row locks as long as the engine's default."""
        return None

    def is_lock_conflict(self, error: BaseException) -> bool:
        """Whether `error` is a write that gave way to (or deadlocked with) another session's locks: undone, and
        to be run again."""
        return False

    def try_lock(self, db: Database, name: str) -> bool:
        """Inside a transaction on `db`: take the lock `name` until it ends, unless another coordinator on the
        same database holds it (then False: that coordinator does the job). One coordinator owns a SQLite file, so
        there it is always taken."""
        return True

    @contextlib.contextmanager
    def hold(self, db: Database, name: str) -> Iterator[bool]:
        """Outside transactions: hold the lock `name` for the block, unless another coordinator holds it; yields
        whether it was taken (see try_lock)."""
        yield True

    def notify(self, db: Database, channel: str, payload: str) -> None:
        """Tell every other coordinator on the database listening on `channel` (outside a transaction: at once).
        Nobody else shares a SQLite file, so there is no one to tell."""
        return None

    def listen(self, channel: str, on_message: Callable[[str | None], None], stop: threading.Event) -> None:
        """Call `on_message(payload)` for each notification on `channel` until `stop` is set, and
        `on_message(None)` whenever some may have been missed (the link to the database was lost). Returns at
        once where there are no other coordinators."""
        return None


def is_postgres_url(database: str) -> bool:
    """Whether a database string names a PostgreSQL database."""
    return database.startswith(POSTGRES_SCHEMES)
