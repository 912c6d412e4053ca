"""The tests' throwaway PostgreSQL: renderq/local_servers.py's, with room for several coordinators and no database of
its own (each test gets one from create_database, dropped after it). It lives only as long as the test session."""

from __future__ import annotations

import os
import shutil

from renderq.local_servers import Postgres, postgres_bin

# Room for several coordinators (one connection per thread each) and the tests' own stores.
MAX_CONNECTIONS = 400


def missing() -> str | None:
    """Why the PostgreSQL tests cannot run here (a sentence), or None when they can."""
    try:
        import psycopg  # noqa: F401 - only whether it is installed
    except ImportError:
        return "psycopg is not installed (pip install 'renderq[postgresql]'; scripts/test.sh does it)"
    if postgres_bin() is None:
        return "PostgreSQL's initdb was not found (Debian: apt-get install postgresql; scripts/test.sh does it)"
    if os.name == "posix" and os.getuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and there is no runuser to start PostgreSQL as the postgres user"
    return None


class PostgresCluster(Postgres):
    """A test session's PostgreSQL, not started yet."""

    def __init__(self) -> None:
        super().__init__(database=None, max_connections=MAX_CONNECTIONS)
