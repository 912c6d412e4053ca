"""A real Blender project with external assets, made by Blender, and helpers to render and compare it.

Not a test file: test modules import it (`from project import make_project`). `make_project` runs Blender with
`blender_scripts/make_project.py`, which documents the layout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import Iterable

MAKE_PROJECT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender_scripts", "make_project.py")
_OUTPUT_TAIL_LINES = 40


def _run_blender(command: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace", timeout=timeout, check=False,
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stdout.splitlines()[-_OUTPUT_TAIL_LINES:])
        raise RuntimeError(f"Blender could not {what} (exit code {completed.returncode})\n{tail}")
    return completed


def make_project(
    root: str,
    blender: str,
    *,
    texture_color: tuple[float, float, float] = (0.8, 0.5, 0.2),
    frames: int = 3,
    compress: bool = False,
    library_outside: bool = False,
    library_absolute: bool = False,
    extras: bool = False,
    timeout: float = 300.0,
) -> dict:
    """Build the test project under `root` with Blender and return its paths.

    Keys: root, project (the project folder), main, library, wood, outside, prop (absolute paths).
    `texture_color` is wood.png's colour (0-1 per channel); `compress` saves main.blend compressed (zstd in
    Blender 3.x); `library_outside` puts the library outside the project folder and its texture inside it;
    `library_absolute` links the library by its absolute path; `extras` adds an image sequence, an absolute path
    and a sound (keys sequence, absolute, sound).
    """
    root = os.path.abspath(root)
    command = [
        blender, "-b", "--factory-startup", "-Y", "--python-exit-code", "1", "--python", MAKE_PROJECT_SCRIPT,
        "--", "--root", root, "--frames", str(frames),
        "--texture-color", *(repr(float(channel)) for channel in texture_color),
    ]
    if compress:
        command.append("--compress")
    if library_outside:
        command.append("--library-outside")
    if library_absolute:
        command.append("--library-absolute")
    if extras:
        command.append("--extras")
    _run_blender(command, f"build the project in {root}", timeout)
    project = os.path.join(root, "project")
    if library_outside:
        library = os.path.join(root, "library", "prop.blend")
        prop = os.path.join(project, "textures", "prop.png")
    else:
        library = os.path.join(project, "lib", "prop.blend")
        prop = os.path.join(project, "lib", "textures", "prop.png")
    paths = {
        "root": root,
        "project": project,
        "main": os.path.join(project, "main.blend"),
        "library": library,
        "wood": os.path.join(project, "textures", "wood.png"),
        "outside": os.path.join(root, "shared_assets", "outside.png"),
        "prop": prop,
    }
    if extras:
        paths["sequence"] = [os.path.join(project, "seq", f"frame_{frame:04d}.png") for frame in range(1, 4)]
        paths["absolute"] = os.path.join(project, "absolute.png")
        paths["sound"] = os.path.join(root, "sounds", "hum.wav")
    for key, path in paths.items():
        if isinstance(path, list):
            continue
        if not os.path.exists(path):
            raise RuntimeError(f"Blender did not make the project's {key}: {path} is missing")
    return paths


def render_frame(blender: str, blend: str, frame: int = 1, timeout: float = 300.0) -> str:
    """Render one frame as a worker would (`blender -b -Y FILE -f N`); return the image path.

    The scene writes to `//render/f_`, i.e. next to the .blend.
    """
    completed = _run_blender([blender, "-b", "-Y", blend, "-f", str(frame)], f"render {blend}", timeout)
    image = os.path.join(os.path.dirname(blend), "render", f"f_{frame:04d}.png")
    if not os.path.isfile(image):
        tail = "\n".join(completed.stdout.splitlines()[-_OUTPUT_TAIL_LINES:])
        raise RuntimeError(f"Blender wrote no {image}\n{tail}")
    return image


def tree_hashes(folder: str) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative POSIX path."""
    found = {}
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, folder).replace(os.sep, "/")] = hashlib.sha256(stream.read()).hexdigest()
    return found


def materialize(files: Iterable, dest: str) -> None:
    """Lay out a packed tree in `dest` the way a worker does: each PackedFile's source copied to its path."""
    for packed in files:
        target = os.path.join(dest, *packed.path.split("/"))
        if os.path.abspath(packed.source) == os.path.abspath(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(packed.source, target)
