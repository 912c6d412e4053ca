"""Serving with several processes on one listening socket, so one coordinator uses all the cores of its machine.

One Python process runs its Python on one core at a time. With `--processes N` the coordinator's first process
holds the data dir's lock and the listening socket, then starts N serving processes that share that socket (the
kernel hands each new connection to one of them) and the data dir. Everything the farm promises lives in the store
and holds across processes as across threads: a claim is a conditional UPDATE inside a write transaction, every
report is fenced by its lease, and each process's turns commit as one group. What one process keeps in memory only
is a cache or a convenience: the status page's feed (its versions carry the process's own tag, see live.py), the
ETA's cache, an upload's reservation (a submit gives its files a new grace period, so another process's sweep
leaves them alone). The work that should run once at a time (the lease reaper, the WAL's checkpoints and the sweep
for unused files) runs in the first serving process only.

The first process restarts a serving process that dies, and passes SIGINT and SIGTERM on to all of them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

__all__ = ["serve_in_processes"]

log = logging.getLogger(__name__)

# A serving process that dies this soon after it started is not restarted: it would only die again.
STARTUP_SECONDS = 5.0


def serve_in_processes(count: int, listener: socket.socket, serve_one: Callable[[int, Callable[[], None]], int]
                       ) -> int:
    """Run `serve_one(index, ready)` in `count` forked processes sharing `listener` until SIGINT or SIGTERM;
    returns the exit code. The first process starts alone and calls `ready()` once its app is made (the data dir
    migrated, its tokens written), then the others start. Refused (ValueError) where processes cannot be forked
    (Windows)."""
    if not hasattr(os, "fork"):
        raise ValueError("--processes above 1 needs a system that can fork processes (Linux, macOS)")
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal_quietly(pid, signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        _start(0, listener, serve_one, children, wait_ready=True)
        for index in range(1, count):
            _start(index, listener, serve_one, children)
        status = 0
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index, started = children.pop(pid, (-1, 0.0))
            code = os.waitstatus_to_exitcode(wait_status)
            if index < 0 or stopping:
                continue
            if time.monotonic() - started < STARTUP_SECONDS:
                log.error("serving process %d failed at start (exit %d); stopping the others", index, code)
                stop(signal.SIGTERM, None)
                status = 1
                continue
            log.error("serving process %d ended (exit %d); starting it again", index, code)
            _start(index, listener, serve_one, children)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start(index: int, listener: socket.socket, serve_one: Callable[[int, Callable[[], None]], int],
           children: dict[int, tuple[int, float]], wait_ready: bool = False) -> None:
    """Fork serving process `index`; in the child, serve and exit with its code. With `wait_ready`, return only
    once the child said it is ready (or ended)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            code = serve_one(index, lambda: _say_ready(write_end))
        except BaseException:  # whatever ends the child, it must not return into the parent's code
            log.exception("serving process %d failed", index)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    children[pid] = (index, time.monotonic())
    if wait_ready:
        os.read(read_end, 1)  # a byte when ready; end of file when the child ended first
    os.close(read_end)


def _say_ready(write_end: int) -> None:
    try:
        os.write(write_end, b"r")
        os.close(write_end)
    except OSError:
        return  # already said


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return
