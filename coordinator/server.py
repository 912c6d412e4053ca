"""`renderq coordinator`: serve the app with uvicorn behind the HTTP gate, one coordinator per data dir, leases
reaped in the background."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from renderq.platform import hold_lock_file
from renderq.private_files import PRIVATE_UMASK, make_private_tree_top
from renderq.settings import Flag, add_flags
from renderq.units import parse_size

from .auth import is_loopback
from .blobs import ContentStore
from .config import Config
from .notify import NOTIFY_FLAGS, start_notifier
from .processes import serve_in_processes
from .store import Store

if TYPE_CHECKING:
    import uvicorn
    from flask import Flask

    from .http_gate import Gate

log = logging.getLogger("renderq.coordinator")

# Orphan files are looked for once at start and then this often (or every grace period, when that is shorter).
ORPHAN_SWEEP_SECONDS = 600.0


# Each help names the flag's RENDERQ_* variable and default, as the README's table does.
SERVE_FLAGS = (
    Flag("--host", str, "address to listen on (RENDERQ_HOST, default 0.0.0.0)"),
    Flag("--port", int, "port to listen on, 0 for any free port (RENDERQ_PORT, default 5000)"),
    Flag("--data-dir", str, "where the database, .blend files and frames are kept "
         "(RENDERQ_DATA_DIR, default ./renderq-data)"),
    Flag("--database", str, "a postgresql://user@host:port/name URL to keep the farm's state in that PostgreSQL "
         "database, which several coordinators may share (its password in PGPASSWORD or ~/.pgpass, not on the "
         "command line); without it, SQLite in the data dir (RENDERQ_DATABASE)", metavar="URL"),
    Flag("--public-url", str, "URL that clients should use to reach this coordinator (RENDERQ_PUBLIC_URL)"),
    Flag("--poll-interval", float, "seconds between status page refreshes (RENDERQ_POLL_INTERVAL, default 2)"),
    Flag("--alive-timeout", float, "seconds without an update before a worker counts as dead and its frames are "
         "requeued (RENDERQ_ALIVE_TIMEOUT, default 15)"),
    Flag("--heartbeat", float, "seconds between worker updates (RENDERQ_HEARTBEAT_SECONDS, default 2)",
         dest="heartbeat_seconds"),
    Flag("--heartbeats-per-second", float, "most heartbeats a second the whole farm is asked for: a larger farm is "
         "asked to beat less often (up to every 20 s) and to send its frames' start reports and log lines with "
         "its heartbeats and claims (RENDERQ_HEARTBEATS_PER_SECOND, default 250)"),
    Flag("--frame-fail-workers", int, "a frame is marked failed once it has failed on this many different workers "
         "(RENDERQ_FRAME_FAIL_WORKERS, default 3)"),
    Flag("--bad-worker-failures", int, "a worker that failed frames of a task this many times gets no more frames "
         "of it until its failed frames are retried (RENDERQ_BAD_WORKER_FAILURES, default 3)"),
    Flag("--frame-timeout", float, "default longest render of one frame in seconds, 0 for no limit; a task may set "
         "its own (RENDERQ_FRAME_TIMEOUT, default 0)"),
    Flag("--no-progress-timeout", float, "default seconds Blender may show no progress before the frame counts as "
         "failed; a task may set its own (RENDERQ_NO_PROGRESS_TIMEOUT, default 600)"),
    Flag("--upload-limit", parse_size, "largest accepted upload, e.g. 4G (RENDERQ_UPLOAD_LIMIT, default 4G)"),
    Flag("--disk-reserve", parse_size, "free space to keep on the data dir's disk; uploads that would eat into it "
         "get a 507 error (RENDERQ_DISK_RESERVE, default 1G)"),
    Flag("--http-threads", int, "threads serving HTTP requests (RENDERQ_HTTP_THREADS, default 16)"),
    Flag("--processes", int, "processes serving requests on the one port and data dir, to use more than one core "
         "of the machine: a farm of thousands of workers (RENDERQ_PROCESSES, default 1)"),
    Flag("--max-task-frames", int, "most frames one task may have; a larger submit gets a 413 error. Well below a "
         "million: every frame is a database row the coordinator builds, keeps and reports "
         "(RENDERQ_MAX_TASK_FRAMES, default 100000)"),
    Flag("--max-settings-bytes", parse_size, "largest `settings` of a task as JSON, e.g. 64K; it is sent with every "
         "frame a worker leases (RENDERQ_MAX_SETTINGS_BYTES, default 64K)"),
    Flag("--max-missing-assets", int, "most entries in a task's list of missing assets "
         "(RENDERQ_MAX_MISSING_ASSETS, default 1000)"),
    Flag("--max-log-chunk", parse_size, "largest piece of log one /append_log request may add, e.g. 1M "
         "(RENDERQ_MAX_LOG_CHUNK, default 1M)"),
)

# The HTTP server's flags: how many connections, threads and bytes it takes, and how long it waits.
HTTP_FLAGS = (
    Flag("--transfer-threads", int, "threads for uploads and downloads, apart from --http-threads, so slow "
         "transfers never hold up workers' updates (RENDERQ_TRANSFER_THREADS, default 16)"),
    Flag("--max-connections", int, "most open connections; more are answered 503 and closed "
         "(RENDERQ_MAX_CONNECTIONS, default 10000)"),
    Flag("--header-timeout", float, "seconds a client has to send a request's headers; an idle or trickling "
         "connection is closed after it (RENDERQ_HEADER_TIMEOUT, default 10)"),
    Flag("--body-timeout", float, "seconds a client has to send the whole body of a request other than an upload; "
         "408 after it (RENDERQ_BODY_TIMEOUT, default 30)"),
    Flag("--transfer-idle-timeout", float, "seconds an upload or a download may stall, no byte moving, before its "
         "connection is cut (RENDERQ_TRANSFER_IDLE_TIMEOUT, default 60)"),
    Flag("--keep-alive-timeout", float, "seconds an idle connection stays open between requests; longer than "
         "--heartbeat (RENDERQ_KEEP_ALIVE_TIMEOUT, default 30)"),
    Flag("--body-limit", parse_size, "largest body of a request other than an upload, e.g. 4M; larger ones get a "
         "413 error before they are read (RENDERQ_BODY_LIMIT, default 4M)"),
)

# Where task files and frames are kept.
BLOB_STORE_FLAGS = (
    Flag("--blob-store", str, "keep task files and frames in an S3-compatible bucket, s3://bucket/prefix, instead "
         "of the data dir; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; needs the s3 extra "
         "(RENDERQ_BLOB_STORE, default: the data dir)", metavar="URL"),
    Flag("--s3-endpoint", str, "address of the S3-compatible store, e.g. http://store:8333 (RENDERQ_S3_ENDPOINT, "
         "default AWS_ENDPOINT_URL, else Amazon S3)", metavar="URL"),
    Flag("--s3-region", str, "region of the bucket (RENDERQ_S3_REGION, default AWS_REGION)"),
    Flag("--s3-public-endpoint", str, "address of the store as workers and artists reach it, put in the presigned "
         "URLs they download and upload at (RENDERQ_S3_PUBLIC_ENDPOINT, default --s3-endpoint)", metavar="URL"),
)

# What a task's estimate prices its predicted render hours at.
ESTIMATE_FLAGS = (
    Flag("--cost-per-worker-hour", float, "money one worker costs per hour of rendering; a task's estimate then "
         "shows what its frames left cost (RENDERQ_COST_PER_WORKER_HOUR, default 0: no cost shown)",
         metavar="AMOUNT"),
    Flag("--cost-currency", str, "the currency of --cost-per-worker-hour, a label such as EUR "
         "(RENDERQ_COST_CURRENCY, default none)"),
    Flag("--watts-per-worker", float, "power one rendering worker draws; a task's estimate then shows the energy "
         "its frames left take (RENDERQ_WATTS_PER_WORKER, default 0: no energy shown)", metavar="WATTS"),
)

ORPHAN_GRACE_FLAG = Flag("--orphan-grace", float, "a stored file that no task uses (an upload, a frame's output) is "
                         "deleted once it is this old: the longest an upload may wait for the submit that uses it "
                         "(RENDERQ_ORPHAN_GRACE, default 86400, a day)", metavar="SECONDS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `renderq coordinator`; each overrides its RENDERQ_* environment variable."""
    add_flags(parser, SERVE_FLAGS)
    add_flags(parser, HTTP_FLAGS)
    parser.add_argument("--add-artist", metavar="NAME",
                        help="create an access token for one artist in the data dir (file artist_tokens), print it "
                        "and exit; tasks submitted with it belong to artist:NAME, and only NAME (or an admin) may "
                        "cancel them. The names admin, artist, worker, anonymous and names with ':' are refused. "
                        "The running coordinator picks it up without a restart")
    parser.add_argument("--no-auth", dest="auth", action="store_false", default=None,
                        help="ask for no access tokens: anyone who reaches the coordinator may submit, cancel, "
                        "read and delete. Allowed on a loopback address only, unless --insecure is given too "
                        "(RENDERQ_AUTH=0)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="allow --no-auth on a network address: only on a network you trust completely "
                        "(RENDERQ_INSECURE=1)")
    parser.add_argument("--open-status", action="store_true", default=None,
                        help="let anyone who reaches the coordinator read the status page; changes still need the "
                        "admin token (RENDERQ_OPEN_STATUS=1)")
    add_flags(parser, [ORPHAN_GRACE_FLAG])
    add_flags(parser, BLOB_STORE_FLAGS)
    add_flags(parser, NOTIFY_FLAGS)
    add_flags(parser, ESTIMATE_FLAGS)


