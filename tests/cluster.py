"""A cluster for integration tests: three real coordinator processes on one throwaway PostgreSQL database and one
SeaweedFS bucket, and real workers given all their addresses as one comma-separated `--coordinator` list.

Each coordinator is a harness.Farm of its own (own loopback port, own data dir); the Cluster is itself a Farm whose
`url` is the address list (what workers get) and whose `api` talks to a coordinator still alive, so the farm tests'
checks (test_faults.assert_frames_once) run on it unchanged. Tokens come from the first coordinator's data dir: it
stored them in the database, and the others took the same ones.

Not a test file: tests import it (`from cluster import Cluster, cluster_fixture`), which gives them the `cluster`
fixture below.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness import Api, Farm, Process, TcpProxy, find_blender_or_none
from seaweedfs import SeaweedFS, credentials_env

# The bucket's folder for the farm's files and frames.
PREFIX = "farm"


class Cluster(Farm):
    """Coordinators (`nodes`, started by start()) over one database and bucket, and workers that know them all."""

    def __init__(self, root: str, database: str, store: SeaweedFS, bucket: str, count: int = 3) -> None:
        super().__init__(root, blender=find_blender_or_none(), database=database)
        self.store = store
        self.bucket = bucket
        self.nodes = [Farm(os.path.join(root, f"coordinator-{index}"), blender=self.blender, database=database)
                      for index in range(count)]
        for node in self.nodes:
            os.makedirs(node.root, exist_ok=True)
        self.url = ",".join(node.url for node in self.nodes)
        self.data_dir = self.nodes[0].data_dir  # where the tokens every coordinator shares are read from
        # Per coordinator index, a database URL other than `database` (e.g. through a TcpProxy to cut it off).
        self.database_of: dict[int, str] = {}

    def start(self, *extra: str) -> "Cluster":
        """Start every coordinator (the first alone, so it is the one that stores the farm's tokens)."""
        for index in range(len(self.nodes)):
            self.start_node(index, *extra)
        self.api = Api(self.nodes[0].url, self.nodes[0].api.token)
        return self

    def start_node(self, index: int, *extra: str) -> Process:
        """Start (or start again) coordinator `index` on the cluster's database and bucket. Only the coordinators
        get the object store's credentials: workers and artists go through presigned URLs."""
        node = self.nodes[index]
        node.database = self.database_of.get(index, self.database)
        saved = {name: os.environ.get(name) for name in credentials_env()}
        os.environ.update(credentials_env())
        try:
            return node.start_coordinator("--blob-store", f"s3://{self.bucket}/{PREFIX}", "--s3-endpoint",
                                          self.store.endpoint, *extra)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def kill_node(self, index: int) -> None:
        """SIGKILL coordinator `index` (and nothing else); the cluster's api moves to a coordinator still alive."""
        node = self.nodes[index]
        assert node.coordinator is not None
        node.coordinator.kill_group()
        self.api = Api(next(n.url for n in self.nodes if self.alive(n)), self.api.token)

    @staticmethod
    def alive(node: Farm) -> bool:
        return node.coordinator is not None and node.coordinator.popen.poll() is None

    def node_api(self, index: int) -> Api:
        """A client of coordinator `index` alone, with the admin token."""
        return Api(self.nodes[index].url, self.api.token)

    def logs(self) -> str:
        """Every coordinator's log, for a failing test's message."""
        return "\n".join(f"--- coordinator {index}\n{node.coordinator.output()[-3000:]}"
                         for index, node in enumerate(self.nodes) if node.coordinator is not None)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=20)
        for node in self.nodes:
            if self.alive(node):
                node.coordinator.stop(timeout=10)


class DatabaseLink(TcpProxy):
    """A TcpProxy in front of PostgreSQL for one coordinator, and that coordinator's database URL through it."""

    def __init__(self, database: str, port: int) -> None:
        super().__init__(port)
        self.database = database.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{self.port}/")


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path, postgres_cluster, seaweedfs, s3_bucket) -> Iterator[Cluster]:
    """Three coordinators' cluster on a new database and bucket (not started: the test calls start(), after
    choosing flags or database links); everything is stopped and the database dropped afterwards."""
    if find_blender_or_none() is None:
        pytest.skip("Blender is not installed (scripts/test.sh installs it)")
    database = postgres_cluster.create_database()
    made = Cluster(str(tmp_path / "cluster"), database, seaweedfs, s3_bucket)
    yield made
    made.stop()
    postgres_cluster.drop_database(database)
