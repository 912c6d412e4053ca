"""A still split into tiles: the `tiles` text ("CxR", columns x rows) of a submit, checked in one place for the
command line, the add-on and the coordinator.

A tiled task's frame rows are its tiles, numbered 1 to C*R row by row from the top left (so a tile's number is its
frame number), of kind "tile"; the still's own frame number is the task's `frame_start`. Once every tile is done the
coordinator adds the merge job (renderq.model.MERGE_FRAME, kind "merge"), which any worker that renders the task
takes: it fetches the tiles and copies each one's rectangle into the whole image, the task's one output.
"""

from __future__ import annotations

import re

__all__ = ["TILES_MAX", "parse_tiles", "tile_position", "tiles_progress"]

# The most columns, and the most rows, a still may be split into.
TILES_MAX = 8

_TILES = re.compile(r"\s*(\d{1,3})\s*[xX×]\s*(\d{1,3})\s*")


def parse_tiles(text: str) -> tuple[int, int]:
    """(columns, rows) from "CxR"; ValueError with one plain sentence for anything else."""
    found = _TILES.fullmatch(text or "")
    if found is None:
        raise ValueError(f"tiles {text!r} is not columns x rows, like 2x2")
    columns, rows = int(found.group(1)), int(found.group(2))
    if not (1 <= columns <= TILES_MAX and 1 <= rows <= TILES_MAX):
        raise ValueError(f"tiles {text!r}: columns and rows must each be 1 to {TILES_MAX}")
    if columns * rows == 1:
        raise ValueError("tiles 1x1 is the whole frame: leave tiles out to render it on one worker")
    return columns, rows


def tiles_progress(tiles: str, done: int, total: int) -> str:
    """A tiled still's progress in words, from its task's done and total frame rows (its tiles, then its merge job):
    "3 of 4 tiles", "4 of 4 tiles, merging", "4 of 4 tiles, merged"."""
    try:
        columns, rows = parse_tiles(tiles)
    except ValueError:
        return f"{done}/{total}"
    count = columns * rows
    if done < count:
        return f"{done} of {count} tiles"
    return f"{count} of {count} tiles, {'merged' if done > count else 'merging'}"


def tile_position(number: int, columns: int) -> tuple[int, int]:
    """Tile `number` (1-based, row by row from the top left) as its (column, row), each 0-based from the top left."""
    return (number - 1) % columns, (number - 1) // columns
