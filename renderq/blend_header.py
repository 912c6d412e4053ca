"""Which Blender saved a .blend: read from the file's header, for plain, gzip- and zstd-compressed files.

Standard library only (zstandard when it is installed), so the coordinator, the command line and the add-on
can all use it.
"""

from __future__ import annotations

import gzip
import re

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Blender up to 4.x: 'BLENDER' + pointer size ('_' 32-bit, '-' 64-bit) + endianness ('v'/'V') + 3 digits.
OLD_HEADER = re.compile(rb"^BLENDER[_-][vV](\d)(\d\d)")
# Blender 5.0 and later: 'BLENDER' + header size + '-' + format version + endianness + 4 digits.
NEW_HEADER = re.compile(rb"^BLENDER\d\d-\d\d[vV](\d\d)(\d\d)")


def header_bytes(path: str, count: int = 32) -> bytes:
    """The first bytes of the uncompressed .blend data."""
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        if head.startswith(GZIP_MAGIC):
            with gzip.GzipFile(fileobj=handle) as unpacked:
                return unpacked.read(count)
        if head.startswith(ZSTD_MAGIC):
            try:
                import zstandard
            except ImportError:
                raise ValueError(f"{path} is zstd-compressed; install the 'zstandard' package to read it") from None
            with zstandard.ZstdDecompressor().stream_reader(handle) as unpacked:
                return unpacked.read(count)
        return handle.read(count)


def version_from_header(head: bytes) -> str | None:
    """'3.4' from b'BLENDER-v304...', '5.0' from b'BLENDER17-01v0500...'; None when not a .blend header."""
    match = OLD_HEADER.match(head)
    if match:
        return f"{int(match.group(1))}.{int(match.group(2))}"
    match = NEW_HEADER.match(head)
    if match:
        return f"{int(match.group(1))}.{int(match.group(2))}"
    return None


def read_blend_version(path: str) -> str:
    """The major.minor of the Blender that saved the file; ValueError when it is not a .blend file."""
    try:
        head = header_bytes(path)
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} could not be read as a .blend file: {error}") from None
    version = version_from_header(head)
    if version is None:
        raise ValueError(f"{path} is not a .blend file")
    return version


def version_key(version: str) -> int:
    """A comparable number for 'major.minor[.patch]': '4.2.1' -> 4002; 0 for an unknown version."""
    # Bounded digits: a minor of 1000 or more would sort past the next major, and an absurd number (sent to the
    # coordinator) would not fit the database's integers.
    match = re.match(r"^\s*(\d{1,4})\.(\d{1,3})(?!\d)", version or "")
    if not match:
        return 0
    return int(match.group(1)) * 1000 + int(match.group(2))


def key_to_version(key: int) -> str:
    return f"{key // 1000}.{key % 1000}"
