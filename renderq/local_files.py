"""Local files on their way to or from the coordinator: hashing them block by block, reading them for an upload
with its progress, refusing to write through a link, and removing a temporary file that may already be gone.
Standard library only (the add-on bundles it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

from renderq.client_errors import DownloadRefused

__all__ = ["BLOCK_SIZE", "ProgressReader", "check_not_link", "file_sha256", "iter_file_blocks", "remove_quietly"]

BLOCK_SIZE = 256 * 1024


def check_not_link(path: str) -> None:
    """Refuse (DownloadRefused) when `path` is a symbolic link (or a folder): a download never writes through one."""
    if os.path.islink(path):
        raise DownloadRefused(f"{path} is a symbolic link; refusing to write through it")
    if os.path.isdir(path):
        raise DownloadRefused(f"{path} is a folder; refusing to write over it")


def remove_quietly(path: str | None) -> None:
    """Delete a file if it is there; a file already gone (or never made) is no error."""
    if not path:
        return
    with contextlib.suppress(OSError):
        os.remove(path)


def iter_file_blocks(path: str, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """Yield a file's bytes block by block (used to hash files without reading them whole)."""
    with open(path, "rb") as stream:
        while True:
            block = stream.read(block_size)
            if not block:
                return
            yield block


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, read block by block."""
    digest = hashlib.sha256()
    for block in iter_file_blocks(path):
        digest.update(block)
    return digest.hexdigest()


class ProgressReader:
    """A file wrapper that reports how many bytes an HTTP request has read from it so far, for an upload's
    progress."""

    def __init__(self, stream: BinaryIO | PrefixedStream, total: int,
                 progress: Callable[[int, int], None] | None) -> None:
        self._stream = stream
        self._total = total
        self._progress = progress
        self._sent = 0

    def rewind(self) -> None:
        """Start again from the first byte, to send the body once more on a fresh connection."""
        self._stream.seek(0)
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._sent += len(data)
        if self._progress is not None and data:
            self._progress(self._sent, self._total)
        return data


class PrefixedStream:
    """`prefix` followed by a file's bytes, read as one stream: a small part that goes first in a request body."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = prefix
        self._stream = stream
        self._offset = 0  # within the prefix; past it, the file is read

    def seek(self, offset: int) -> None:
        """Only back to the start (for a body sent again)."""
        if offset != 0:
            raise ValueError("a prefixed stream seeks only back to its start")
        self._offset = 0
        self._stream.seek(0)

    def read(self, size: int = -1) -> bytes:
        if self._offset < len(self._prefix):
            end = len(self._prefix) if size < 0 else min(len(self._prefix), self._offset + size)
            data = self._prefix[self._offset:end]
            self._offset = end
            return data
        return self._stream.read(size)
