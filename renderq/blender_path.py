"""Where the Blender executable is: one rule for the CLI, the worker, the demo, the tests and the benchmarks.

The rule: the path given (a flag), else $RENDERQ_BLENDER, else `blender` on PATH, else the places the official
installers put it. A path that is given but unusable is an error, never a reason to fall back to another Blender:
rendering with a Blender the user did not choose would give different pictures.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

__all__ = ["INSTALL_HINT", "BlenderNotFoundError", "find_blender", "find_blender_or_none", "known_install_places"]

INSTALL_HINT = (
    "install Blender 3.4 or newer (your distribution's 'blender' package or an official build), "
    "then put it on PATH, set RENDERQ_BLENDER to the executable, or pass its path"
)


class BlenderNotFoundError(Exception):
    """No usable Blender executable; the message says what to install or set."""


def known_install_places() -> list[str]:
    """Executables the official installers leave off PATH, newest version first where the folder names one."""
    if sys.platform == "darwin":
        patterns = ["/Applications/Blender*.app/Contents/MacOS/Blender"]
    elif sys.platform == "win32":
        roots = [os.environ.get("ProgramFiles", r"C:\Program Files"), os.environ.get("ProgramFiles(x86)", "")]
        patterns = [os.path.join(root, "Blender Foundation", "Blender*", "blender.exe") for root in roots if root]
        # The Microsoft Store and Steam builds install elsewhere; RENDERQ_BLENDER covers them.
    else:
        patterns = ["/snap/bin/blender", "/opt/blender*/blender", "/usr/local/blender*/blender"]
    found: list[str] = []
    for pattern in patterns:
        found.extend(sorted(glob.glob(pattern), reverse=True))
    return found


def _executable(path: str) -> str | None:
    """`path` made absolute if it is an executable file; a bare name is looked up on PATH."""
    if os.sep not in path and (os.altsep is None or os.altsep not in path) and not os.path.exists(path):
        return shutil.which(path)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return os.path.abspath(path)
    return None


def find_blender(explicit: str | None = None) -> str:
    """The absolute path of the Blender executable to use, by the module's rule.

    Raises BlenderNotFoundError naming what to install or set.
    """
    if explicit:
        found = _executable(explicit)
        if found is None:
            raise BlenderNotFoundError(f"Blender was not found at {explicit!r}: {INSTALL_HINT}")
        return found
    from_env = os.environ.get("RENDERQ_BLENDER")
    if from_env:
        found = _executable(from_env)
        if found is None:
            raise BlenderNotFoundError(f"RENDERQ_BLENDER={from_env!r} is not an executable file: {INSTALL_HINT}")
        return found
    found = shutil.which("blender")
    if found is not None:
        return os.path.abspath(found)
    for place in known_install_places():
        found = _executable(place)
        if found is not None:
            return found
    raise BlenderNotFoundError(f"Blender was not found on PATH: {INSTALL_HINT}")


def find_blender_or_none(explicit: str | None = None) -> str | None:
    """find_blender's answer, or None where there is no usable Blender (for callers that can do without)."""
    try:
        return find_blender(explicit)
    except BlenderNotFoundError:
        return None
