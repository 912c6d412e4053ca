"""Argument types for the `renderq` parser: each turns one command-line word into a checked value."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from renderq.tiles import parse_tiles


def parse_frames(text: str) -> tuple[int, int]:
    """'12' -> (12, 12); '1-250' -> (1, 250). Raises argparse.ArgumentTypeError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame or a frame range; write 12 or 1-250")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) is not None else start
    if end < start:
        raise argparse.ArgumentTypeError(f"the range {text!r} ends before it starts; write the first frame first")
    return start, end


def _number(text: str, kind: Callable[[str], float], not_one: str, low: float, high: float,
            out_of_range: Callable[[float], str]) -> float:
    """`text` read by `kind` (int or float) and checked to lie in [low, high]: `not_one` says it is no number,
    out_of_range(value) that it is out of range."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(not_one) from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(out_of_range(value))
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1, for counts and steps."""
    return int(_number(text, int, f"{text!r} is not a whole number", 1, math.inf,
                       lambda value: f"{value} is too small; it must be at least 1"))


def port_number(text: str) -> int:
    """A TCP port, 0 meaning "pick a free one"."""
    return int(_number(text, int, f"{text!r} is not a port number", 0, 65535,
                       lambda value: f"{value} is not a port number (0-65535)"))


def blender_version_arg(text: str) -> str:
    """A Blender major.minor such as 4.2, as `--blender-version` takes it."""
    match = re.fullmatch(r"\s*(\d{1,3})\.(\d{1,3})\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Blender version; write major.minor, e.g. 4.2")
    return f"{int(match.group(1))}.{int(match.group(2))}"


def priority_arg(text: str) -> int:
    """A task priority: a whole number, higher first."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a priority; priorities are whole numbers") from None


def task_id_arg(text: str) -> int:
    """A task id as printed by `renderq submit` and `renderq status`."""
    return int(_number(text.lstrip("#"), int, f"{text!r} is not a task id; task ids are numbers", 1, math.inf,
                       lambda value: f"{value} is not a task id; task ids start at 1"))


def seconds_arg(text: str) -> float:
    """A number of seconds from 1 to 7 days, for argparse."""
    return _number(text, float, f"{text!r} is not a number of seconds", 1, 7 * 24 * 3600,
                   lambda _value: f"{text} is not between 1 second and 7 days")


def tiles_arg(text: str) -> tuple[int, int]:
    """A still's tiling, columns x rows, as `--tiles` takes it (renderq.tiles)."""
    try:
        return parse_tiles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tags_arg(text: str) -> list[str]:
    """--tag: one tag or several separated by commas, under the one tag rule (renderq.capabilities)."""
    from renderq.capabilities import parse_tags

    try:
        return parse_tags([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def notify_url_arg(text: str) -> str:
    """--notify: a webhook URL under the one URL rule (renderq.webhooks)."""
    from renderq.webhooks import url_problem

    problem = url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