def main(args: argparse.Namespace) -> int:
    """Run the coordinator until interrupted. Returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Every flag's destination is its Config field's name; a flag not given is None, which from_env passes over.
    given = {field.name: getattr(args, field.name, None) for field in dataclasses.fields(Config)}
    try:
        config = Config.from_env(**given)
    except ValueError as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 2
    # Everything the coordinator creates (database and its -wal/-shm, tokens, uploads and their temp files) is then
    # the owner's only, whatever umask it was started with.
    os.umask(PRIVATE_UMASK)
    if getattr(args, "add_artist", None):
        return add_artist(config, args.add_artist)
    return serve(config)


def add_artist(config: Config, name: str) -> int:
    """Create one artist's token and print it: in the database when it is a cluster's (every coordinator of it
    knows the artist at once), else in the data dir."""
    from .auth import ARTIST_TOKENS_FILE, add_artist_token, check_artist_name

    try:
        if config.database:
            check_artist_name(name)
            token = secrets.token_hex(32)
            if not Store(config.database).add_artist_token(name, token):
                raise ValueError(f"there is already a token for {name!r} in the database")
            where = "kept in the database, for every coordinator of the farm"
        else:
            os.makedirs(config.data_dir, exist_ok=True)
            token = add_artist_token(config.data_dir, name)
            where = f"kept in {os.path.abspath(os.path.join(config.data_dir, ARTIST_TOKENS_FILE))}"
    except (OSError, ValueError) as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 2
    print(f"artist {name}: token {token}\n({where}; give it to {name} for the add-on's preferences or "
          "RENDERQ_TOKEN)")
    return 0


def serve(config: Config) -> int:
    """Serve the coordinator until SIGINT or SIGTERM. Returns the process exit code."""
    if not config.auth and not is_loopback(config.host):
        if not config.insecure:
            print(f"renderq coordinator: refusing to serve without access tokens on {config.host or '0.0.0.0'}, "
                  "where anyone on the network could submit, cancel and delete; listen on 127.0.0.1, drop "
                  "--no-auth, or add --insecure if this network is trusted completely", file=sys.stderr)
            return 2
        print("WARNING: auth is off and the coordinator listens on the network (--insecure): anyone who reaches "
              "it can submit, cancel, read and delete tasks", file=sys.stderr, flush=True)
    os.makedirs(config.data_dir, exist_ok=True)
    lock = hold_lock_file(os.path.join(config.data_dir, "coordinator.lock"))
    if lock is None:
        print(f"renderq coordinator: another coordinator is already using {os.path.abspath(config.data_dir)}; "
              "refusing to start a second one on the same data", file=sys.stderr)
        return 1
    # A data dir made by an older version (or under a looser umask) becomes private too.
    make_private_tree_top(config.data_dir)
    try:
        listener = _listen(config.host, config.port)
    except OSError as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 1
    try:
        if config.processes > 1:
            print(f"RenderQ coordinator serving with {config.processes} processes", flush=True)
            with tempfile.TemporaryDirectory(prefix="renderq-metrics-") as counters:
                return serve_in_processes(
                    config.processes, listener,
                    lambda index, ready: _serve_process(config, listener, index, ready, counters))
        return _serve_process(config, listener, 0, lambda: None)
    except ValueError as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 2
    finally:
        listener.close()


def _serve_process(config: Config, listener: socket.socket, index: int, ready: Callable[[], None],
                   shared_counters: str | None = None) -> int:
    """One serving process (the only one, or one of --processes): the app on `listener` until SIGINT or SIGTERM.
    `ready()` is called once the app is made; process 0 also sweeps unused files and prints the addresses. The
    processes of --processes keep /metrics' counters in the folder `shared_counters`."""
    from .app import create_app

    _limit_malloc_arenas()  # before the threads of the app and the server are made
    # The store's turn thread holds SQLite's write lock while it waits for the GIL between statements; with the
    # event loop holding the GIL for up to the default 5 ms each time, every writer of every serving process
    # waited too. 1 ms: at 5,000 simulated workers on two processes, a median p99 of 49 ms over 7 runs, not 86.
    sys.setswitchinterval(0.001)
    if shared_counters is not None:
        from .metrics import count_across_processes

        count_across_processes(shared_counters, index)
    try:
        app = create_app(config)
        server, gate = _http_server(app, config)
    except (OSError, ValueError) as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 1
    ready()
    scheduler = app.extensions["renderq.scheduler"]
    scheduler.recover_after_restart()
    scheduler.store.checkpoint_in_background()
    stop = threading.Event()
    app.extensions["renderq.live"].follow_others(stop)
    if index == 0:
        # The first process alone: the others' sweeps and checkpoints would only take write turns that every
        # serving process's writers then wait behind, for work already done.
        sweeper = OrphanSweeper(app.extensions["renderq.blobs"], scheduler.store, config.orphan_grace)
        threading.Thread(target=_reap_leases, args=(scheduler, stop, sweeper), name="lease-reaper",
                         daemon=True).start()
        _print_addresses(app, config, listener.getsockname()[1])
        # Webhooks: one sender per coordinator (and one coordinator of a cluster at a time, see notify.py).
        start_notifier(scheduler.store, config, stop)
    # uvicorn takes SIGINT and SIGTERM while it serves, shuts down, then raises the signal again: both end here.
    signal.signal(signal.SIGTERM, _interrupt)
    _tune_garbage_collector()
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        gate.close()
    if index == 0:
        print("RenderQ coordinator stopped", flush=True)
    return 0


