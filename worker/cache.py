"""The worker's local files: a size-limited cache of files keyed by SHA-256, and one tree per task.

Layout under the cache root:

    files/<sha256>            every file this worker downloaded, kept across tasks until evicted (LRU)
    tasks/<task_id>/          the task's tree (its manifest's paths), hard-linked from files/ where possible
    output/<task_id>/         the frames Blender writes for the task, removed once uploaded

A task is a tree of files (relative POSIX path -> SHA-256, size) with a main .blend inside it. Blender opens the main
file inside the tree, so `//` paths (and the `_outside_project/...` paths of packed projects) resolve inside it.
Outputs live outside the task folder so that no file of the tree can collide with them.

Last use of a cached file is its modification time: it is set to "now" whenever a task uses the file or lets go of
it, so the least-recently-used order survives a restart of the worker without an index file that could go stale.
Files used by a task currently materialized are never evicted. Cached files are made read-only, because a tree's
hard link is the very same file: a scene that wrote into one would change the cache entry.

Nothing here writes outside the cache root: manifest paths are checked with the path rule shared with the
coordinator (renderq.paths: no `..`, no absolute paths, no drive letters or backslashes), and a symbolic link
found where the cache expects its own folders or files is never followed; it is refused (a folder) or replaced (a
cached file).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping

from renderq.local_files import file_sha256, remove_quietly
from renderq.paths import check_path_set, check_relative_path
from renderq.platform import hold_lock_file, link_or_copy
from renderq.private_files import PRIVATE_FOLDER, make_private

# The kernel's one size grammar and byte format; kept under the names the worker has always imported from here.
from renderq.units import format_bytes as format_size
from renderq.units import parse_size

__all__ = [
    "BlendCache",
    "CacheEntry",
    "CacheError",
    "DEFAULT_CACHE_SIZE",
    "TaskTree",
    "TreeFile",
    "check_real_folder",
    "check_tree_path",
    "choose_evictions",
    "format_size",
    "normalize_manifest",
    "parse_size",
]

log = logging.getLogger("renderq.worker.cache")

DEFAULT_CACHE_SIZE = 20 * 1024**3
# The file under the cache root whose lock tells that a worker uses the root.
ROOT_LOCK_NAME = "worker.lock"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CacheError(Exception):
    """A cache request that cannot be honoured: bad hash or path, unsafe tree, download that does not match."""


# -- manifests ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeFile:
    """One file of a task's tree: where it goes, its content hash, and its size when the manifest gives it."""

    path: str
    sha256: str
    size: int | None = None


def check_tree_path(path: Any) -> str:
    """Return `path` if it passes the shared path rule (renderq.paths: relative, '/' separators, no `..`, drive
    letter, reserved or invisible name), else raise CacheError."""
    try:
        return check_relative_path(path)
    except ValueError as error:
        raise CacheError(str(error)) from None


def check_real_folder(path: str, create: bool = False) -> str:
    """Return `path` if it is a folder and not a symbolic link (created first when `create`), else raise CacheError.

    A link planted where the cache keeps its own folders would make it write wherever the link points.
    """
    if create:
        try:
            os.mkdir(path, PRIVATE_FOLDER)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise CacheError(f"the folder {path} does not exist") from None
    if stat.S_ISLNK(info.st_mode):
        raise CacheError(f"{path} is a symbolic link; refusing to follow it out of the worker's folder")
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"{path} is not a folder; refusing to use it")
    return path


def _check_sha256(sha256: Any) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
        raise CacheError(f"{sha256!r} is not a SHA-256 hash")
    return sha256.lower()


