"""Which files a packed tree would carry off the artist's disk from outside the project folder: files the .blend
names outside it, symbolic links in it that lead out of it, and hidden files, which are never uploaded.

Submitting an untrusted .blend must not upload the artist's private files: an image datablock can name
~/.ssh/id_rsa, and a project folder can hold a link to anything. Packing lists these before anything is uploaded;
`renderq submit` and the add-on refuse with `refusal` unless the artist allows files from outside the folder, and
refuse hidden files in any case.

What counts as hidden: a name starting with '.' in the part of the path below the project folder, else below the
user's home folder, else anywhere in the path. Judging only that part lets a project kept in a hidden folder work,
while ~/.ssh/id_rsa, ~/.aws/credentials, .env or .git/config are caught. Both the path the .blend names and the real
path (links followed) are judged.

Standard library only, so the Blender add-on can bundle it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MAX_LISTED", "Exposure", "refusal", "survey"]

MAX_LISTED = 10
"""How many files a refusal names before it gives only a count."""


@dataclass
class Exposure:
    """What a tree takes from outside its project folder, as lines a person reads."""

    outside: list[str] = field(default_factory=list)
    """Files outside the project folder, absolute; "path -> real path" when a link leads there."""
    links: list[str] = field(default_factory=list)
    """Symbolic links in the project folder leading out of it: "link -> target", the link relative to the folder."""
    hidden: list[str] = field(default_factory=list)
    """Files never to upload, each with the hidden name that makes it so."""


def survey(files: Iterable[pathlib.Path], project_folder: pathlib.Path) -> Exposure:
    """Judge every file whose bytes would be uploaded (absolute paths as read, links not followed) against the
    project folder the artist chose.

    A file counts as inside when its real path is inside the folder's real path, so links that stay inside the
    folder are harmless and not listed.
    """
    root = pathlib.Path(os.path.abspath(project_folder))
    real_root = _real(root)
    homes = _home_folders()
    outside: set[str] = set()
    links: set[str] = set()
    hidden: set[str] = set()
    for path in sorted(set(files)):
        real = _real(path)
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        reasons = [_hidden_reason(named, shown, real if named != path else None, bases)
                   for named, bases in ((path, [root, *homes]), (real, [real_root, *homes]))]
        if any(reasons):
            hidden.add(next(reason for reason in reasons if reason))  # refused outright, so not listed twice
            continue
        if real.is_relative_to(real_root):
            continue
        leaving = _links_leaving(path, root, real_root) if path.is_relative_to(root) else []
        if leaving:
            links.update(leaving)
        else:
            # Also a way out no link explains (a Windows junction): still listed, as a file outside.
            outside.add(str(path) if real == path else f"{path} -> {real}")
    return Exposure(outside=sorted(outside), links=sorted(links), hidden=sorted(hidden))


def refusal(exposure: Exposure, project_folder: str, *, allow_outside: bool, remedy: str) -> str | None:
    """The sentence that must stop the upload, else None: hidden files always, and files from outside the project
    folder (or links leading out of it) unless `allow_outside`. `remedy` says how to allow those, e.g. "submit
    again with --allow-outside"."""
    parts = []
    if exposure.hidden:
        parts.append(f"{len(exposure.hidden)} file(s) are hidden or in a hidden folder, and RenderQ never uploads "
                     f"those: {_listing(exposure.hidden)}; remove them from the .blend or move them to a plain folder")
    reached = exposure.outside + exposure.links
    if reached and not allow_outside:
        parts.append(f"{len(reached)} file(s) or link(s) lead outside the project folder {project_folder}: "
                     f"{_listing(reached)}; move the files into the project folder, or {remedy}")
    return "; and ".join(parts) or None


def _listing(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def _real(path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(os.path.realpath(path))


def _home_folders() -> list[pathlib.Path]:
    """The user's home folder as named and as resolved; none when it is unknown."""
    home = os.path.expanduser("~")
    if not os.path.isabs(home):
        return []
    return list(dict.fromkeys([pathlib.Path(os.path.abspath(home)), _real(pathlib.Path(home))]))


def _hidden_reason(path: pathlib.Path, shown: str, link_to: pathlib.Path | None,
                   bases: list[pathlib.Path]) -> str | None:
    """How a hidden file is listed ("shown[, a link to X] (why)"), or None when `path` is not hidden."""
    name = _hidden_name(path, bases)
    if name is None:
        return None
    via = f", a link to {link_to}" if link_to is not None else ""
    why = "a hidden file" if name == path.name else f"in the hidden folder {name}"
    return f"{shown}{via} ({why})"


def _hidden_name(path: pathlib.Path, bases: list[pathlib.Path]) -> str | None:
    """The first name starting with '.' in the part of `path` below the deepest of `bases` holding it (the whole
    path when none does), else None."""
    holders = [base for base in bases if path.is_relative_to(base)]
    below = path.relative_to(max(holders, key=lambda base: len(base.parts))).parts if holders else path.parts[1:]
    return next((name for name in below if name.startswith(".")), None)


def _links_leaving(path: pathlib.Path, root: pathlib.Path, real_root: pathlib.Path) -> list[str]:
    """The symbolic links on `path`'s way below `root` (the file itself included) that lead out of the folder."""
    found = []
    current = root
    for name in path.relative_to(root).parts:
        current = current / name
        if current.is_symlink():
            target = _real(current)
            if not target.is_relative_to(real_root):
                found.append(f"{current.relative_to(root).as_posix()} -> {target}")
    return found
