"""A throwaway PostgreSQL server for the tests: its own cluster in a temporary folder, on a free loopback port.

Debian's server programs (initdb, pg_ctl) refuse to run as root, so as root they run as the `postgres` user
(through runuser), in a folder that user owns. Each test gets a database of its own (create_database), dropped
after it. The cluster trades durability for speed (no fsync): it lives only as long as the test session.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid

from renderq.ports import free_port

# Debian installs the server programs outside PATH, one folder per major version.
SERVER_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# Room for several coordinators (one connection per thread each) and the tests' own stores.
MAX_CONNECTIONS = 400


def server_bin() -> str | None:
    """The folder holding initdb and pg_ctl (the newest installed version), or None when there is none."""
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(on_path)
    found = sorted(glob.glob(SERVER_BIN_GLOB), key=lambda path: int(path.split("/")[-2].split(".")[0]))
    return found[-1] if found and os.path.exists(os.path.join(found[-1], "initdb")) else None


def missing() -> str | None:
    """Why the PostgreSQL tests cannot run here (a sentence), or None when they can."""
    try:
        import psycopg  # noqa: F401 - only whether it is installed
    except ImportError:
        return "psycopg is not installed (pip install 'renderq[postgresql]'; scripts/test.sh does it)"
    if server_bin() is None:
        return "PostgreSQL's initdb was not found (Debian: apt-get install postgresql; scripts/test.sh does it)"
    if os.name == "posix" and os.getuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and there is no runuser to start PostgreSQL as the postgres user"
    return None


class PostgresCluster:
    """A running PostgreSQL cluster of its own; stop() removes it."""

    def __init__(self) -> None:
        self.bin = server_bin() or ""
        self.folder = tempfile.mkdtemp(prefix="renderq-postgres-")
        self.data = os.path.join(self.folder, "data")
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_server_user: list[str] = []
        if os.name == "posix" and os.getuid() == 0:
            shutil.chown(self.folder, "postgres")
            self._as_server_user = ["runuser", "-u", "postgres", "--"]

    def start(self) -> "PostgresCluster":
        """initdb and start the server; returns self once it takes connections."""
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale")
        self._start_server()
        return self

    def _start_server(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections={MAX_CONNECTIONS} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c shared_buffers=32MB")
        # -l: the server writes to its log, not to pg_ctl's output (which would stay open as long as it runs).
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "server.log"),
                  "-w", "start")

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut) and delete its files."""
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def restart(self) -> None:
        """Stop the server and start it again on the same port and data (a database restart under the tests)."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        self._start_server()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = "test_" + uuid.uuid4().hex[:12]
        self._admin(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database, cutting any connection still open to it."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(statement)

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_server_user, os.path.join(self.bin, program), *args]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}")
