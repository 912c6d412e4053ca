"""`renderq coordinator`: serve the app with waitress, one coordinator per data dir, leases reaped in the background."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import threading
import time

from renderq.private_files import PRIVATE_UMASK, make_private_tree_top

from .auth import is_loopback
from .blobs import BlobStore
from .config import Config, parse_size
from .store import Store

log = logging.getLogger("renderq.coordinator")

# Orphan files are looked for once at start and then this often (or every grace period, when that is shorter).
ORPHAN_SWEEP_SECONDS = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `renderq coordinator`; each overrides its RENDERQ_* environment variable."""
    parser.add_argument("--host", help="address to listen on (RENDERQ_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free port (RENDERQ_PORT, default 5000)")
    parser.add_argument("--data-dir", help="where the database, .blend files and frames are kept "
                        "(RENDERQ_DATA_DIR, default ./renderq-data)")
    parser.add_argument("--public-url", help="URL that clients should use to reach this coordinator "
                        "(RENDERQ_PUBLIC_URL)")
    parser.add_argument("--poll-interval", type=float, help="seconds between status page refreshes "
                        "(RENDERQ_POLL_INTERVAL, default 2)")
    parser.add_argument("--alive-timeout", type=float, help="seconds without an update before a worker counts as "
                        "dead and its frames are requeued (RENDERQ_ALIVE_TIMEOUT, default 15)")
    parser.add_argument("--heartbeat", dest="heartbeat_seconds", type=float,
                        help="seconds between worker updates (RENDERQ_HEARTBEAT_SECONDS, default 2)")
    parser.add_argument("--frame-fail-workers", type=int, help="a frame is marked failed once it has failed on this "
                        "many different workers (RENDERQ_FRAME_FAIL_WORKERS, default 3)")
    parser.add_argument("--bad-worker-failures", type=int, help="a worker that failed frames of a task this many "
                        "times gets no more frames of it until its failed frames are retried "
                        "(RENDERQ_BAD_WORKER_FAILURES, default 3)")
    parser.add_argument("--frame-timeout", type=float, help="default longest render of one frame in seconds, 0 for "
                        "no limit; a task may set its own (RENDERQ_FRAME_TIMEOUT, default 0)")
    parser.add_argument("--no-progress-timeout", type=float, help="default seconds Blender may show no progress "
                        "before the frame counts as failed; a task may set its own "
                        "(RENDERQ_NO_PROGRESS_TIMEOUT, default 600)")
    parser.add_argument("--upload-limit", type=parse_size, help="largest accepted upload, e.g. 4G "
                        "(RENDERQ_UPLOAD_LIMIT, default 4G)")
    parser.add_argument("--disk-reserve", type=parse_size, help="free space to keep on the data dir's disk; uploads "
                        "that would eat into it get a 507 error (RENDERQ_DISK_RESERVE, default 1G)")
    parser.add_argument("--http-threads", type=int, help="threads serving HTTP requests (RENDERQ_HTTP_THREADS, default 16)")
    parser.add_argument("--max-task-frames", type=int, help="most frames one task may have; a larger submit gets "
                        "a 413 error. Well below a million: every frame is a database row the coordinator builds, "
                        "keeps and reports (RENDERQ_MAX_TASK_FRAMES, default 100000)")
    parser.add_argument("--max-settings-bytes", type=parse_size, help="largest `settings` of a task as JSON, e.g. "
                        "64K; it is sent with every frame a worker leases (RENDERQ_MAX_SETTINGS_BYTES, default 64K)")
    parser.add_argument("--max-missing-assets", type=int, help="most entries in a task's list of missing assets "
                        "(RENDERQ_MAX_MISSING_ASSETS, default 1000)")
    parser.add_argument("--max-log-chunk", type=parse_size, help="largest piece of log one /append_log request may "
                        "add, e.g. 1M (RENDERQ_MAX_LOG_CHUNK, default 1M)")
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
    parser.add_argument("--orphan-grace", type=float, metavar="SECONDS",
                        help="a stored file that no task uses (an upload, a frame's output) is deleted once it is "
                        "this old: the longest an upload may wait for the submit that uses it "
                        "(RENDERQ_ORPHAN_GRACE, default 86400, a day)")


