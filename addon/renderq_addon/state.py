"""What this Blender session knows about the farm, for the panels and for scripts.

Kept in Python, not in Blender properties: none of it belongs in the .blend, and writing to the scene would touch
the artist's file. Only the main thread changes it (job results arrive through `jobs.drain`), so the panels read it
without locks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from renderq.model import TASK_FINAL
# bl_info's version, set once by the package's __init__ as it loads: the modules read it here rather than import
# the package that imports them.
ADDON_VERSION: tuple[int, ...] = (0, 0, 0)


@dataclass
class SubmitProgress:
    """The running submit, as the panel shows it."""

    active: bool = False
    stage: str = ""
    """One of "save", "trace", "verify", "hash", "upload", "submit"."""
    done: int = 0
    total: int = 0
    text: str = ""


@dataclass
class ConnectionCheck:
    """The outcome of the last "Test connection"."""

    running: bool = False
    ok: bool | None = None
    text: str = ""


@dataclass
class Session:
    """Everything the add-on remembers while Blender runs."""

    last_task_id: int | None = None
    last_error: str | None = None
    last_message: str = ""
    submit: SubmitProgress = field(default_factory=SubmitProgress)
    missing_assets: list[str] = field(default_factory=list)
    """Assets the last submit found missing (shown until the next submit)."""
    outside_files: list[str] = field(default_factory=list)
    """Files and links from outside the project folder, and hidden files, that stopped the last submit."""
    connection: ConnectionCheck = field(default_factory=ConnectionCheck)
    workers: list[dict] = field(default_factory=list)
    workers_error: str = ""
    workers_fetched_at: float = 0.0
    session_task_ids: list[int] = field(default_factory=list)
    """Tasks submitted from this session, newest first."""
    tasks: dict[int, dict] = field(default_factory=dict)
    """The latest known state of every task shown, by id (summaries or full tasks, see docs/api.md)."""
    my_task_ids: list[int] = field(default_factory=list)
    """The user's tasks from the coordinator's list, newest first (when "all my tasks" is on)."""
    tasks_error: str = ""
    tasks_fetched_at: float = 0.0
    announced: set[int] = field(default_factory=set)
    """Tasks whose end was already announced."""
    thumbnails: dict[int, tuple[int, str]] = field(default_factory=dict)
    """task id -> (frame, preview key) of the thumbnail shown."""
    downloads: dict[int, str] = field(default_factory=dict)
    """task id -> text about its running or last frame download."""


SESSION = Session()


def reset() -> None:
    """Forget everything, in place so that every module keeps seeing the same object."""
    SESSION.__dict__.update(Session().__dict__)


def last_submitted_task_id() -> int | None:
    """The task id of this session's last successful submit, or None."""
    return SESSION.last_task_id


def last_error() -> str | None:
    """The last error sentence shown to the artist, or None when the last action went well."""
    return SESSION.last_error


def set_error(sentence: str | None) -> None:
    """Remember the error sentence the artist was told (None clears it)."""
    SESSION.last_error = sentence


def remember_task(task: dict, *, from_session: bool = False) -> None:
    """Store the latest state of a task; `from_session` marks it as submitted from this Blender."""
    task_id = task.get("task_id")
    if not isinstance(task_id, int):
        return
    known = SESSION.tasks.get(task_id)
    if known is not None and "frames" in known and "frames" not in task:
        # A summary must not wipe the frames a full answer brought (the thumbnail and failed frames use them).
        task = {**task, "frames": known["frames"]}
    SESSION.tasks[task_id] = task
    if from_session and task_id not in SESSION.session_task_ids:
        SESSION.session_task_ids.insert(0, task_id)


def shown_task_ids(include_mine: bool) -> list[int]:
    """The tasks the monitor shows: this session's, then (optionally) the user's other tasks, newest first."""
    ids = list(SESSION.session_task_ids)
    if include_mine:
        ids += [task_id for task_id in SESSION.my_task_ids if task_id not in ids]
    return [task_id for task_id in ids if task_id in SESSION.tasks]


def is_final(task: dict | None) -> bool:
    """Whether a task has ended (done, failed or canceled)."""
    return bool(task) and task.get("status") in TASK_FINAL


def age(timestamp: float) -> float:
    """Seconds since `timestamp` (time.monotonic based)."""
    return time.monotonic() - timestamp


def forget_task(task_id: int) -> None:
    """Stop showing a task in the monitor (it stays on the farm)."""
    if task_id in SESSION.session_task_ids:
        SESSION.session_task_ids.remove(task_id)
    if task_id in SESSION.my_task_ids:
        SESSION.my_task_ids.remove(task_id)


def as_int(value: Any, default: int = 0) -> int:
    """An int from an API value that may be missing or null."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def register() -> None:
    """Start each enable with a clean session."""
    reset()


def unregister() -> None:
    """Nothing of the session outlives the add-on."""
    reset()
