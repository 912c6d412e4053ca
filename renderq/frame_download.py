"""Fetching a task's rendered frames into a folder: one loop for the command line and the Blender add-on.

A frame is saved under its output name only when that name passes the path rule (renderq.paths) and is not, on a
case-insensitive or normalizing file system, the name of a frame saved before it. Any other frame is skipped and
reported, as is one the coordinator cannot send or whose file cannot be written under its name; the rest still
arrive. Only an unreachable coordinator, a refused token or an unwritable folder stops the whole download.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from renderq.http_client import CoordinatorClient, DownloadRefused, NotFound, file_sha256
from renderq.model import Frame
from renderq.paths import check_file_name, collision_key

__all__ = ["FetchedFrames", "fetch_done_frames"]

# Write errors caused by the one name (too long or not allowed by this file system), not by the folder.
_NAME_ERRNOS = frozenset(code for code in (errno.ENAMETOOLONG, errno.EINVAL, getattr(errno, "EILSEQ", None))
                         if code is not None)


@dataclass
class FetchedFrames:
    """What a download left in the folder."""

    paths: list[str] = field(default_factory=list)
    """Every done frame now in the folder, downloaded or already there."""
    kept: int = 0
    """How many of `paths` were there already with the same bytes."""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(frame number, why) of each done frame not saved."""


def fetch_done_frames(client: CoordinatorClient, task: dict, dest_dir: str,
                      on_frame: Callable[[int, int], None] | None = None) -> FetchedFrames:
    """Download the done frames of `task` (a /task answer) into `dest_dir`, keeping files already there with the
    same SHA-256; `on_frame(index, count)` is called before each frame."""
    done = [frame for frame in map(Frame.from_dict, task.get("frames") or []) if frame.is_done]
    if done:
        os.makedirs(dest_dir, exist_ok=True)
    fetched = FetchedFrames()
    saved: dict[str, tuple[int, str]] = {}  # collision key -> (frame, name) of the frames saved so far
    for index, frame in enumerate(done, start=1):
        if on_frame is not None:
            on_frame(index, len(done))
        number = frame.frame
        name, problem = _checked_name(frame.output, saved)
        if name is None:
            fetched.skipped.append((number, problem))
            continue
        saved[collision_key(name)] = (number, name)
        path = _save(client, task["task_id"], frame, name, dest_dir, fetched)
        if path:
            fetched.paths.append(path)
    return fetched


def _checked_name(name: object, saved: dict[str, tuple[int, str]]) -> tuple[str | None, str]:
    """(the name, "") when the frame can be saved under it; else (None, why not)."""
    try:
        checked = check_file_name(name)
    except ValueError as error:
        return None, str(error)
    other = saved.get(collision_key(checked))
    if other is not None:
        return None, (f"its file name {name!r} would be the same file as frame {other[0]}'s {other[1]!r} on Windows "
                      "or macOS")
    return checked, ""


def _save(client: CoordinatorClient, task_id: int, frame: Frame, name: str, dest_dir: str,
          fetched: FetchedFrames) -> str | None:
    """The frame's path in `dest_dir` under its checked `name` once it is there, or None when it was skipped (noted
    in `fetched`)."""
    number, expected = frame.frame, frame.output_sha256
    existing = os.path.join(dest_dir, name)
    # A link is never read through nor kept: download_frame refuses to write there.
    if expected and not os.path.islink(existing) and os.path.isfile(existing) and file_sha256(existing) == expected:
        fetched.kept += 1
        return existing
    try:
        return client.download_frame(task_id, number, dest_dir, expected_sha256=expected, save_as=name)
    except (DownloadRefused, NotFound) as error:
        # Refused here (a link or folder in the way, a file that does not match), or gone meanwhile.
        fetched.skipped.append((number, error.message))
    except OSError as error:
        if error.errno not in _NAME_ERRNOS:
            raise
        fetched.skipped.append((number, f"{name!r} cannot be written in {dest_dir}: {error.strerror or error}"))
    return None
