"""The `renderq worker` command: its options (with defaults from RENDERQ_* environment variables) and `main`,
which checks them, builds the worker's settings and runs a WorkerAgent.

This module sits above the worker: it imports the agent, and nothing in worker/ imports it."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Callable

from renderq.http_client import CoordinatorClient
from renderq.paths import is_safe_file_name
from renderq.settings import Flag, add_flags, env_value, parse_bool
from renderq.units import parse_size
from worker.agent import WorkerAgent
from worker.blender_session import SessionError, blender_version, find_blender
from worker.cache import DEFAULT_CACHE_SIZE, CacheError, format_size
from worker.encode import probe_ffmpeg
from worker.settings import DEFAULT_POLL_SECONDS, WorkerSettings

__all__ = ["add_arguments", "default_work_dir", "main"]

# The agent's logger, not one of this module's own: these lines belong to the worker's log and read as such.
log = logging.getLogger("renderq.worker")


def default_work_dir(name: str) -> str:
    """The default work folder of worker `name`: renderq/worker-<name> under the user's cache folder."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "renderq", f"worker-{name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `renderq worker` options; defaults come from RENDERQ_* environment variables (renderq.settings).

    A variable that cannot be parsed stops the command with a sentence naming it.
    """
    try:
        defaults = _defaults()
    except ValueError as exc:
        parser.error(str(exc))
    add_flags(parser, WORKER_FLAGS, defaults)
    parser.add_argument(
        "--allow-blend-python",
        action=argparse.BooleanOptionalAction,
        default=defaults["allow_blend_python"],
        help="RISKY: let Python stored in .blend files (scripts that run when the file opens, scripted drivers, "
        "the handlers they add) run on this machine, for tasks marked as needing it. That code runs as this "
        "worker's user and can read, change, delete or send anything that user can reach; anyone who may submit "
        "tasks to the farm can put it there. Only use it when you trust every submitter. Without it, tasks whose "
        "files hold Python wait for a worker that allows it (default: on when $RENDERQ_ALLOW_BLEND_PYTHON=1, else "
        "off)",
    )


def _defaults() -> dict[str, object]:
    """Each option's default: its RENDERQ_* variable parsed, else the built-in one (None: decided later)."""
    parsers: dict[str, Callable[[str], object]] = {
        "coordinator": str, "token": str, "token_file": str, "worker_name": str, "blender": str, "threads": int,
        "work_dir": str, "cache_size": _cache_size, "poll_seconds": float, "allow_blend_python": parse_bool,
        "ffmpeg": str,
    }
    env = {name: env_value(name, parse) for name, parse in parsers.items()}
    # --name's variable is RENDERQ_WORKER_NAME: RENDERQ_NAME would say nothing about whose name it is.
    return {**env, "name": env["worker_name"] or socket.gethostname(), "threads": env["threads"] or 0,
            "cache_size": env["cache_size"] or DEFAULT_CACHE_SIZE,
            "allow_blend_python": bool(env["allow_blend_python"])}


def _no_video_reason(ffmpeg: str | None) -> str:
    """Why this worker offers no videos, for its start-up line."""
    if not ffmpeg:
        return "none (no ffmpeg on PATH)"
    if ffmpeg.lower() == "none":
        return "none (switched off with --ffmpeg none)"
    return f"none ({ffmpeg} is no FFmpeg that runs)"


def _cache_size_arg(text: str) -> int:
    """--cache-size for argparse, which shows an ArgumentTypeError's own sentence."""
    try:
        return _cache_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cache_size(text: str) -> int:
    """A cache size in bytes, more than 0."""
    size = parse_size(text)
    if size <= 0:
        raise ValueError("the cache size must be more than 0")
    return size