def normalize_manifest(files: Iterable[Mapping[str, Any] | TreeFile], main_file: str) -> dict[str, TreeFile]:
    """Check a manifest's file list and return it keyed by path.

    `files` holds {"path", "sha256", "size"} objects as in GET /task_manifest (or TreeFile). A path listed twice
    with the same hash counts once; two hashes for one path, a file where another needs a folder, or a main file that
    is not in the list are errors.
    """
    tree: dict[str, TreeFile] = {}
    sizes: dict[str, int] = {}
    for item in files:
        if isinstance(item, TreeFile):
            raw: tuple[object, object, object] = (item.path, item.sha256, item.size)
        elif isinstance(item, Mapping):
            raw = (item.get("path"), item.get("sha256"), item.get("size"))
        else:
            raise CacheError(f"{item!r} is not a manifest entry")
        raw_path, raw_sha, raw_size = raw
        path = check_tree_path(raw_path)
        sha256 = _check_sha256(raw_sha)
        size = None
        if raw_size is not None:
            if isinstance(raw_size, bool) or not isinstance(raw_size, int) or raw_size < 0:
                raise CacheError(f"the size of {path!r} is {raw_size!r}, not a byte count")
            size = raw_size
            if sizes.setdefault(sha256, size) != size:
                raise CacheError(f"the manifest gives the file {sha256[:12]} two different sizes")
        known = tree.get(path)
        if known is not None and known.sha256 != sha256:
            raise CacheError(f"the manifest maps {path!r} to two different files")
        tree[path] = TreeFile(path, sha256, size)
    try:
        # "a" as a file and "a/b", or "a.png" and "A.PNG", cannot both exist on every file system.
        check_path_set(tree)
    except ValueError as error:
        raise CacheError(f"the manifest cannot be written here: {error}") from None
    check_tree_path(main_file)
    if main_file not in tree:
        raise CacheError(f"the main file {main_file!r} is not in the task's manifest")
    # A size given for a hash under any of its paths holds for all of them.
    return {path: TreeFile(path, item.sha256, sizes.get(item.sha256)) for path, item in tree.items()}


# -- eviction -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One cached file as eviction sees it."""

    sha256: str
    size: int
    last_used: float


def choose_evictions(
    entries: Iterable[CacheEntry], limit: int, pinned: Collection[str] = (), incoming: int = 0
) -> list[CacheEntry]:
    """The entries to delete, least recently used first, so that what is kept plus `incoming` bytes fits `limit`.

    Pinned hashes are never chosen, so the result may not be enough to get under the limit.
    """
    entries = list(entries)
    total = sum(entry.size for entry in entries) + incoming
    chosen: list[CacheEntry] = []
    # The hash breaks ties so the choice does not depend on the order the folder was listed in.
    for entry in sorted(entries, key=lambda entry: (entry.last_used, entry.sha256)):
        if total <= limit:
            break
        if entry.sha256 in pinned:
            continue
        chosen.append(entry)
        total -= entry.size
    return chosen


# -- the cache ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskTree:
    """A materialized task tree and what building it cost."""

    task_id: int
    root: str  # the task's folder
    main_path: str  # absolute path of the main .blend inside `root`
    files: int  # paths in the tree
    total_bytes: int  # bytes of its distinct files
    downloaded_files: int  # distinct files that had to be downloaded
    downloaded_bytes: int
    cached_files: int  # distinct files already in the cache
    cached_bytes: int


