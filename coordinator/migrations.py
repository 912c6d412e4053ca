"""Changes to the data of an existing database that adding a column cannot express, each applied once.

Each migration records its name in the `migrations` table when it is done, in the same transaction, so it runs
exactly once per database, whichever coordinator version opens it next.
"""

from __future__ import annotations

import sqlite3
import time


def qualify_owners(db: sqlite3.Connection) -> None:
    """Once per database: turn the owners of tasks submitted before owners were role-qualified into identities.

    A named artist's tasks recorded the bare name ("alice"); now their owner is "artist:alice", so that no artist
    name can equal a role's identity. "admin", "artist" and "anonymous" stay as they are: they may also have been
    named artists' tasks, which cannot be told apart now, and the role keeps them (the safe side: an artist with
    such a name loses the right to cancel those tasks, an admin still may).
    """
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM migrations WHERE name = 'qualified_owners'").fetchone() is None:
            db.execute("UPDATE tasks SET owner = 'artist:' || owner "
                       "WHERE owner NOT IN ('', 'admin', 'artist', 'anonymous', 'worker')")
            db.execute("INSERT INTO migrations (name, applied_at) VALUES ('qualified_owners', ?)", (time.time(),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
