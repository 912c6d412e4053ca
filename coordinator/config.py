"""Coordinator settings, read from RENDERQ_* environment variables and overridden by command-line flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from renderq.settings import env_value, parse_bool
from renderq.units import parse_size
from renderq.webhooks import url_problem

from .store.engine import is_postgres_url

KIB = 1024
MIB = 1024**2
GIB = 1024**3
# A shorter admin token could be guessed through the login form.
MIN_TOKEN_LENGTH = 16
# What a task's own webhook URLs may name (coordinator/notify.py): any host but this machine's own and link-local
# addresses, any host, or none (only the farm-wide URL is told).
NOTIFY_TASK_URL_POLICIES = ("remote", "any", "off")


@dataclasses.dataclass
class Config:
    """Everything an admin can tune without editing code."""

    host: str = "0.0.0.0"
    port: int = 5000
    public_url: str = ""
    data_dir: str = "renderq-data"
    poll_interval: float = 2.0
    alive_timeout: float = 15.0
    heartbeat_seconds: float = 2.0
    # Heartbeats a second the whole farm is asked for at most: a larger farm is asked to beat less often, and to
    # send its "rendering" reports and log lines with its heartbeats and claims.
    heartbeats_per_second: float = 250.0
    upload_limit: int = 4 * GIB
    # A frame is marked failed once it has failed on this many different workers.
    frame_fail_workers: int = 3
    # A worker that failed frames of a task this many times gets no more frames of that task (until a retry).
    bad_worker_failures: int = 3
    # Defaults of a task's timeouts in seconds: the longest one frame may render (0: no limit), and the longest
    # Blender may go without showing progress.
    frame_timeout: float = 0.0
    no_progress_timeout: float = 600.0
    # Uploads are refused (507) once they would leave less than this free on the data dir's disk.
    disk_reserve: int = 1 * GIB
    http_threads: int = 16
    # Processes serving on one port and data dir (coordinator/processes.py): more than one uses more cores.
    processes: int = 1
    # HTTP server
    # Threads for uploads and downloads, apart from http_threads, so slow transfers never hold up heartbeats.
    transfer_threads: int = 16
    # Connections beyond this are answered 503 and closed; the open-file limit is raised at start to fit them.
    max_connections: int = 10_000
    # Seconds a client has to send a request's headers, counted from connecting or from the request's first byte.
    header_timeout: float = 10.0
    # Seconds a client has to send the whole body of a request other than an upload.
    body_timeout: float = 30.0
    # Seconds an upload or a download may stall (no byte moving) before its connection is cut.
    transfer_idle_timeout: float = 60.0
    # Seconds an idle connection stays open between requests: longer than the worker heartbeat, so it is reused.
    keep_alive_timeout: float = 30.0
    # The largest body of any request but an upload (those are capped by upload_limit).
    body_limit: int = 4 * 1024**2
    # Empty: SQLite, in the data dir's renderq.sqlite3. A postgresql://user@host:port/name URL: that PostgreSQL
    # database, which several coordinators may share (libpq reads its password from PGPASSWORD or ~/.pgpass).
    database: str = ""
    # "full" fsyncs every commit so a power cut loses nothing acknowledged; "normal" survives kill -9 only.
    sqlite_sync: str = "full"
    # Empty: each token is read from (or created in) the data dir's admin_token, artist_token, worker_token file.
    admin_token: str = ""
    artist_token: str = ""
    worker_token: str = ""
    # False: no token is asked for. Allowed on a loopback address; elsewhere it also needs `insecure`.
    auth: bool = True
    # The admin's explicit "yes, serve without auth on the network".
    insecure: bool = False
    # True lets anyone who reaches the coordinator read the status page; changes still need the admin token.
    open_status: bool = False

    # Request limits: what one request may ask the coordinator to store or answer, so that no artist (or stolen
    # token) can exhaust its memory. Each is checked before any work is done, with a 413 naming the limit.
    # Frames of one task: 100,000 is about 70 minutes of 24 fps animation, and a task that large still reads back
    # in bounded pages; a million frame rows took 700 MB of coordinator memory to build and list.
    max_task_frames: int = 100_000
    # A task's `settings` as JSON: copied into every lease, so kept small.
    max_settings_bytes: int = 64 * KIB
    # Entries of a task's `missing_assets` (each a path of at most 4,096 characters).
    max_missing_assets: int = 1_000
    # One /append_log chunk of Blender's output, in bytes; a worker sends far smaller ones every few seconds.
    max_log_chunk: int = 1 * MIB

    # What a task's estimate prices its predicted render hours at: money per worker-hour (in cost_currency, a label
    # such as EUR) and the watts a worker draws; 0 leaves cost or energy out of the estimate.
    cost_per_worker_hour: float = 0.0
    cost_currency: str = ""
    watts_per_worker: float = 0.0

    # Orphan files
    # Seconds a stored file that no task uses (an upload, a frame output) is kept before it is deleted: the longest
    # an upload may wait for the submit that uses it (a file the client is told is already stored gets this again).
    orphan_grace: float = 86400.0

    # Object store
    # Empty: files are kept in the data dir. `s3://bucket/prefix`: in that bucket of an S3-compatible store, whose
    # credentials come from the usual AWS_* variables.
    blob_store: str = ""
    # The store's address (empty: AWS_ENDPOINT_URL, else Amazon S3) and region (empty: AWS_REGION).
    s3_endpoint: str = ""
    s3_region: str = ""
    # The store's address as workers and artists reach it, in the presigned URLs (empty: s3_endpoint).
    s3_public_endpoint: str = ""

    # Webhooks (coordinator/notify.py)
    # A URL told of every task's events (done, failed, awaiting approval); empty: none.
    notify_url: str = ""
    # The key every event is signed with (HMAC-SHA256); empty: one the farm makes, kept in the data dir's
    # notify_secret file (shared through the database by a cluster's coordinators).
    notify_secret: str = ""
    # Which URLs a task's own `notify` may name: "remote" (any but this machine's own and link-local addresses, where
    # the services only the coordinator reaches live), "any", or "off" (only the farm-wide URL is told).
    notify_task_urls: str = "remote"
    # Seconds one delivery attempt may take (connecting, sending, the receiver's answer).
    notify_timeout: float = 5.0
    # Seconds before the first retry of a failed delivery; each later one waits about twice as long (at most 10 min).
    notify_retry: float = 2.0
    # Seconds after an event during which its delivery is retried; then it is given up, in the task's log.
    notify_give_up: float = 86400.0

    @property
    def lease_seconds(self) -> float:
        """A lease lives as long as a worker counts as alive: both end when its updates stop."""
        return self.alive_timeout

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Defaults, then RENDERQ_<FIELD> variables, then the given overrides (None means "not given")."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = env_value(field.name, _parser(field), environ)
            if value is not None:
                values[field.name] = value
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse settings that cannot work, with a sentence naming the setting."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.alive_timeout <= self.heartbeat_seconds:
            raise ValueError("alive timeout must be longer than the worker heartbeat interval")
        if self.frame_fail_workers < 1:
            raise ValueError("frame fail workers must be at least 1")
        if self.bad_worker_failures < 1:
            raise ValueError("bad worker failures must be at least 1")
        week = 7 * 86400
        if self.frame_timeout != 0 and not 1 <= self.frame_timeout <= week:
            raise ValueError(f"frame timeout must be 0 (no limit) or from 1 to {week} seconds (7 days)")
        if not 1 <= self.no_progress_timeout <= week:
            raise ValueError(f"no progress timeout must be from 1 to {week} seconds (7 days)")
        if self.upload_limit < 1024:
            raise ValueError("upload limit must be at least 1024 bytes")
        if self.disk_reserve < 0:
            raise ValueError("disk reserve must not be negative")
        if self.database and not is_postgres_url(self.database):
            raise ValueError("database must be a postgresql:// URL, or left empty for SQLite in the data dir")
        if self.sqlite_sync not in ("full", "normal"):
            raise ValueError("sqlite sync must be 'full' or 'normal'")
        if self.max_task_frames < 1:
            raise ValueError("max task frames must be at least 1")
        for name in ("max_settings_bytes", "max_missing_assets", "max_log_chunk"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', ' ')} must not be negative")
        if not 1 <= self.orphan_grace <= 365 * 86400:
            raise ValueError(f"orphan grace must be from 1 to {365 * 86400} seconds (365 days)")
        if self.blob_store and not (self.blob_store.startswith("s3://") and len(self.blob_store) > 5):
            raise ValueError(f"blob store must be empty (the data dir) or s3://bucket/prefix, not {self.blob_store!r}")
        for name in ("cost_per_worker_hour", "watts_per_worker"):
            if not 0 <= getattr(self, name) < 1e9:
                raise ValueError(f"{name.replace('_', ' ')} must be 0 (not said) or a positive number")
        if len(self.cost_currency) > 8 or not self.cost_currency.isprintable():
            raise ValueError("cost currency must be a short label such as EUR or USD, at most 8 characters")
        if self.poll_interval <= 0:
            raise ValueError("poll interval must be more than 0 seconds")
        self._validate_http()
        self._validate_notify()
        for role in ("admin", "artist", "worker"):
            token = getattr(self, f"{role}_token")
            if token and (len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or token != token.strip()
                          or " " in token):
                raise ValueError(f"the {role} token must be at least {MIN_TOKEN_LENGTH} printable characters, "
                                 "without spaces")

    def _validate_notify(self) -> None:
        if self.notify_url and (problem := url_problem(self.notify_url)):
            raise ValueError(f"notify url: {problem}")
        if self.notify_secret and len(self.notify_secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the notify secret must be at least {MIN_TOKEN_LENGTH} characters")
        if self.notify_task_urls not in NOTIFY_TASK_URL_POLICIES:
            raise ValueError(f"notify task urls must be one of {', '.join(NOTIFY_TASK_URL_POLICIES)}, "
                             f"not {self.notify_task_urls!r}")
        if not 0.1 <= self.notify_timeout <= 300:
            raise ValueError("notify timeout must be from 0.1 to 300 seconds")
        if not 0.01 <= self.notify_retry <= 3600:
            raise ValueError("notify retry must be from 0.01 to 3600 seconds")
        if not 1 <= self.notify_give_up <= 30 * 86400:
            raise ValueError(f"notify give up must be from 1 to {30 * 86400} seconds (30 days)")

    def _validate_http(self) -> None:
        for name in ("http_threads", "transfer_threads", "max_connections", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
        for name in ("header_timeout", "body_timeout", "transfer_idle_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', ' ')} must be more than 0 seconds")
        if self.keep_alive_timeout <= self.heartbeat_seconds:
            raise ValueError("keep-alive timeout must be longer than the worker heartbeat interval, so a worker's "
                             "connection stays open between its updates")
        if self.body_limit < 1024:
            raise ValueError("body limit must be at least 1024 bytes")


# Fields given as sizes ("4G", "64K") in their RENDERQ_* variables.
SIZE_FIELDS = ("upload_limit", "disk_reserve", "max_settings_bytes", "max_log_chunk", "body_limit")


def _parser(field: dataclasses.Field) -> Callable[[str], Any]:
    """How a field's RENDERQ_* variable is read, from the field's type."""
    kind = str(field.type)
    if kind == "int":
        return parse_size if field.name in SIZE_FIELDS else int
    parsers: dict[str, Callable[[str], Any]] = {"float": float, "bool": parse_bool}
    return parsers.get(kind, str)
