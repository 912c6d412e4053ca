"""Plain-text formatting for the panels and messages (Blender labels neither wrap nor format numbers)."""

from __future__ import annotations

# One convention with the CLI and the status page (renderq/units.py, bundled); re-exported for the panels.
from renderq.units import format_bytes as format_bytes
from renderq.units import format_duration as format_duration
from renderq.units import format_eta as format_eta

_BAR_WIDTH = 20


def wrap(sentence: str, width: int = 60) -> list[str]:
    """Split a sentence into lines of at most about `width` characters."""
    lines: list[str] = []
    current = ""
    for word in sentence.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines or [""]


def text_bar(fraction: float, width: int = _BAR_WIDTH) -> str:
    """A progress bar made of characters, for Blender versions without `UILayout.progress` (before 4.0)."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "\u2588" * filled + "\u2591" * (width - filled)


def frame_list(frames: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    ranges: list[str] = []
    numbers = sorted(set(frames))
    index = 0
    while index < len(numbers):
        start = end = numbers[index]
        while index + 1 < len(numbers) and numbers[index + 1] == end + 1:
            index += 1
            end = numbers[index]
        ranges.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ", ".join(ranges)
