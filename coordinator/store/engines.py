"""Which engine a database string names (the engines import this package's base, so the choice lives apart)."""

from __future__ import annotations

from .engine import POSTGRES_SCHEMES, Engine


def engine_for(database: str, *, synchronous: str = "full") -> Engine:
    """The engine a database string names: a postgresql:// URL, else the path of a SQLite file."""
    if database.startswith(POSTGRES_SCHEMES):
        try:
            from .postgres import PostgresEngine  # psycopg is needed only by a coordinator on PostgreSQL
        except ImportError as error:
            raise ValueError("a postgresql:// database needs psycopg 3: pip install 'renderq[postgresql]'") from error
        return PostgresEngine(database)
    from .sqlite import SQLiteEngine

    return SQLiteEngine(database, synchronous=synchronous)