class BlendCache:
    """Downloaded files keyed by SHA-256 under a size limit, plus per-task trees and output folders.

    `max_bytes` is the limit; `clock` gives the "last used" times (a fake clock in tests). Safe to use from several
    threads of one process; several worker processes must use different roots.
    """

    def __init__(
        self, root: str, max_bytes: int = DEFAULT_CACHE_SIZE, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("the cache size must be more than 0 bytes")
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self._clock = clock
        self._files_dir = os.path.join(self.root, "files")
        self._tasks_dir = os.path.join(self.root, "tasks")
        self._output_dir = os.path.join(self.root, "output")
        os.makedirs(self.root, mode=PRIVATE_FOLDER, exist_ok=True)
        # The studio's .blend files and frames are the owner's only, also in a work dir made by an older version:
        # with the root and its folders 0700 no other user of the machine reaches any file below them.
        make_private(os.path.realpath(self.root), PRIVATE_FOLDER)
        # Before touching anything below the root: a second worker here would evict, delete and half-download the
        # first one's files under its feet. Held until close() (or the process ends, however it ends).
        self._root_lock = hold_lock_file(os.path.join(self.root, ROOT_LOCK_NAME))
        if self._root_lock is None:
            raise CacheError(f"another worker is already using the work folder {self.root}; a work folder cannot "
                             "be shared: give each worker its own (--work-dir)")
        try:
            for folder in (self._files_dir, self._tasks_dir, self._output_dir):
                make_private(check_real_folder(folder, create=True), PRIVATE_FOLDER)
        except BaseException:
            self.close()
            raise
        self._lock = threading.RLock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        # task id -> hashes its tree uses; these are never evicted.
        self._live: dict[int, frozenset[str]] = {}
        self._remove_partial_downloads()
        self._adopt_legacy_blends()

    def close(self) -> None:
        """Let go of the cache root, so another BlendCache (a restarted worker) may use it."""
        if self._root_lock is not None:
            self._root_lock.close()
            self._root_lock = None

    # -- cached files -------------------------------------------------------------------------------------------

    def path_for(self, sha256: str) -> str | None:
        """The cached file with this hash, or None when it has not been downloaded (a link there does not count)."""
        path = self._file_path(sha256)
        return path if _is_plain_file(path) else None

    def fetch(self, sha256: str, download: Callable[[str], None], size: int | None = None) -> str:
        """Return the cached file for `sha256`, calling `download(path)` to write it there first if needed.

        Only one thread downloads a given hash; the others wait for it. The file appears under its final name only
        after its hash was checked, so an interrupted download never poisons the cache. With `size`, a cached file of
        another size counts as damaged and is downloaded again.
        """
        final_path = self._file_path(sha256)
        sha256 = sha256.lower()
        check_real_folder(self._files_dir)
        with self._lock_for(sha256):
            if os.path.islink(final_path):
                log.warning("cached file %s is a symbolic link; removing it and downloading the file", sha256[:12])
                remove_quietly(final_path)
            if os.path.isfile(final_path):
                if size is None or os.path.getsize(final_path) == size:
                    return final_path
                log.warning("cached file %s has the wrong size; downloading it again", sha256[:12])
                remove_quietly(final_path)
            handle, temp_path = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=self._files_dir)
            os.close(handle)
            try:
                download(temp_path)
                actual = file_sha256(temp_path)
                if actual != sha256:
                    raise CacheError(f"the downloaded file has SHA-256 {actual}, not {sha256}")
                actual_size = os.path.getsize(temp_path)
                if size is not None and actual_size != size:
                    raise CacheError(f"the file {sha256[:12]} has {actual_size} bytes, not the {size} of the manifest")
                os.chmod(temp_path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.replace(temp_path, final_path)
            finally:
                remove_quietly(temp_path)
            self._touch(final_path)
            log.debug("cached file %s (%d bytes)", sha256[:12], actual_size)
            return final_path

    def _has(self, sha256: str, size: int | None) -> bool:
        """Whether the cache holds the file (of `size` bytes, when given)."""
        path = self.path_for(sha256)
        return path is not None and (size is None or os.path.getsize(path) == size)

    def entries(self) -> list[CacheEntry]:
        """Every cached file with its size and last use; none when the files folder is not a real folder."""
        found: list[CacheEntry] = []
        if not self._own_folders([self._files_dir]):
            return found
        with os.scandir(self._files_dir) as listing:
            for item in listing:
                if not _SHA256_RE.match(item.name):
                    continue  # downloads in progress
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(CacheEntry(item.name, info.st_size, info.st_mtime))
        return found

    def enforce_limit(self, incoming: int = 0) -> int:
        """Evict least recently used files not in use until the cache plus `incoming` bytes fits the limit.

        Returns the bytes the cache would hold with `incoming` added; more than the limit when live tasks need it.
        """
        with self._lock:
            pinned = self._pinned()
            entries = self.entries()
            total = sum(entry.size for entry in entries) + incoming
            for entry in choose_evictions(entries, self.max_bytes, pinned, incoming):
                with self._lock_for(entry.sha256):
                    remove_quietly(self._file_path(entry.sha256))
                total -= entry.size
                log.info("evicted file %s (%s) from the cache", entry.sha256[:12], format_size(entry.size))
            return total

    # -- task trees ---------------------------------------------------------------------------------------------

    def task_dir(self, task_id: int) -> str:
        """The folder the task's tree is built in (not created here)."""
        return os.path.join(self._tasks_dir, _task_name(task_id))

    def output_dir(self, task_id: int) -> str:
        """The folder Blender renders the task's frames into (created if missing); a link there is refused."""
        check_real_folder(self._output_dir)
        return check_real_folder(os.path.join(self._output_dir, _task_name(task_id)), create=True)

    def check_output_file(self, task_id: int, path: str) -> str:
        """Return `path` if it is a plain file (not a link) directly in the task's output folder, else raise."""
        folder = os.path.join(self._output_dir, _task_name(task_id))
        if os.path.dirname(os.path.abspath(path)) != folder:
            raise CacheError(f"the rendered file {path} is not in the task's output folder; refusing to send it")
        if not _is_plain_file(path):
            raise CacheError(f"the rendered file {path} is a symbolic link or not a file; refusing to send it")
        return path

    def live_tasks(self) -> list[int]:
        """The tasks whose trees are materialized now (their files are never evicted)."""
        with self._lock:
            return sorted(self._live)

    def materialize_tree(
        self,
        task_id: int,
        files: Iterable[Mapping[str, Any] | TreeFile],
        main_file: str,
        download: Callable[[str, str], None],
    ) -> TaskTree:
        """Build the task's tree from the cache and return it; `main_path` is the main .blend to open.

        `download(sha256, dest_path)` is called once per hash the cache lacks. Files are hard-linked from the cache
        (copied where the file system cannot link). A tree this cache built before for the task is rebuilt; anything
        else already in the task's folder is refused, since building over it could follow a symlink out.
        """
        tree = normalize_manifest(files, main_file)
        name = _task_name(task_id)
        for own in (self._files_dir, self._tasks_dir):
            check_real_folder(own)
        folder = self.task_dir(task_id)
        sizes = {entry.sha256: entry.size for entry in tree.values()}
        with self._lock:
            if int(name) in self._live:
                _remove_tree(folder)
            # Pinned before any download, so making room for one file can never evict another of this task.
            self._live[int(name)] = frozenset(sizes)
        try:
            return self._materialize(int(name), folder, tree, sizes, main_file, download)
        except BaseException:
            self.remove_task(int(name))
            raise

    def _materialize(
        self,
        task_id: int,
        folder: str,
        tree: dict[str, TreeFile],
        sizes: dict[str, int | None],
        main_file: str,
        download: Callable[[str, str], None],
    ) -> TaskTree:
        missing = {sha256 for sha256, size in sizes.items() if not self._has(sha256, size)}
        projected = self.enforce_limit(incoming=sum(sizes[sha256] or 0 for sha256 in missing))
        if projected > self.max_bytes:
            log.warning(
                "task %s: the cache will hold %s, over its limit of %s, because files of tasks in use are never "
                "evicted; rendering it anyway",
                task_id, format_size(projected), format_size(self.max_bytes),
            )
        total_bytes = downloaded_bytes = 0
        for sha256, size in sizes.items():
            path = self.fetch(sha256, functools.partial(download, sha256), size)
            file_size = os.path.getsize(path)
            total_bytes += file_size
            if sha256 in missing:
                downloaded_bytes += file_size
            self._touch(path)
        if missing:
            # Sizes the manifest did not give are known only now.
            self.enforce_limit()
        self._build(task_id, folder, tree)
        return TaskTree(
            task_id=task_id,
            root=folder,
            main_path=os.path.join(folder, *main_file.split("/")),
            files=len(tree),
            total_bytes=total_bytes,
            downloaded_files=len(missing),
            downloaded_bytes=downloaded_bytes,
            cached_files=len(sizes) - len(missing),
            cached_bytes=total_bytes - downloaded_bytes,
        )

    def _build(self, task_id: int, folder: str, tree: dict[str, TreeFile]) -> None:
        """Create the tree's folders and files; refuse anything already there that this build did not create."""
        check_real_folder(self._tasks_dir)
        try:
            os.mkdir(folder, PRIVATE_FOLDER)
        except FileExistsError:
            info = os.lstat(folder)
            if stat.S_ISLNK(info.st_mode):
                raise CacheError(f"the folder of task {task_id} is a symbolic link; refusing to follow it") from None
            if not stat.S_ISDIR(info.st_mode) or os.listdir(folder):
                raise CacheError(
                    f"the folder of task {task_id} already holds files; refusing to build over them"
                ) from None
        made = {""}
        for path in sorted(tree):
            parts = path.split("/")
            for depth in range(1, len(parts)):
                sub = "/".join(parts[:depth])
                if sub in made:
                    continue
                try:
                    os.mkdir(os.path.join(folder, *parts[:depth]), PRIVATE_FOLDER)
                except FileExistsError:
                    raise CacheError(f"{sub!r} already exists in the folder of task {task_id}") from None
                made.add(sub)
            source = self.path_for(tree[path].sha256)
            if source is None:
                raise CacheError(f"the file {tree[path].sha256[:12]} left the cache while task {task_id} was built")
            _place(source, os.path.join(folder, *parts))

    def remove_task(self, task_id: int) -> None:
        """Delete the task's tree and output folder and stop protecting its files; the cached files stay."""
        name = _task_name(task_id)
        with self._lock:
            hashes = self._live.pop(int(name), frozenset())
            for sha256 in hashes:
                # The task used them until now: that is their last use, not when it started.
                path = self.path_for(sha256)
                if path is not None:
                    self._touch(path)
            for parent in self._own_folders((self._tasks_dir, self._output_dir)):
                _remove_tree(os.path.join(parent, name))
            if hashes:
                self.enforce_limit()

    def clear_tasks(self) -> None:
        """Delete every task's tree and output folder, e.g. those a crashed worker left behind; then fit the limit."""
        with self._lock:
            self._live.clear()
            for parent in self._own_folders((self._tasks_dir, self._output_dir)):
                for entry in os.listdir(parent):
                    _remove_tree(os.path.join(parent, entry))
            self.enforce_limit()

    # -- helpers ------------------------------------------------------------------------------------------------

    def _own_folders(self, folders: Iterable[str]) -> list[str]:
        """Those of the cache's own folders that are real folders; a link is left alone (never emptied) and logged."""
        usable = []
        for folder in folders:
            try:
                usable.append(check_real_folder(folder))
            except CacheError as exc:
                log.error("%s", exc)
        return usable

    def _file_path(self, sha256: str) -> str:
        return os.path.join(self._files_dir, _check_sha256(sha256))

    def _lock_for(self, sha256: str) -> threading.Lock:
        with self._lock:
            return self._fetch_locks.setdefault(sha256, threading.Lock())

    def _pinned(self) -> set[str]:
        with self._lock:
            return set().union(*self._live.values())

    def _touch(self, path: str) -> None:
        now = self._clock()
        try:
            if os.path.islink(path):
                return  # the time of whatever it points to is not ours to change
            os.utime(path, (now, now))
        except OSError as exc:
            log.debug("could not mark %s used: %s", path, exc)

    def _remove_partial_downloads(self) -> None:
        # Left by a worker that died mid-download; nothing else of this root is running (one process per root).
        for entry in os.listdir(self._files_dir):
            if entry.startswith(".download-"):
                remove_quietly(os.path.join(self._files_dir, entry))

    def _adopt_legacy_blends(self) -> None:
        """Move .blend files cached by earlier versions (blends/<sha256>.blend) into files/, under the limit."""
        legacy = os.path.join(self.root, "blends")
        if not os.path.isdir(legacy) or os.path.islink(legacy):
            return
        for entry in os.listdir(legacy):
            sha256, extension = os.path.splitext(entry)
            if extension == ".blend" and _SHA256_RE.match(sha256) and _is_plain_file(os.path.join(legacy, entry)):
                try:
                    os.chmod(os.path.join(legacy, entry), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                    os.replace(os.path.join(legacy, entry), os.path.join(self._files_dir, sha256))
                except OSError:
                    pass
        shutil.rmtree(legacy, ignore_errors=True)


def _place(source: str, target: str) -> None:
    """Hard-link `source` to `target`, or copy it where linking fails; `target` must not exist."""
    try:
        link_or_copy(source, target)
    except FileExistsError:
        raise CacheError(f"{target} already exists; refusing to build over it") from None


def _is_plain_file(path: str) -> bool:
    """A regular file itself, not a symbolic link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove_tree(path: str) -> None:
    """Delete a folder and everything in it, or the file or symlink at `path`; symlinks are never followed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_quietly(path)


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

