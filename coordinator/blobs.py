"""Content-addressed files on disk: stream in, hash while writing, verify, then publish atomically."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from typing import BinaryIO

from renderq.private_files import PRIVATE_FOLDER, make_private

from .errors import BadRequest, InsufficientStorage, PayloadTooLarge

CHUNK = 1024 * 1024
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PREFIX_PATTERN = re.compile(r"^[0-9a-f]{2}$")

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

    def _make_folders_private(self) -> None:
        """Folders 0700, including those an older version made 0755: other local users then reach no stored file,
        whatever its own mode, without touching every file."""
        folders = [self.root, self.incoming]
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
        """Remove a stored file; returns the bytes freed (0 if it was not there)."""
        if not is_sha256(sha256):
            return 0
        path = self.path(sha256)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return size

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
