"""Content-addressed files on disk: stream in, hash while writing, verify, then publish atomically.

A stored file no task uses (an upload never submitted, a frame rendered again) is an orphan: once it is older than a
grace period it is deleted. One guard lock orders that against the submits that start to use a file: a submit
reserves its files before it checks they exist and until its task is stored, and a file is deleted only with the
guard held, when it is neither reserved nor referenced by a stored task. One coordinator serves a data dir (it
holds a lock on it), so an in-process lock is enough.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

from renderq.private_files import PRIVATE_FOLDER, make_private

from .errors import BadRequest, InsufficientStorage, PayloadTooLarge

CHUNK = 1024 * 1024
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PREFIX_PATTERN = re.compile(r"^[0-9a-f]{2}$")
# An orphan sweep looks at this many stored files at most per call (it goes on where the last one stopped), and asks
# the database about them this many at a time, with the guard held.
SWEEP_SCAN_LIMIT = 20_000
SWEEP_BATCH = 200

# Given hashes, returns those a stored task still uses (Store.referenced_blobs).
Referenced = Callable[[Sequence[str]], set[str]]

BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")  # plain, gzip, zstd


def is_sha256(text: str) -> bool:
    return bool(SHA256_PATTERN.match(text or ""))


def looks_like_blend(head: bytes) -> bool:
    """A .blend starts with 'BLENDER', or is gzip- or zstd-compressed."""
    return any(head.startswith(magic) for magic in BLEND_MAGICS)


class BlobStore:
    """Files named by their SHA-256 under root/ab/abcdef...; a partial upload is never visible."""

    def __init__(self, root: str, *, reserve_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        self.reserve_bytes = reserve_bytes
        self.incoming = os.path.join(root, "incoming")
        os.makedirs(self.incoming, mode=PRIVATE_FOLDER, exist_ok=True)
        self._make_folders_private()
        # Leftovers of uploads cut off by a crash are never referenced: clear them.
        for leftover in os.listdir(self.incoming):
            os.unlink(os.path.join(self.incoming, leftover))
        self._guard = threading.Lock()
        self._reserved: collections.Counter[str] = collections.Counter()
        self._sweep_cursor = ""

    def _make_folders_private(self) -> None:
        """Folders 0700, including those an older version made 0755: other local users then reach no stored file,
        whatever its own mode, without touching every file."""
        folders = [os.path.realpath(self.root), self.incoming]
        folders += [os.path.join(self.root, name) for name in os.listdir(self.root) if PREFIX_PATTERN.match(name)]
        for folder in folders:
            make_private(folder, PRIVATE_FOLDER)

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256[:2], sha256)

    def exists(self, sha256: str) -> bool:
        return is_sha256(sha256) and os.path.isfile(self.path(sha256))

    def check_space(self, incoming_bytes: int) -> None:
        """Refuse an upload that would leave less than the reserve free (InsufficientStorage, 507)."""
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.reserve_bytes:
            raise InsufficientStorage(
                f"the coordinator's disk is nearly full ({free // (1024 * 1024)} MiB free, "
                f"{self.reserve_bytes // (1024 * 1024)} MiB kept in reserve); free space or delete old tasks' files")

    def delete(self, sha256: str) -> int:
        """Remove a stored file whatever uses it; returns the bytes freed (0 if it was not there)."""
        return self._remove(sha256) or 0

    def _remove(self, sha256: str) -> int | None:
        """Unlink a stored file; its size, or None if it was not there."""
        if not is_sha256(sha256):
            return None
        path = self.path(sha256)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            return None
        return size

    @contextlib.contextmanager
    def reserved(self, hashes: Iterable[str]) -> Iterator[None]:
        """Keep these files from being deleted as unused while the block runs: a submit checks inside it that its
        files exist and stores its task (which then references them)."""
        held = collections.Counter(set(hashes))
        with self._guard:
            self._reserved.update(held)
        try:
            yield
        finally:
            with self._guard:
                self._reserved.subtract(held)
                for sha256 in held:
                    if self._reserved[sha256] <= 0:
                        del self._reserved[sha256]

    def touch(self, sha256: str) -> bool:
        """Whether the file is stored; if it is, its grace period as an orphan starts over, since a client was just
        told it need not upload it again and will submit a task using it."""
        if not is_sha256(sha256):
            return False
        with self._guard:
            try:
                os.utime(self.path(sha256))
            except FileNotFoundError:
                return False
        return True

    def delete_unreferenced(self, hashes: Iterable[str], referenced: Referenced) -> tuple[int, int]:
        """Delete those of the files that no stored task uses and no submit holds; returns (files, bytes) freed."""
        return self._delete_unused(sorted(set(hashes)), referenced, older_than=None)

    def sweep_orphans(self, older_than: float, referenced: Referenced,
                      scan_limit: int = SWEEP_SCAN_LIMIT) -> tuple[int, int]:
        """Delete stored files that no task uses and that were last written or asked for before `older_than` (a
        time.time() value); returns (files, bytes) freed. Looks at scan_limit files at most, going on where the
        previous call stopped, so a call stays short however many files are stored."""
        old = [sha256 for sha256, mtime in self._scan(scan_limit) if mtime < older_than]
        return self._delete_unused(old, referenced, older_than)

    def _delete_unused(self, hashes: list[str], referenced: Referenced,
                       older_than: float | None) -> tuple[int, int]:
        files = freed = 0
        for start in range(0, len(hashes), SWEEP_BATCH):
            batch = [sha256 for sha256 in hashes[start:start + SWEEP_BATCH] if is_sha256(sha256)]
            # The database is asked with the guard held: a submit that stored its task before this point is seen
            # there, and one that has not yet holds its files reserved.
            with self._guard:
                used = referenced(batch)
                for sha256 in batch:
                    if sha256 in used or sha256 in self._reserved:
                        continue
                    if older_than is not None and not self._older_than(sha256, older_than):
                        continue  # published again or asked for since the scan
                    size = self._remove(sha256)
                    if size is not None:
                        files += 1
                        freed += size
        return files, freed

    def _older_than(self, sha256: str, moment: float) -> bool:
        try:
            return os.stat(self.path(sha256)).st_mtime < moment
        except FileNotFoundError:
            return False

    def _scan(self, limit: int) -> list[tuple[str, float]]:
        """(sha256, mtime) of up to `limit` stored files in hash order, after those the previous scan returned; the
        scan starts over from the first file once it reached the last."""
        found: list[tuple[str, float]] = []
        start = self._sweep_cursor
        prefixes = sorted(name for name in os.listdir(self.root) if PREFIX_PATTERN.match(name) and name >= start[:2])
        for prefix in prefixes:
            try:
                names = sorted(name for name in os.listdir(os.path.join(self.root, prefix))
                               if name > start and name.startswith(prefix) and is_sha256(name))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if len(found) >= limit:
                    self._sweep_cursor = found[-1][0]
                    return found
                try:
                    info = os.stat(self.path(name), follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((name, info.st_mtime))
        self._sweep_cursor = ""
        return found

    def put_stream(
        self,
        stream: BinaryIO,
        *,
        limit: int,
        expected_sha256: str | None = None,
        check_head: Callable[[bytes], str | None] | None = None,
    ) -> tuple[str, int]:
        """Store a stream; returns (sha256, size). Refuses (and keeps nothing) on a bad head, size or hash.

        check_head gets the first bytes and returns an error sentence, or None when they are acceptable.
        """
        self.check_space(0)
        temp_path = os.path.join(self.incoming, uuid.uuid4().hex)
        digest = hashlib.sha256()
        size = 0
        try:
            with open(temp_path, "wb") as out:
                first = True
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    if first and check_head is not None:
                        problem = check_head(chunk[:64])
                        if problem:
                            raise BadRequest(problem)
                    first = False
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"the upload is larger than the coordinator's limit of {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    if size % (64 * CHUNK) < len(chunk):
                        self.check_space(0)
                if first and check_head is not None:
                    problem = check_head(b"")
                    if problem:
                        raise BadRequest(problem)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise BadRequest(f"the upload's SHA-256 is {sha256}, not {expected_sha256} as announced")
            final = self.path(sha256)
            # Published with the guard held, so an orphan sweep that saw an old copy of this file does not delete
            # the new one (it checks the time again under the guard).
            with self._guard:
                os.makedirs(os.path.dirname(final), mode=PRIVATE_FOLDER, exist_ok=True)
                os.replace(temp_path, final)
            _fsync_dir(os.path.dirname(final))
            return sha256, size
        except OSError as error:
            if error.errno == 28:  # ENOSPC
                raise InsufficientStorage("the coordinator's disk is full; the upload was not stored") from None
            raise
        finally:
            if os.path.exists(temp_path):
                os.unlink(temp_path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
