"""The status page's login sessions (coordinator/sessions.py), which the coordinator used to create at its start.

IF NOT EXISTS: a database from then has the table already.
"""

from yoyo import step

from coordinator.store.schema import execute_ddl

__depends__ = {"0004_qualified_owners"}

TABLES = """
CREATE TABLE IF NOT EXISTS login_sessions (
    session_hash TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""


def create_login_sessions(db) -> None:
    """Create the table of login sessions."""
    execute_ddl(db, TABLES)


steps = [step(create_login_sessions)]