def _print_addresses(app: Flask, config: Config, port: int) -> None:
    url = config.public_url or f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '') else config.host}:{port}"
    print(f"RenderQ coordinator listening on {url} (data in {os.path.abspath(config.data_dir)})", flush=True)
    readers = "anyone on the network can read it" if config.open_status else "log in with the admin token"
    print(f"status page: {url}/ ({readers})", flush=True)
    for line in app.extensions["renderq.tokens"].describe():
        print(line, flush=True)


def _http_server(app: Flask, config: Config) -> tuple[uvicorn.Server, Gate]:
    """The uvicorn server running the HTTP gate in front of `app`, with the connection guards; (server, gate)."""
    import uvicorn

    from .http_gate import Gate
    from .http_protocol import ConnectionLimits, guarded_protocol

    max_connections = _fit_connections(config.max_connections)
    gate = Gate(app, config)
    limits = ConnectionLimits(header_timeout=config.header_timeout, stall_timeout=config.transfer_idle_timeout,
                              max_connections=max_connections)
    uvicorn_config = uvicorn.Config(
        gate,
        http=guarded_protocol(limits),
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For from anyone on the network is not to be believed
        server_header=False,
        headers=[("server", "RenderQ")],
        timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]  # a float works as well
        backlog=2048,
        # A stopping coordinator lets requests in flight finish for a few seconds, not an upload's hour.
        timeout_graceful_shutdown=5,
    )
    # Its per-request warnings (a malformed request) would let anyone fill the log; its errors still show.
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    return uvicorn.Server(uvicorn_config), gate


