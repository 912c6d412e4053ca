"""Changes to the data of an existing database that adding a column cannot express, each applied once.

Each migration records its name in the `migrations` table when it is done, in the same transaction, so it runs
exactly once per database, whichever coordinator version opens it next.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from .store import Store


def migrate(store: Store) -> None:
    """Apply every migration this database has not had yet."""
    with store.transaction() as db:
        db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row["name"] for row in db.execute("SELECT name FROM migrations")}
        for name, step in MIGRATIONS:
            if name not in done:
                step(db)
                db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))


def qualify_owners(db: sqlite3.Connection) -> None:
    """Turn the owners of tasks submitted before owners were role-qualified into identities.

    A named artist's tasks recorded the bare name ("alice"); now their owner is "artist:alice", so that no artist
    name can equal a role's identity. "admin", "artist" and "anonymous" stay as they are: they may also have been
    named artists' tasks, which cannot be told apart now, and the role keeps them (the safe side: an artist with
    such a name loses the right to cancel those tasks, an admin still may).
    """
    db.execute("UPDATE tasks SET owner = 'artist:' || owner "
               "WHERE owner NOT IN ('', 'admin', 'artist', 'anonymous', 'worker')")


# (name, step) in the order they were written; a name, once released, never changes.
MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("qualified_owners", qualify_owners),
)
