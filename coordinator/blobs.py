"""Content-addressed files: stream in, hash while writing, verify, then publish under the SHA-256.

ContentStore holds what every engine shares (the hashing, the limits, the reservations and the orphan sweep);
BlobStore keeps the files in a local folder (the default), coordinator.blobs_s3.S3BlobStore in an S3 bucket.

A stored file no task uses (an upload never submitted, a frame rendered again) is an orphan: once it is older than a
grace period it is deleted. One guard lock orders that against the submits that start to use a file: a submit
reserves its files before it checks they exist and until its task is stored, and a file is deleted only with the
guard held, when it is neither reserved nor referenced by a stored task. A file being published is reserved too, so
a sweep never deletes it while it is written. One coordinator serves a data dir (it holds a lock on it), so an
in-process lock is enough.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

from renderq.private_files import PRIVATE_FOLDER, make_private

from .errors import BadRequest, InsufficientStorage, NotFound, PayloadTooLarge

CHUNK = 1024 * 1024
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PREFIX_PATTERN = re.compile(r"^[0-9a-f]{2}$")
# An orphan sweep looks at this many stored files at most per call (it goes on where the last one stopped), and asks
# the database about them this many at a time, with the guard held.
SWEEP_SCAN_LIMIT = 20_000
SWEEP_BATCH = 200
# What head_file copies of a stored file: enough for a compressed .blend's header.
HEAD_FILE_BYTES = 1024 * 1024

# Given hashes, returns those a stored task still uses (Store.referenced_blobs).
Referenced = Callable[[Sequence[str]], set[str]]

BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")  # plain, gzip, zstd


def is_sha256(text: str) -> bool:
    return bool(SHA256_PATTERN.match(text or ""))


def looks_like_blend(head: bytes) -> bool:
    """A .blend starts with 'BLENDER', or is gzip- or zstd-compressed."""
    return any(head.startswith(magic) for magic in BLEND_MAGICS)


class ContentStore(abc.ABC):
    """What every engine shares: files named by their SHA-256, uploads spooled and hashed in `root`/incoming before
    they are published, reservations and the orphan sweep. An engine supplies the primitives marked below."""

    # Whether a spooled upload is fsynced before it is published: it becomes the stored file itself on the local
    # engine, while the S3 engine only reads it once to copy it into the bucket.
    sync_spool = True

    def __init__(self, root: str, *, reserve_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        self.reserve_bytes = reserve_bytes
        self.incoming = os.path.join(root, "incoming")
        os.makedirs(self.incoming, mode=PRIVATE_FOLDER, exist_ok=True)
        make_private(os.path.realpath(self.root), PRIVATE_FOLDER)
        make_private(self.incoming, PRIVATE_FOLDER)
        # Leftovers of uploads cut off by a crash are never referenced: clear them.
        for leftover in os.listdir(self.incoming):
            os.unlink(os.path.join(self.incoming, leftover))
        self._guard = threading.Lock()
        self._reserved: collections.Counter[str] = collections.Counter()
        self._sweep_cursor = ""

    # -- what an engine supplies ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def size(self, sha256: str) -> int | None:
        """The stored file's size in bytes, or None when it is not stored."""

    @abc.abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """The stored file for reading (NotFound when it is not stored)."""

    def local_path(self, sha256: str) -> str | None:
        """The stored file's path on the coordinator's disk, or None when it is kept elsewhere."""
        return None

    def download_url(self, sha256: str, filename: str) -> str | None:
        """A URL the client fetches the file from instead of the coordinator (saved as `filename`), or None when the
        coordinator sends it itself."""
        return None

    def upload_target(self, size: int) -> dict[str, Any] | None:
        """Where a client may put a large file itself instead of sending it through the coordinator
        ({"upload_id", "url", "method", "headers"}), or None when this store takes uploads only through it."""
        return None

    def finish_upload(self, sha256: str, upload_id: str, limit: int) -> tuple[str, int]:
        """Count a direct upload (see upload_target) as the file `sha256` once it is checked: (sha256, size)."""
        raise BadRequest("this coordinator keeps its files itself: upload through POST /upload_file")

    @abc.abstractmethod
    def _publish(self, temp_path: str, sha256: str) -> None:
        """Make the verified spooled file at temp_path the stored file of sha256 (called with it reserved)."""

    @abc.abstractmethod
    def _remove(self, sha256: str) -> int | None:
        """Delete a stored file; its size, or None if it was not there."""

    @abc.abstractmethod
    def _refresh(self, sha256: str) -> bool:
        """Start the stored file's grace period as an orphan over; False when it is not stored."""

    @abc.abstractmethod
    def _stored_at(self, sha256: str) -> float | None:
        """When the file was last published or refreshed (a time.time() value), or None when it is not stored."""

    @abc.abstractmethod
    def _list_after(self, start: str, limit: int) -> list[tuple[str, float]]:
        """(sha256, stored at) of up to `limit` stored files in hash order, each hash after `start`."""

    # -- shared -----------------------------------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        return is_sha256(sha256) and self.size(sha256) is not None

    def head(self, sha256: str, count: int = 64) -> bytes:
        """The stored file's first `count` bytes."""
        with self.open(sha256) as handle:
            return handle.read(count)

    @contextlib.contextmanager
    def head_file(self, sha256: str, count: int = HEAD_FILE_BYTES) -> Iterator[str]:
        """A local path holding at least the file's first `count` bytes, for readers that take a path."""
        handle, temp_path = tempfile.mkstemp(prefix="head-", dir=self.incoming)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(self.head(sha256, count))
            yield temp_path
        finally:
            os.unlink(temp_path)

    def check_space(self, incoming_bytes: int) -> None:
        """Refuse an upload that would leave less than the reserve free (InsufficientStorage, 507): every upload
        through the coordinator is written to `root` first."""
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.reserve_bytes:
            raise InsufficientStorage(
                f"the coordinator's disk is nearly full ({free // (1024 * 1024)} MiB free, "
                f"{self.reserve_bytes // (1024 * 1024)} MiB kept in reserve); free space or delete old tasks' files")

    def delete(self, sha256: str) -> int:
        """Remove a stored file whatever uses it; returns the bytes freed (0 if it was not there)."""
        return (self._remove(sha256) if is_sha256(sha256) else None) or 0

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
        with self.reserved([sha256]):
            return self._refresh(sha256)

    def touch_many(self, hashes: Iterable[str]) -> set[str]:
        """Those of the hashes that are stored, each touched (see touch)."""
        return {sha256 for sha256 in set(hashes) if self.touch(sha256)}

    def delete_unreferenced(self, hashes: Iterable[str], referenced: Referenced) -> tuple[int, int]:
        """Delete those of the files that no stored task uses and no submit holds; returns (files, bytes) freed."""
        return self._delete_unused(sorted(set(hashes)), referenced, older_than=None)

    def sweep_orphans(self, older_than: float, referenced: Referenced,
                      scan_limit: int = SWEEP_SCAN_LIMIT) -> tuple[int, int]:
        """Delete stored files that no task uses and that were last written or asked for before `older_than` (a
        time.time() value); returns (files, bytes) freed. Looks at scan_limit files at most, going on where the
        previous call stopped, so a call stays short however many files are stored."""
        found = self._list_after(self._sweep_cursor, scan_limit)
        # Once a scan comes back short it reached the last file: the next one starts over from the first.
        self._sweep_cursor = found[-1][0] if len(found) >= scan_limit else ""
        old = [sha256 for sha256, stored_at in found if stored_at < older_than]
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
                    if older_than is not None and not (self._stored_at(sha256) or older_than) < older_than:
                        continue  # published again or asked for since the scan
                    size = self._remove(sha256)
                    if size is not None:
                        files += 1
                        freed += size
        return files, freed

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
        try:
            with open(temp_path, "wb") as out:
                sha256, size = self._spool(stream, out, limit, check_head)
                if self.sync_spool:
                    out.flush()
                    os.fsync(out.fileno())
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise BadRequest(f"the upload's SHA-256 is {sha256}, not {expected_sha256} as announced")
            # Reserved while it is published, so an orphan sweep that saw an old copy of this file does not delete
            # the new one.
            with self.reserved([sha256]):
                self._publish(temp_path, sha256)
            return sha256, size
        except OSError as error:
            if error.errno == 28:  # ENOSPC
                raise InsufficientStorage("the coordinator's disk is full; the upload was not stored") from None
            raise
        finally:
            if os.path.exists(temp_path):
                os.unlink(temp_path)

    def _spool(self, stream: BinaryIO, out: BinaryIO, limit: int,
               check_head: Callable[[bytes], str | None] | None) -> tuple[str, int]:
        """Copy the stream to `out`, checking its head and size as it goes; (sha256, size)."""
        digest = hashlib.sha256()
        size = 0
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
        return digest.hexdigest(), size


