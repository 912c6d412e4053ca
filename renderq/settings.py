"""How every RenderQ program reads its settings: a flag, else a RENDERQ_* environment variable, else the default.

The coordinator (coordinator/config.py) and the worker (worker/command_line.py) both read their variables through
env_value, with the parsers below (sizes: renderq.units), so a variable means the same thing and is refused with the
same sentence everywhere, and declare their value flags as Flag rows given to add_flags. Standard library only: the
add-on and the kernel use it too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

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


class Flag(NamedTuple):
    """One value flag of a program: it sets the setting named by `dest` (else by the flag, `--work-dir` -> work_dir)."""

    name: str
    type: Callable[[str], Any]
    help: str
    dest: str | None = None
    metavar: str | None = None

    @property
    def setting(self) -> str:
        return self.dest or self.name.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag],
              defaults: Mapping[str, Any] | None = None) -> None:
    """Declare value flags on `parser`; each defaults to `defaults[its setting]`, else None (the program then keeps
    its RENDERQ_* value or its own default)."""
    for flag in flags:
        options: dict[str, Any] = {"help": flag.help, "default": (defaults or {}).get(flag.setting)}
        if flag.type is not str:
            options["type"] = flag.type
        if flag.dest:
            options["dest"] = flag.dest
        if flag.metavar:
            options["metavar"] = flag.metavar
        parser.add_argument(flag.name, **options)
