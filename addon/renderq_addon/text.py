"""Plain-text formatting for the panels and messages (Blender labels neither wrap nor format numbers)."""

from __future__ import annotations

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


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KB'."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def format_duration(seconds: float | None) -> str:
    """95 -> '1m 35s'; None -> '-'."""
    if seconds is None or seconds < 0:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


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