def _limit_malloc_arenas() -> None:
    """Let the threads share two of glibc's malloc arenas instead of one each.

    Each of the coordinator's threads (HTTP, transfers, frame files, the store) that allocates gets an arena of its
    own by default, up to 8 per core, and memory freed in one is not reused by another: 16 farm-wide reads at once
    left their peaks in as many arenas. Elsewhere than glibc this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        return


def _tune_garbage_collector() -> None:
    """Keep Python's cycle collector from pausing the coordinator for long.

    A farm of thousands of workers keeps thousands of connections open, each some fifty objects, and the
    collector's full passes walked all of them: pauses of 100-170 ms every few seconds at 1,000 workers, the whole
    of the heartbeats' p99. The objects made while starting (modules, the app, the contract) are frozen out of its
    passes, and its first generation holds 20,000 objects rather than 700, so the objects of requests in flight
    are rarely promoted and full passes come seldom. Cycles are still collected: only less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), for the server to accept on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Named as TCP, so that asyncio switches Nagle's algorithm off on every accepted connection: with it on, an
    # answer's body waits for the client's delayed ACK of its head, 40 ms on every request of a kept-alive connection.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if sys.platform != "win32":
            # Restart at once on the same port; on Windows this option would let another process share the port.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as error:
        listener.close()
        raise OSError(f"cannot listen on {host or '0.0.0.0'}:{port}: {error.strerror or error}") from None
    return listener


