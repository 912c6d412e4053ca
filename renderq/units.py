"""Sizes and durations, read and written one way everywhere: the CLI, the worker, the coordinator's settings and
the add-on (which bundles this module). The status page's `RQ.duration` (coordinator/pages/static/common.js)
writes durations by the same rule; tests/test_units.py holds the two to it.

Sizes are binary: K, M, G and T are powers of 1024, written KiB, MiB, GiB and TiB. Durations are "42s",
"3m 05s", "1h 02m", "2d 03h": the two largest units, the second padded, so that columns line up.
Standard library only.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_bytes", "format_duration", "parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB")
UNKNOWN = "-"


def parse_size(text: str) -> int:
    """Bytes in a size such as "500M", "4G", "1.5G", "20GiB", "512kb" or "1048576" (K, M, G, T: powers of 1024).

    Raises ValueError with a plain sentence for anything else (negative, empty, unknown unit).
    """
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size such as 500M, 4G or 1048576 (bytes)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_FACTORS[unit.lower()])


def format_bytes(size: float) -> str:
    """A byte count for people: "512 B", "1.5 KiB", "20.0 GiB"."""
    value = float(size)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in _BYTE_UNITS[:-1]:
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} {_BYTE_UNITS[-1]}"


def format_duration(seconds: float | None) -> str:
    """ "4.2s" under ten seconds, then "42s", "3m 05s", "1h 02m", "2d 03h"; "-" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return UNKNOWN
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = math.floor(seconds + 0.5)  # half up, as the page's Math.round does
    if whole < 60:
        return f"{whole}s"
    for big, small, name, small_name in ((86400, 3600, "d", "h"), (3600, 60, "h", "m"), (60, 1, "m", "s")):
        if whole >= big:
            major, rest = divmod(whole, big)
            return f"{major}{name} {rest // small:02d}{small_name}"
    return f"{whole}s"  # not reached: whole >= 60 here


# A finish estimate's range is shown while it spans more than this share of the estimate; then one figure.
ETA_RANGE_SHOWN_ABOVE = 0.25


def format_eta(seconds: float | None, low: float | None = None, high: float | None = None) -> str:
    """A finish estimate: "about 4m 10s (3m 05s-5m 40s)" while its range is wide, else "4m 10s"; "-" when unknown.
    The status page writes it by the same rule (RQ.eta)."""
    if seconds is None or not math.isfinite(seconds):
        return UNKNOWN
    if (low is None or high is None or not math.isfinite(low) or not math.isfinite(high)
            or high - low <= ETA_RANGE_SHOWN_ABOVE * seconds):
        return format_duration(seconds)
    return f"about {format_duration(seconds)} ({format_duration(low)}-{format_duration(high)})"


def estimate_text(estimate: object) -> str | None:
    """A task's `estimate` of its frames left in one line ("3m 05s on 2 workers, 0.42 render hours, 1.26 EUR,
    0.13 kWh"), or None when it has none (the CLI and the add-on show it)."""
    if not isinstance(estimate, dict) or not estimate:
        return None
    wall = estimate.get("wall_seconds")
    workers = estimate.get("workers") or 0
    parts = [f"{format_duration(wall)} on {workers} worker{'s' if workers != 1 else ''}" if wall is not None
             else "no worker can take it now"]
    parts.append(f"{estimate.get('render_hours') or 0:.2f} render hours")
    if isinstance(estimate.get("cost"), (int, float)):
        parts.append(f"{estimate['cost']:.2f} {estimate.get('currency') or ''}".rstrip())
    if isinstance(estimate.get("energy_kwh"), (int, float)):
        parts.append(f"{estimate['energy_kwh']:.2f} kWh")
    return ", ".join(parts)