def main(args: argparse.Namespace) -> int:
    """Run the coordinator until interrupted. Returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fields = ("host", "port", "data_dir", "public_url", "poll_interval", "alive_timeout",
              "heartbeat_seconds", "frame_fail_workers", "bad_worker_failures",
              "frame_timeout", "no_progress_timeout", "upload_limit", "disk_reserve", "http_threads", "open_status", "auth", "insecure",
              "max_task_frames", "max_settings_bytes", "max_missing_assets", "max_log_chunk",
              "orphan_grace")
    try:
        config = Config.from_env(**{name: getattr(args, name, None) for name in fields})
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
    """Create one artist's token in the data dir and print it."""
    from .auth import ARTIST_TOKENS_FILE, add_artist_token

    os.makedirs(config.data_dir, exist_ok=True)
    try:
        token = add_artist_token(config.data_dir, name)
    except (OSError, ValueError) as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 2
    path = os.path.abspath(os.path.join(config.data_dir, ARTIST_TOKENS_FILE))
    print(f"artist {name}: token {token}\n(kept in {path}; give it to {name} for the add-on's preferences or "
          "RENDERQ_TOKEN)")
    return 0


def serve(config: Config) -> int:
    import waitress

    from .app import create_app

    if not config.auth and not is_loopback(config.host):
        if not config.insecure:
            print(f"renderq coordinator: refusing to serve without access tokens on {config.host or '0.0.0.0'}, "
                  "where anyone on the network could submit, cancel and delete; listen on 127.0.0.1, drop "
                  "--no-auth, or add --insecure if this network is trusted completely", file=sys.stderr)
            return 2
        print("WARNING: auth is off and the coordinator listens on the network (--insecure): anyone who reaches "
              "it can submit, cancel, read and delete tasks", file=sys.stderr, flush=True)
    os.makedirs(config.data_dir, exist_ok=True)
    lock = _lock_data_dir(config.data_dir)
    if lock is None:
        print(f"renderq coordinator: another coordinator is already using {os.path.abspath(config.data_dir)}; "
              "refusing to start a second one on the same data", file=sys.stderr)
        return 1
    # A data dir made by an older version (or under a looser umask) becomes private too.
    make_private_tree_top(config.data_dir)
    try:
        app = create_app(config)
    except (OSError, ValueError) as error:
        print(f"renderq coordinator: {error}", file=sys.stderr)
        return 1
    scheduler = app.extensions["renderq.scheduler"]
    scheduler.recover_after_restart()
    scheduler.store.checkpoint_in_background()
    stop = threading.Event()
    sweeper = OrphanSweeper(app.extensions["renderq.blobs"], scheduler.store, config.orphan_grace)
    threading.Thread(target=_reap_leases, args=(scheduler, stop, sweeper), name="lease-reaper", daemon=True).start()

    server = waitress.create_server(
        app,
        host=config.host,
        port=config.port,
        threads=config.http_threads,
        # Our own check answers oversize uploads with a JSON 413; waitress's cap only guards far beyond it.
        max_request_body_size=config.upload_limit + 16 * 1024 * 1024,
        channel_timeout=300,
        ident="RenderQ",
    )
    port = server.effective_port
    url = config.public_url or f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '') else config.host}:{port}"
    print(f"RenderQ coordinator listening on {url} (data in {os.path.abspath(config.data_dir)})", flush=True)
    readers = "anyone on the network can read it" if config.open_status else "log in with the admin token"
    print(f"status page: {url}/ ({readers})", flush=True)
    for line in app.extensions["renderq.tokens"].describe():
        print(line, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.close()
    print("RenderQ coordinator stopped", flush=True)
    return 0


def _lock_data_dir(data_dir: str):
    """Hold an exclusive lock on the data dir for the process's lifetime; None if another process has it."""
    handle = open(os.path.join(data_dir, "coordinator.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class OrphanSweeper:
    """Deletes stored files no task uses once they are older than the grace period, a bounded part per round."""

    def __init__(self, blobs: BlobStore, store: Store, grace: float) -> None:
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
        except Exception as error:  # a busy or full database must not kill the reaper; the next round retries
            if not writes_failed:
                log.error("lease reaper failed: %s", error)
            writes_failed = True


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
