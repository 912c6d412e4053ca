"""What differs between Linux, macOS and Windows, in one place: file locks, child processes, hard links.

Standard library only. Each facility has the native way where the system has one and a portable path elsewhere;
`system` arguments (default: this machine's) let a test run a branch that is not this machine's own where the
branch can run here at all.

- Exclusive file locks: fcntl.flock on POSIX, msvcrt.locking on Windows.
- A child that dies with its parent: Linux asks the kernel (PR_SET_PDEATHSIG); elsewhere no call does that, so the
  child must notice on its own (Blender's frame script returns when its connection to the worker closes, which the
  death of the worker does).
- Stopping a child: its own process group gets SIGINT, then SIGKILL, on POSIX; on Windows its own process group gets
  CTRL_BREAK_EVENT, then TerminateProcess.
- Hard links, with a copy where the file system (or Windows without the right) refuses them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

# "linux", "darwin", "win32" or another sys.platform value.
SYSTEM = "linux" if sys.platform.startswith("linux") else sys.platform
_COPY_BLOCK = 1024 * 1024
_PR_SET_PDEATHSIG = 1


class LockHeld(OSError):
    """Another process holds the lock."""


# -- file locks -------------------------------------------------------------------------------------------------------


def lock_file(handle: IO[Any], system: str = SYSTEM) -> None:
    """Take an exclusive lock on an open file without waiting; LockHeld when another process has it.

    The lock lasts until the handle is closed (or the process ends, however it ends).
    """
    try:
        if system == "win32":
            import msvcrt

            handle.seek(0)
            # One byte at offset 0, whatever the file's length: every locker locks the same byte.
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        raise LockHeld(error.errno, f"{getattr(handle, 'name', 'the file')} is locked by another process") from error


class ProcessTurns:
    """A lock the processes sharing a file take in turn, waiting in the kernel (no polling): `take()` blocks until
    no other process holds it, `give()` lets the next one in. One per process: its threads take turns by other
    means. Where a process cannot wait on a file lock (Windows), taking it does nothing."""

    def __init__(self, path: str, system: str = SYSTEM) -> None:
        self._handle = open(path, "a+", encoding="utf-8") if system != "win32" else None

    def take(self) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_EX)

    def give(self) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)


def hold_lock_file(path: str, system: str = SYSTEM) -> IO[str] | None:
    """Open (or create) `path`, lock it and write this process's id into it; the open file, which keeps the lock
    while it stays open, or None when another process holds it."""
    handle = open(path, "a+", encoding="utf-8")
    try:
        lock_file(handle, system)
    except LockHeld:
        handle.close()
        return None
    if system != "win32":  # the locked byte cannot be rewritten on Windows; the pid is a courtesy for people
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


# -- hard links -------------------------------------------------------------------------------------------------------


def link_or_copy(source: str, target: str, *, link: bool = True) -> bool:
    """Hard-link `source` to `target`, or copy it where linking fails (another file system, too many links, no
    right to link). `target` must not exist: FileExistsError otherwise, and a link found there is never followed.
    Returns whether it linked. link=False copies (what a system without hard links gets)."""
    if link:
        try:
            os.link(source, target)
            return True
        except FileExistsError:
            raise
        except (OSError, NotImplementedError):
            pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    handle = os.open(target, flags, 0o644)
    with open(source, "rb") as stream, os.fdopen(handle, "wb") as out:
        shutil.copyfileobj(stream, out, _COPY_BLOCK)
    return False


# -- child processes --------------------------------------------------------------------------------------------------


def own_group_args(system: str = SYSTEM) -> dict[str, Any]:
    """Popen arguments that put the child in its own process group, so a Ctrl-C in the parent's terminal does not
    reach it and stop_child can signal everything it started."""
    if system == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    return {"start_new_session": True}


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _load_prctl() -> Callable[..., int] | None:
    if SYSTEM != "linux":
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def dies_with_parent(system: str = SYSTEM) -> bool:
    """Whether spawn_tied's children are killed by the system when this process dies (Linux, with prctl)."""
    return system == "linux" and _prctl is not None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGKILL the child when the parent dies. Runs between fork and exec, so it
    only calls what was bound beforehand."""
    prctl, getppid, kill, getpid, sigkill = _prctl, os.getppid, os.kill, os.getpid, signal.SIGKILL

    def preexec() -> None:
        assert prctl is not None
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent_pid:  # the parent died before the request took effect
            kill(getpid(), sigkill)

    return preexec


def spawn_tied(command: list[str], system: str = SYSTEM, **popen_args: Any) -> subprocess.Popen:
    """Popen in its own process group, with the child killed when this process dies where the system can do that
    (see dies_with_parent); elsewhere a plain Popen, and the child must notice its parent is gone by itself.

    Linux sends the death signal when the *thread* that forked the child ends, so the fork happens on one
    long-lived thread rather than on whichever (possibly short-lived) thread asks.
    """
    global _spawner
    popen_args = {**own_group_args(system), **popen_args}
    if not dies_with_parent(system):
        return subprocess.Popen(command, **popen_args)
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="child-spawner")
        spawner = _spawner
    preexec = _die_with_parent(os.getpid())
    return spawner.submit(lambda: subprocess.Popen(command, preexec_fn=preexec, **popen_args)).result()


def interrupt_child(proc: subprocess.Popen, system: str = SYSTEM) -> None:
    """Ask a child started with own_group_args to stop (Blender cancels a render and quits): SIGINT to its process
    group on POSIX, CTRL_BREAK_EVENT to it on Windows (a console program's Ctrl-C, which a new group ignores)."""
    if proc.poll() is not None:  # until Popen reaped the child, its pid (and group) cannot be reused
        return
    if system == "win32":
        _send(proc, getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
        return
    _signal_group(proc, signal.SIGINT)


def kill_child(proc: subprocess.Popen, system: str = SYSTEM) -> None:
    """Kill a child started with own_group_args now, and on POSIX everything in its process group."""
    if proc.poll() is not None:
        return
    if system == "win32":
        _send(proc, None)
        return
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError, AttributeError):
        _send(proc, sig)


def _send(proc: subprocess.Popen, sig: int | None) -> None:
    """proc.send_signal(sig), or proc.kill() for None, ignoring a child that is already gone."""
    try:
        if sig is None:
            proc.kill()
        else:
            proc.send_signal(sig)
    except OSError:
        pass
