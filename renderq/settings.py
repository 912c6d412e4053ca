"""How every RenderQ program reads its settings: a flag, else a RENDERQ_* environment variable, else the default.

The coordinator (coordinator/config.py) and the worker (worker/command_line.py) both read their variables through
env_value, with the parsers below (sizes: renderq.units), so a variable means the same thing and is refused with the
same sentence everywhere. Standard library only: the add-on and the kernel use it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from .units import parse_size

ENV_PREFIX = "RENDERQ_"

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