# The value options; their defaults come from _defaults(). Each help names its RENDERQ_* variable.
WORKER_FLAGS = (
    Flag("--coordinator", str, "the coordinator's address, e.g. http://farm:5000, or a cluster's as a comma-separated "
         "list (the worker moves to the next when one stops answering; default: $RENDERQ_COORDINATOR)",
         metavar="URL"),
    Flag("--token", str, "the coordinator's worker token (default: $RENDERQ_TOKEN); it is in the coordinator's data "
         "dir, file worker_token. Prefer --token-file: a token on the command line is visible to other users of "
         "this machine", metavar="TOKEN"),
    Flag("--token-file", str, "read the worker token from FILE, e.g. a copy of the coordinator's worker_token "
         "(default: $RENDERQ_TOKEN_FILE)", metavar="FILE"),
    Flag("--name", str, "this worker's name, unique on the farm (default: $RENDERQ_WORKER_NAME, else the host name)"),
    Flag("--blender", str, "the Blender executable (default: $RENDERQ_BLENDER, else found on PATH)", metavar="PATH"),
    Flag("--threads", int, "render threads per frame; 0 lets the task or Blender decide (default: $RENDERQ_THREADS, "
         "else 0)", metavar="N"),
    Flag("--work-dir", str, "where to cache the tasks' files and render (default: $RENDERQ_WORK_DIR, else a folder "
         "per worker name in the user's cache folder)", metavar="DIR"),
    Flag("--cache-size", _cache_size_arg, "the most the cached files may take, e.g. 20G or 500M (K, M, G, T count "
         "in 1024s); the least recently used files are deleted beyond it, never those of a task being rendered "
         "(default: $RENDERQ_CACHE_SIZE, else 20G)", metavar="SIZE"),
    Flag("--poll-seconds", float, "how often an idle worker asks for work, which is also how long a new task may "
         "wait for it; shorter means more requests to the coordinator (default: $RENDERQ_POLL_SECONDS, else as the "
         "coordinator advises: a quarter of a second on a small farm, longer on a large one so that idle workers "
         f"together ask about 50 times a second; {DEFAULT_POLL_SECONDS:g} with a coordinator that gives no advice)",
         metavar="SECONDS"),
    Flag("--ffmpeg", str, "the FFmpeg executable that encodes tasks' videos; a worker without one renders frames but "
         "is given no video to encode; 'none' offers no videos (default: $RENDERQ_FFMPEG, else found on PATH)",
         metavar="PATH"),
)


def main(args: argparse.Namespace) -> int:
    """Run a worker until it is stopped; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if not args.coordinator:
        log.error("no coordinator given: use --coordinator URL or set RENDERQ_COORDINATOR")
        return 2
    name = (args.name or "").strip()
    if not (1 <= len(name) <= 64) or not is_safe_file_name(name):
        log.error("%r is not a usable worker name (1-64 characters, no '/', '\\', '..' or NUL)", args.name)
        return 2
    if args.threads < 0:
        log.error("--threads must be 0 or more, not %d", args.threads)
        return 2
    if args.poll_seconds is not None and not (math.isfinite(args.poll_seconds) and 0.05 <= args.poll_seconds <= 3600):
        log.error("--poll-seconds must be between 0.05 and 3600, not %g", args.poll_seconds)
        return 2
    token = args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            log.error("cannot read the worker token from %s: %s", args.token_file, exc.strerror or exc)
            return 2
    try:
        client = CoordinatorClient(args.coordinator, token=token or None)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        blender = find_blender(args.blender)
        version = blender_version(blender)
    except SessionError as exc:
        log.error("cannot use Blender: %s", exc)
        return 2
    encoders = None if (args.ffmpeg or "").lower() == "none" else probe_ffmpeg(args.ffmpeg)
    work_dir = args.work_dir or default_work_dir(name)
    settings = WorkerSettings(
        name=name,
        work_dir=work_dir,
        blender=blender,
        blender_version=version,
        threads=args.threads,
        cache_size=args.cache_size,
        poll_seconds=args.poll_seconds,
        allow_python=args.allow_blend_python,
        ffmpeg=encoders.path if encoders else None,
        video_encoders=encoders.describe() if encoders else "",
    )
    try:
        agent = WorkerAgent(client, settings)
    except (OSError, CacheError) as exc:
        log.error("cannot use the work folder %s: %s", work_dir, exc)
        return 2
    if args.allow_blend_python:
        log.warning(
            "Python stored in .blend files will run on this machine for tasks that need it "
            "(--allow-blend-python): only do this when you trust everyone who submits tasks"
        )
    log.info(
        "worker %s: Blender %s at %s, work folder %s, cache limit %s",
        name, version, blender, work_dir, format_size(args.cache_size),
    )
    log.info("video: %s", encoders.describe() if encoders else _no_video_reason(args.ffmpeg))
    agent.install_signal_handlers()
    return agent.run()
