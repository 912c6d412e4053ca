"""The one rule for file names and relative paths that travel between machines: manifests and frame outputs.

A path the artist's machine sends is written on workers running Linux, macOS or Windows, and a frame's output name
is written back onto the artist's disk. So a name must be safe and mean the same file everywhere:

- '/' separates folders; nothing absolute; no empty, '.' or '..' component (the tree never leaves its folder);
- none of the characters Windows forbids (``< > : " | ? * \\``; ':' also names drives and NTFS streams);
- no control characters (C0, DEL, C1), line or paragraph separators, or invisible format characters (Unicode
  category Cf, e.g. U+202E, which reverses how a name reads on screen);
- no component ending in '.' or ' ' (Windows drops them, so `a.` would be `a`);
- no Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9, with any extension or case: `nul.png` is NUL);
- at most 255 bytes of UTF-8 per component (the usual file system limit) and 1,024 bytes in all;
- in a set of paths, no two that one file system would take for the same file (`a.png` and `A.PNG`; `é` composed
  and decomposed: see collision_key) and no path that is a file and also the folder of another.

Why our own: pathvalidate (the library for this) checks per-platform names and characters, but not invisible
format characters, not case or Unicode-normalization collisions, not sets of paths, and it would have to be bundled
into the Blender add-on too. This module is the standard library only, so the add-on bundles it as it is.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import TypeGuard

__all__ = ["MAX_COMPONENT_BYTES", "MAX_PATH_BYTES", "check_file_name", "check_path_set", "check_relative_path",
           "collision_key", "invisible_character", "is_safe_file_name"]

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024

# Characters Windows refuses in a name; '/' is the separator and is handled apart.
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*\\')
_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"]
)
# Unicode categories refused anywhere: control (C0, DEL, C1), format (invisible, bidi), surrogate, line/paragraph
# separators.
_REFUSED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def invisible_character(text: str) -> str | None:
    """The first control, invisible format or line-separator character in `text`, or None. Names shown to people
    (tasks, workers) are refused with one too: it could hide or reorder what they read."""
    return next((char for char in text if unicodedata.category(char) in _REFUSED_CATEGORIES), None)


def _component_problem(part: str) -> str | None:
    """Why one path component is not a safe name, or None."""
    if part in ("", ".", ".."):
        return "has an empty, '.' or '..' part"
    for char in part:
        if char in _WINDOWS_FORBIDDEN:
            return f"holds {char!r}, which Windows does not allow in file names"
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"holds the invisible or control character U+{ord(char):04X}"
    if part[-1] in ". ":
        return "has a name ending in '.' or ' ', which Windows drops"
    if part.split(".", 1)[0].rstrip(" ").upper() in _DEVICE_NAMES:
        return f"uses {part.split('.', 1)[0]!r}, a Windows device name"
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        return f"has a name longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def _shown(path: str) -> str:
    """`path` quoted for a message: invisible characters escaped (repr does that), long paths cut short."""
    return repr(path) if len(path) <= 200 else repr(path[:200]) + "..."


def check_relative_path(path: object) -> str:
    """Return `path` if it is a safe relative path under the rule above; else raise ValueError with one sentence."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{path!r} is not a file path")
    shown = _shown(path)
    if path.startswith("/"):
        raise ValueError(f"the path {shown} is absolute; only paths relative to the project folder are allowed")
    # Every refused character and surrogate is found per component below, before this could fail on one.
    for part in path.split("/"):
        problem = _component_problem(part)
        if problem:
            raise ValueError(f"the path {shown} {problem}")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise ValueError(f"the path {shown} is longer than {MAX_PATH_BYTES} bytes")
    return path


def check_file_name(name: object) -> str:
    """Return `name` if it is one safe file name (no folders) under the rule above; else raise ValueError."""
    if isinstance(name, str) and "/" in name:
        raise ValueError(f"the file name {_shown(name)} holds '/'; a file name cannot name a folder")
    try:
        return check_relative_path(name)
    except ValueError as error:
        raise ValueError(str(error).replace("the path ", "the file name ", 1)) from None


def is_safe_file_name(name: object) -> TypeGuard[str]:
    """True when `name` passes check_file_name."""
    try:
        check_file_name(name)
    except ValueError:
        return False
    return True


def collision_key(path: str) -> str:
    """What `path` is on a case-insensitive, normalizing file system: Unicode NFC, then case-folded (NFC again,
    since folding can undo the composition). Two paths with the same key would be one file on macOS or Windows."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def check_path_set(paths: Iterable[str]) -> None:
    """Raise ValueError when two of `paths` would be the same file (same collision key), or one path is a file
    that another path needs as a folder (`scene.blend` and `scene.blend/x.png`). Each path is checked already."""
    files: dict[str, str] = {}
    folders: dict[str, str] = {}
    for path in paths:
        key = collision_key(path)
        other = files.get(key)
        if other == path:
            raise ValueError(f"the path {_shown(path)} is listed twice")
        if other is not None:
            how = ("are the same name in two Unicode forms" if unicodedata.normalize("NFC", other)
                   == unicodedata.normalize("NFC", path) else "differ only in case")
            raise ValueError(f"the paths {_shown(other)} and {_shown(path)} {how}: one file on Windows or macOS")
        files[key] = path
        parts = key.split("/")
        for depth in range(1, len(parts)):
            folders.setdefault("/".join(parts[:depth]), path)
    for key, path in files.items():
        if key in folders:
            raise ValueError(f"{_shown(path)} is a file, but {_shown(folders[key])} needs it as a folder")