class BlobStore(ContentStore):
    """Files named by their SHA-256 under root/ab/abcdef... on the coordinator's disk; a partial upload is never
    visible."""

    def __init__(self, root: str, *, reserve_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(root, reserve_bytes=reserve_bytes)
        self._make_folders_private()

    def _make_folders_private(self) -> None:
        """Folders 0700, including those an older version made 0755: other local users then reach no stored file,
        whatever its own mode, without touching every file."""
        for name in os.listdir(self.root):
            if PREFIX_PATTERN.match(name):
                make_private(os.path.join(self.root, name), PRIVATE_FOLDER)

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256[:2], sha256)

    def local_path(self, sha256: str) -> str | None:
        return self.path(sha256)

    def size(self, sha256: str) -> int | None:
        if not is_sha256(sha256):
            return None
        try:
            info = os.stat(self.path(sha256))
        except FileNotFoundError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self.path(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(f"no stored file has SHA-256 {sha256}") from None

    @contextlib.contextmanager
    def head_file(self, sha256: str, count: int = HEAD_FILE_BYTES) -> Iterator[str]:
        yield self.path(sha256)  # the file itself: nothing to copy

    def _publish(self, temp_path: str, sha256: str) -> None:
        final = self.path(sha256)
        os.makedirs(os.path.dirname(final), mode=PRIVATE_FOLDER, exist_ok=True)
        os.replace(temp_path, final)
        _fsync_dir(os.path.dirname(final))

    def _remove(self, sha256: str) -> int | None:
        path = self.path(sha256)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            return None
        return size

    def _refresh(self, sha256: str) -> bool:
        try:
            os.utime(self.path(sha256))
        except FileNotFoundError:
            return False
        return True

    def _stored_at(self, sha256: str) -> float | None:
        try:
            return os.stat(self.path(sha256)).st_mtime
        except FileNotFoundError:
            return None

    def _list_after(self, start: str, limit: int) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        prefixes = sorted(name for name in os.listdir(self.root) if PREFIX_PATTERN.match(name) and name >= start[:2])
        for prefix in prefixes:
            try:
                names = sorted(name for name in os.listdir(os.path.join(self.root, prefix))
                               if name > start and name.startswith(prefix) and is_sha256(name))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if len(found) >= limit:
                    return found
                try:
                    info = os.stat(self.path(name), follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((name, info.st_mtime))
        return found


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
