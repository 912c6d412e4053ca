"""The worker's local files: .blend files cached by SHA-256, and one work folder per task.

Layout under the cache root:

    blends/<sha256>.blend     every .blend this worker downloaded, kept across tasks
    tasks/<task_id>/          the task's .blend under its own file name, so `//` paths resolve next to it
    output/<task_id>/         the frames Blender writes for the task, removed once uploaded

Outputs live outside the task folder so that no file of the scene (a later issue brings whole folder trees) can
collide with them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from typing import Callable

from renderq.http_client import file_sha256, safe_file_name

__all__ = ["BlendCache", "CacheError"]

log = logging.getLogger("renderq.worker.cache")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CacheError(Exception):
    """A cache request that cannot be honoured: bad hash, unsafe file name, download that does not match."""


class BlendCache:
    """Downloaded .blend files keyed by SHA-256, plus per-task work and output folders.

    Safe to use from several threads of one process; several worker processes must use different roots.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._blends_dir = os.path.join(self.root, "blends")
        self._tasks_dir = os.path.join(self.root, "tasks")
        self._output_dir = os.path.join(self.root, "output")
        for folder in (self._blends_dir, self._tasks_dir, self._output_dir):
            os.makedirs(folder, exist_ok=True)
        self._locks_guard = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}

    # -- cached .blend files ------------------------------------------------------------------------------------

    def path_for(self, sha256: str) -> str | None:
        """The cached file with this hash, or None when it has not been downloaded."""
        path = self._blend_path(sha256)
        return path if os.path.isfile(path) else None

    def fetch(self, sha256: str, download: Callable[[str], None]) -> str:
        """Return the cached file for `sha256`, calling `download(path)` to write it there first if needed.

        Only one thread downloads a given hash; the others wait for it. The file appears under its final name only
        after its hash was checked, so an interrupted download never poisons the cache.
        """
        final_path = self._blend_path(sha256)
        with self._lock_for(sha256.lower()):
            if os.path.isfile(final_path):
                return final_path
            handle, temp_path = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=self._blends_dir)
            os.close(handle)
            try:
                download(temp_path)
                actual = file_sha256(temp_path)
                if actual != sha256.lower():
                    raise CacheError(f"the downloaded .blend has SHA-256 {actual}, not {sha256}")
                os.replace(temp_path, final_path)
            finally:
                _remove_quietly(temp_path)
            log.info("cached .blend %s (%d bytes)", sha256[:12], os.path.getsize(final_path))
            return final_path

    # -- per-task folders ---------------------------------------------------------------------------------------

    def task_dir(self, task_id: int) -> str:
        """The task's work folder (created if missing); its .blend is placed here by `materialize`."""
        path = os.path.join(self._tasks_dir, _task_name(task_id))
        os.makedirs(path, exist_ok=True)
        return path

    def output_dir(self, task_id: int) -> str:
        """The folder Blender renders the task's frames into (created if missing)."""
        path = os.path.join(self._output_dir, _task_name(task_id))
        os.makedirs(path, exist_ok=True)
        return path

    def materialize(self, task_id: int, sha256: str, blend_filename: str) -> str:
        """Place the cached .blend into the task's folder as `blend_filename` and return its path.

        A hard link costs nothing; a copy is made where links are not possible (another file system). The cached
        file must have been fetched first.
        """
        if not safe_file_name(blend_filename):
            raise CacheError(f"{blend_filename!r} is not a safe .blend file name")
        source = self.path_for(sha256)
        if source is None:
            raise CacheError(f"no cached .blend with SHA-256 {sha256}")
        folder = self.task_dir(task_id)
        target = os.path.join(folder, blend_filename)
        if os.path.isfile(target) and _same_file(source, target):
            return target
        # Build under a temporary name and swap it in, so a half-copied file is never opened by Blender.
        temp_path = os.path.join(folder, f".materialize-{os.getpid()}-{threading.get_ident()}.part")
        _remove_quietly(temp_path)
        try:
            try:
                os.link(source, temp_path)
            except OSError:
                shutil.copyfile(source, temp_path)
            os.replace(temp_path, target)
        finally:
            _remove_quietly(temp_path)
        return target

    def remove_task(self, task_id: int) -> None:
        """Delete the task's work and output folders; the cached .blend stays."""
        name = _task_name(task_id)
        for parent in (self._tasks_dir, self._output_dir):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

    def clear_tasks(self) -> None:
        """Delete every task's work and output folders, e.g. those a crashed worker left behind."""
        for parent in (self._tasks_dir, self._output_dir):
            for entry in os.listdir(parent):
                path = os.path.join(parent, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    _remove_quietly(path)

    # -- helpers ------------------------------------------------------------------------------------------------

    def _blend_path(self, sha256: str) -> str:
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
            raise CacheError(f"{sha256!r} is not a SHA-256 hash")
        return os.path.join(self._blends_dir, sha256.lower() + ".blend")

    def _lock_for(self, sha256: str) -> threading.Lock:
        with self._locks_guard:
            return self._fetch_locks.setdefault(sha256, threading.Lock())


def _task_name(task_id: int) -> str:
    # Task ids are integers in the API; going through int() keeps anything else from naming a path.
    if isinstance(task_id, bool):
        raise CacheError(f"{task_id!r} is not a task id")
    try:
        number = int(task_id)
    except (TypeError, ValueError):
        raise CacheError(f"{task_id!r} is not a task id") from None
    if number < 0:
        raise CacheError(f"{task_id!r} is not a task id")
    return str(number)


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
