"""Stream a zip of stored files without building it in memory or on disk."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

CHUNK = 1024 * 1024


class _Spout(io.RawIOBase):
    """A write-only, unseekable sink: zipfile then writes data descriptors, and we hand out what it wrote."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.pending.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        chunk = b"".join(self.pending)
        self.pending.clear()
        return chunk


def stream_zip(entries: Iterable[tuple[str, str]], open_source: Callable[[str], BinaryIO]) -> Iterator[bytes]:
    """Yield a zip archive of (name in archive, source), each source's bytes read from open_source(source) (a
    stored file by its hash); images are stored, not recompressed."""
    spout = _Spout()
    with zipfile.ZipFile(spout, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, source_name in entries:
            member_info = zipfile.ZipInfo(name)
            with archive.open(member_info, "w", force_zip64=True) as member, open_source(source_name) as source:
                while chunk := source.read(CHUNK):
                    member.write(chunk)
                    yield spout.drain()
            yield spout.drain()
    yield spout.drain()
