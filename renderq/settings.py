"""How every RenderQ program reads its settings: a flag, else a RENDERQ_* environment variable, else the default.

The coordinator (coordinator/config.py) and the worker (worker/command_line.py) both read their variables through
env_value, with the parsers below, so a variable means the same thing and is refused with the same sentence
everywhere. Standard library only: the add-on and the kernel use it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

ENV_PREFIX = "RENDERQ_"

T = TypeVar("T")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_size(text: str) -> int:
    """Bytes in a size such as `20G`, `500M`, `1.5G`, `2 GiB` or `1048576` (K, M, G, T are powers of 1024)."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size such as 20G or 500M")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_bool(text: str) -> bool:
    """On or off: 1, true, yes, on / 0, false, no, off (any case). Anything else is refused, never taken as off."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not on or off; write 1 or 0 (true or false)")


# What each parser takes, for the sentence that refuses a variable.
_EXPECTED: dict[Callable[[str], object], str] = {
    int: "a number",
    float: "a number",
    parse_size: "a size such as 20G or 500M",
    parse_bool: "1 or 0 (true or false)",
}


def env_name(setting: str) -> str:
    """The environment variable of a setting: `cache_size` -> RENDERQ_CACHE_SIZE."""
    return ENV_PREFIX + setting.upper().replace("-", "_")


def env_value(setting: str, parse: Callable[[str], T], environ: Mapping[str, str] | None = None) -> T | None:
    """The setting's RENDERQ_* variable parsed, or None when it is unset or empty.

    Raises ValueError with a sentence naming the variable when its value cannot be parsed.
    """
    environ = os.environ if environ is None else environ
    name = env_name(setting)
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        expected = _EXPECTED.get(parse)
        if expected is None:  # a parser of the program's own says what is wrong
            raise ValueError(f"{name}: {exc}") from None
        raise ValueError(f"{name} must be {expected}, not {raw!r}") from None
