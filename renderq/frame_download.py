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

from renderq.http_client import CoordinatorClient, DownloadRefused, NotFound
from renderq.local_files import file_sha256
from renderq.model import Frame
from renderq.paths import check_file_name, collision_key

__all__ = ["FetchedFrames", "FrameFetcher", "fetch_done_frames"]

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


class FrameFetcher:
    """Downloads a task's done frames into `dest_dir`, each frame once however often it is offered: called while the
    task renders, each frame arrives as soon as it is done; called again at the end, only what is new is fetched.

    A frame is fetched again only when its output changed (a re-render). `on_saved(number)` is called after each
    frame is in the folder."""

    def __init__(self, client: CoordinatorClient, task_id: int, dest_dir: str,
                 on_saved: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.task_id = task_id
        self.dest_dir = dest_dir
        self.on_saved = on_saved
        self.fetched = FetchedFrames()
        self._saved: dict[str, tuple[int, str]] = {}  # collision key -> (frame, name) of the frames saved so far
        self._seen: dict[int, str] = {}  # frame number -> the output SHA-256 already handled

    def fetch(self, frames: list[dict], on_frame: Callable[[int, int], None] | None = None) -> FetchedFrames:
        """Fetch the done frames among `frames` (a /task answer's) not handled yet; `on_frame(index, count)` before
        each. Returns everything fetched so far."""
        # A tiled still's tiles are parts of its one image, which its merge job delivers.
        done = [frame for frame in map(Frame.from_dict, frames) if frame.is_done and not frame.is_tile]
        new = [frame for frame in done if self._seen.get(frame.frame) != (frame.output_sha256 or "")]
        if new:
            os.makedirs(self.dest_dir, exist_ok=True)
        for index, frame in enumerate(new, start=1):
            if on_frame is not None:
                on_frame(index, len(new))
            self._fetch_one(frame)
            # Only once handled: a frame whose download was cut off is offered again by the next call.
            self._seen[frame.frame] = frame.output_sha256 or ""
        return self.fetched

    def _fetch_one(self, frame: Frame) -> None:
        number = frame.frame
        name, problem = _checked_name(frame.output, self._saved, number)
        if name is None:
            self.fetched.skipped.append((number, problem))
            return
        self._saved[collision_key(name)] = (number, name)
        path = _save(self.client, self.task_id, frame, name, self.dest_dir, self.fetched)
        if path:
            if path not in self.fetched.paths:
                self.fetched.paths.append(path)
            if self.on_saved is not None:
                self.on_saved(number)


def fetch_done_frames(client: CoordinatorClient, task: dict, dest_dir: str,
                      on_frame: Callable[[int, int], None] | None = None) -> FetchedFrames:
    """Download the done frames of `task` (a /task answer) into `dest_dir`, keeping files already there with the
    same SHA-256; `on_frame(index, count)` is called before each frame."""
    return FrameFetcher(client, task["task_id"], dest_dir).fetch(task.get("frames") or [], on_frame)


def _checked_name(name: object, saved: dict[str, tuple[int, str]], number: int) -> tuple[str | None, str]:
    """(the name, "") when frame `number` can be saved under it; else (None, why not)."""
    try:
        checked = check_file_name(name)
    except ValueError as error:
        return None, str(error)
    other = saved.get(collision_key(checked))
    if other is not None and other[0] != number:
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
