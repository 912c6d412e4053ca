"""The farm's secrets (its access tokens, the session key), kept where every coordinator on the database finds them.

Only coordinators sharing a PostgreSQL database use it: the first to start stores its secrets, and the others take
those (coordinator/auth.py), so a token works on any of them. A coordinator on SQLite keeps them in its data dir.
"""

from yoyo import step

from coordinator.store.schema import execute_ddl

__depends__ = {"0005_login_sessions"}

TABLES = """
CREATE TABLE IF NOT EXISTS farm_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


def create_farm_secrets(db) -> None:
    """Create the table of the farm's secrets."""
    execute_ddl(db, TABLES)


steps = [step(create_farm_secrets)]
