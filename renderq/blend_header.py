"""Which Blender saved a .blend: read from the file's header by blender-asset-tracer (BAT), for plain, gzip- and
zstd-compressed files, in the header of Blender up to 4.x and in Blender 5's. And whether its scene writes a movie
(read_movie_output), which decides whether a submit asks for the task's video.

BAT parses the header; only the file's first bytes are decompressed (BAT's own opener would decompress all of it
into a temporary file, too much for the coordinator reading every uploaded .blend). The add-on bundles BAT too.
"""

from __future__ import annotations

import io
import pathlib
import re
import struct
from typing import BinaryIO

from blender_asset_tracer import blendfile
from blender_asset_tracer.blendfile import exceptions as bat_exceptions
from blender_asset_tracer.blendfile import magic_compression
from blender_asset_tracer.blendfile.header import BlendFileHeader

# The longest header (Blender 5's): 'BLENDER' + size + '-' + format version + endianness + 4 digits.
HEADER_BYTES = 17
# What BAT raises on a .blend it cannot parse or rewrite (a damaged file, a layout it does not know).
BAT_READ_ERRORS = (
    bat_exceptions.BlendFileError,
    bat_exceptions.SegmentationFault,
    bat_exceptions.NoReaderImplemented,
    bat_exceptions.NoWriterImplemented,
    struct.error,
    EOFError,
)
# Blender's movie output types (RenderData.im_format.imtype): AVI raw and JPEG, FFmpeg, and the old H.264, Xvid and
# Theora ones.
_MOVIE_IMTYPES = frozenset({15, 16, 24, 31, 32, 33})


def read_header(path: str) -> BlendFileHeader:
    """BAT's parse of the file's header; ValueError naming the file when it is not a .blend file."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise ValueError(f"{path} could not be read as a .blend file: {error.strerror or error}") from None
    with handle:
        try:
            return BlendFileHeader(io.BytesIO(_first_bytes(handle)), pathlib.Path(path))
        except _NoZstandard:
            raise ValueError(f"{path} is zstd-compressed; install the 'zstandard' package to read it") from None
        except bat_exceptions.BlendFileError as error:
            raise ValueError(f"{path} is not a .blend file ({error.args[0]})") from None
        except Exception as error:  # noqa: BLE001 - a damaged gzip or zstd stream, a header field not a number
            raise ValueError(f"{path} is not a .blend file ({error or type(error).__name__})") from None


class _NoZstandard(Exception):
    """The file is zstd-compressed and the zstandard module is missing."""


def _first_bytes(handle: BinaryIO) -> bytes:
    """The file's first HEADER_BYTES once decompressed (BlendFileError when it starts like no .blend file)."""
    compression = magic_compression.find_compression_type(handle)
    handle.seek(0)
    if compression == magic_compression.Compression.UNRECOGNISED:
        raise bat_exceptions.BlendFileError("not a .blend, gzip or zstd file", pathlib.Path(handle.name))
    if compression == magic_compression.Compression.NONE:
        return handle.read(HEADER_BYTES)
    if compression == magic_compression.Compression.ZSTD and not magic_compression.has_zstandard:
        raise _NoZstandard()
    # BAT's own decompressor for what it found (a private helper, stable across the 1.x versions we allow).
    with magic_compression._decompressor(handle, "rb", compression) as stream:
        return stream.read(HEADER_BYTES)


def read_render_engine(path: str) -> str:
    """The render engine (Blender's id, e.g. CYCLES or BLENDER_EEVEE) of the scene the .blend was saved with, read
    with BAT without starting Blender; "" when the file does not say or cannot be read."""
    from blender_asset_tracer import blendfile  # only a submit needs BAT's full reader

    try:
        bfile = blendfile.BlendFile(pathlib.Path(path))
    except Exception:  # noqa: BLE001 - an unreadable file only leaves the engine unknown; packing says why
        return ""
    try:
        scene = bfile.find_blocks_from_code(b"GLOB")[0].get_pointer(b"curscene")
        engine = scene.get((b"r", b"engine"), as_str=True) if scene is not None else ""
    except Exception:  # noqa: BLE001 - as above
        engine = ""
    finally:
        bfile.close()
    return engine if re.fullmatch(r"[A-Za-z0-9_]{1,64}", engine or "") else ""


def read_blend_version(path: str) -> str:
    """The major.minor of the Blender that saved the file ('BLENDER-v304' -> '3.4', 'BLENDER17-01v0500' -> '5.0');
    ValueError when it is not a .blend file."""
    version = read_header(path).version
    return f"{version // 100}.{version % 100}"


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


def read_movie_output(path: str) -> bool | None:
    """Whether the scene a .blend was saved with writes a movie file (FFmpeg output) rather than images, read by
    BAT without starting Blender; None when the file cannot be read or does not say."""
    try:
        bfile = blendfile.BlendFile(pathlib.Path(path))
    except (*BAT_READ_ERRORS, OSError):
        return None
    try:
        scene = bfile.find_blocks_from_code(b"GLOB")[0].get_pointer(b"curscene")
        if scene is None:
            return None
        return int(scene.get((b"r", b"im_format", b"imtype"))) in _MOVIE_IMTYPES
    except (*BAT_READ_ERRORS, IndexError, KeyError, TypeError, ValueError):
        return None
    finally:
        bfile.close()
