"""The `renderq worker` command: its options (with defaults from RENDERQ_* environment variables) and `main`,
which checks them, builds the worker's settings and runs a WorkerAgent.

This module sits above the worker: it imports the agent, and nothing in worker/ imports it."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import socket
import sys
from collections.abc import Callable

from renderq.capabilities import DEVICE_TYPES, parse_tags
from renderq.http_client import CoordinatorClient
from renderq.paths import is_safe_file_name
from renderq.settings import Flag, add_flags, env_value, parse_bool
from renderq.units import parse_size
from worker.agent import WorkerAgent
from worker.blender_session import BlenderSession, SessionError, blender_version, find_blender
from worker.cache import DEFAULT_CACHE_SIZE, CacheError, format_size
from worker.encode import probe_ffmpeg
from worker.probe import Capabilities, ProbeError, probe
from worker.settings import DEFAULT_POLL_SECONDS, WorkerSettings
from worker.virtual_display import DisplaySession, find_xvfb

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
    parser.add_argument("--gpu", type=_gpu_index, action="append", default=None, metavar="N",
                        help="with a GPU --device, use only the device at index N of that type (0 is the first "
                        "Blender lists); repeat for several (default: $RENDERQ_GPU, e.g. 0,1, else all of them)")
    parser.add_argument("--tag", action="append", default=None, metavar="NAME",
                        help="a tag of this worker (e.g. gpu, lighting): tasks that require tags go only to workers "
                        "with all of them; repeat for several (default: $RENDERQ_TAGS, e.g. gpu,lighting). An "
                        "admin's tags, set on the status page, replace these")
    parser.set_defaults(gpu_default=defaults["gpu"], tag_default=defaults["tags"])


def _defaults() -> dict[str, object]:
    """Each option's default: its RENDERQ_* variable parsed, else the built-in one (None: decided later)."""
    parsers: dict[str, Callable[[str], object]] = {
        "coordinator": str, "token": str, "token_file": str, "worker_name": str, "blender": str, "threads": int,
        "work_dir": str, "cache_size": _cache_size, "poll_seconds": float, "allow_blend_python": parse_bool,
        "device": _device_type, "gpu": _gpu_list, "tags": lambda text: parse_tags([text]), "ffmpeg": str,
    }
    env = {name: env_value(name, parse) for name, parse in parsers.items()}
    # --name's variable is RENDERQ_WORKER_NAME: RENDERQ_NAME would say nothing about whose name it is.
    return {**env, "name": env["worker_name"] or socket.gethostname(), "threads": env["threads"] or 0,
            "cache_size": env["cache_size"] or DEFAULT_CACHE_SIZE,
            "allow_blend_python": bool(env["allow_blend_python"]), "device": env["device"],
            "gpu": env["gpu"] or [], "tags": env["tags"] or []}


def _device_type(text: str) -> str:
    """A Cycles device type for --device, in capitals."""
    value = text.strip().upper()
    if value not in DEVICE_TYPES:
        raise ValueError(f"{text!r} is not a device type; use one of {', '.join(DEVICE_TYPES)}")
    return value


def _device_type_arg(text: str) -> str:
    """--device for argparse."""
    try:
        return _device_type(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gpu_index(text: str) -> int:
    """--gpu for argparse: an index from 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device index (0, 1, ...)")
    return value


def _gpu_list(text: str) -> list[int]:
    """$RENDERQ_GPU: indexes separated by commas."""
    try:
        return [_gpu_index(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def _with_video(found: Capabilities, ffmpeg: str | None) -> Capabilities:
    """The probe's result with what the worker's FFmpeg encodes (`ffmpeg`: --ffmpeg; 'none' switches it off), or
    why it offers no videos."""
    encoders = None if (ffmpeg or "").lower() == "none" else probe_ffmpeg(ffmpeg)
    if encoders is not None:
        return dataclasses.replace(found, ffmpeg=encoders.path, video_encoders=encoders.describe())
    if not ffmpeg:
        reason = "no ffmpeg on PATH"
    elif ffmpeg.lower() == "none":
        reason = "switched off with --ffmpeg none"
    else:
        reason = f"{ffmpeg} is no FFmpeg that runs"
    return dataclasses.replace(found, no_video_reason=reason)


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
    Flag("--device", _device_type_arg, "render Cycles on this device type only: CPU, CUDA, OPTIX, HIP, ONEAPI or METAL "
         "(every device of that type Blender sees, or those given with --gpu); the worker refuses to start when "
         "Blender sees none (default: $RENDERQ_DEVICE, else as Blender's preferences say)", metavar="TYPE"),
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
    try:
        tags, device, gpus = _offer_options(args)
        found = probe(blender, device, gpus, hidden_values=(token,) if token else ())
    except (ValueError, ProbeError) as exc:
        log.error("%s", exc)
        return 2
    found = _with_video(found, args.ffmpeg)
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
        offered=found.registration(),
        tags=tags,
        ffmpeg=found.ffmpeg,
    )
    try:
        agent = WorkerAgent(client, settings, session_factory=_session_factory(found, device, gpus))
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
    for line in (*found.summary(), "tags: " + (", ".join(tags) or "none")):
        log.info("%s", line)
    agent.install_signal_handlers()
    return agent.run()


def _offer_options(args: argparse.Namespace) -> tuple[tuple[str, ...], str, list[int]]:
    """(tags, device type, GPU indexes) from the flags or their variables; ValueError with a sentence."""
    try:
        tags = tuple(parse_tags(args.tag if args.tag is not None else args.tag_default))
    except ValueError as exc:
        raise ValueError(f"--tag: {exc}") from None
    gpus = args.gpu if args.gpu is not None else args.gpu_default
    device = args.device or ""
    if gpus and device in ("", "CPU"):
        raise ValueError(f"--gpu needs a GPU --device ({', '.join(DEVICE_TYPES[1:])})")
    return tags, device, gpus


def _session_factory(found: Capabilities, device_type: str, gpus: list[int]) -> Callable[..., BlenderSession]:
    """Blender sessions with the worker's devices enabled, on a virtual display when the probe needed one."""
    device_args = [device_type, *[part for gpu in gpus for part in ("--gpu", str(gpu))]] if device_type else []
    device_args = ["--device", *device_args] if device_args else []
    xvfb = find_xvfb() if found.virtual_display else None
    if xvfb:
        return functools.partial(DisplaySession, xvfb=xvfb, device_args=device_args)
    return functools.partial(BlenderSession, device_args=device_args)