# Files the coordinator holds open besides its connections: the database, blobs being written, logs, the listener.
_OTHER_FILES = 256


def _fit_connections(wanted: int) -> int:
    """Raise the process's open-file limit so `wanted` connections fit; returns how many fit."""
    try:
        import resource
    except ImportError:  # Windows: sockets do not count against an open-file limit there
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + _OTHER_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit to %d: %s", target, error)
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitting = max(1, soft - _OTHER_FILES)
        print(f"WARNING: the open-file limit ({soft}) leaves room for {fitting} connections, not the "
              f"{wanted} of --max-connections; raise it (ulimit -n) for a larger farm", file=sys.stderr, flush=True)
        return fitting
    return wanted


class OrphanSweeper:
    """Deletes stored files no task uses once they are older than the grace period, a bounded part per round."""

    def __init__(self, blobs: ContentStore, store: Store, grace: float) -> None:
        self.blobs = blobs
        self.store = store
        self.grace = grace
        self.interval = min(ORPHAN_SWEEP_SECONDS, grace)
        self._next = 0.0  # the first call sweeps

    def maybe_sweep(self) -> None:
        """Sweep if a round is due; a failure is logged, and the next round tries again."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            # Coordinators sharing one database take turns: while another one sweeps, this round is skipped.
            with self.store.exclusive("orphan sweep") as ours:
                if not ours:
                    return
                files, freed = self.blobs.sweep_orphans(time.time() - self.grace, self.store.referenced_blobs)
        except Exception as error:  # noqa: BLE001 - a failed sweep must not stop the lease reaper that runs it
            log.error("the sweep for unused files failed: %s", error)
            return
        if files:
            log.info("deleted %d stored file(s) that no task used for over %g s, freeing %d bytes",
                     files, self.grace, freed)


def _reap_leases(scheduler, stop: threading.Event, sweeper: OrphanSweeper) -> None:
    writes_failed = False
    sweeper.maybe_sweep()
    while not stop.wait(1.0):
        sweeper.maybe_sweep()
        try:
            if writes_failed:
                # While the database refused writes (a full disk), no worker could renew its leases either: do not
                # count that against them, just as after a restart.
                scheduler.recover_after_restart()
                writes_failed = False
                log.info("the database takes writes again; leases extended")
            expired = scheduler.expire_leases()
            if expired:
                log.info("requeued %d frame(s) whose worker stopped reporting", expired)
            # Here rather than in whichever request's commit fills the WAL (see Store.checkpoint_in_background).
            scheduler.store.checkpoint()
        except Exception as error:  # noqa: BLE001 - a busy or full database must not kill the reaper; next round retries
            if not writes_failed:
                log.error("lease reaper failed: %s", error)
            writes_failed = True


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
