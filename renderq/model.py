"""RenderQ's shared vocabulary: the statuses of tasks and frames, and the records the coordinator's answers carry.

Standard library only, and Python 3.10 (Blender 3.4's): the add-on bundles this module. The statuses are `str`
enums, so a status compares equal to the string stored in the database or sent over HTTP and JSON-encodes as that
plain string. Every set of statuses the code needs is defined here once.

The records read coordinator answers with `from_dict`, which takes what it knows and ignores the rest (logged at
debug level), so an older client reads a newer coordinator's answers and the other way round. Optional fields a
mapping leaves out get their defaults; a missing required one is a ValueError with a plain sentence.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

__all__ = [
    "FRAME_ACTIVE", "FRAME_FINAL", "FRAME_OPEN", "TASK_APPROVABLE", "TASK_CLAIMABLE", "TASK_FINAL", "TASK_OPEN",
    "TASK_RESUMABLE", "TASK_RETRYABLE",
    "Frame", "FrameReport", "FrameResult", "FrameStatus", "Lease", "Progress", "Task", "TaskStatus", "Worker",
    "WorkerState", "ordered", "page_statuses", "scout_frames", "status_label",
]

log = logging.getLogger("renderq.model")


class _Status(str, enum.Enum):
    """A status that is its own string: `TaskStatus.DONE == "done"`, and f-strings show "done"."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every status as its plain string, in declaration order."""
        return tuple(member.value for member in cls)


class TaskStatus(_Status):
    """Where a task stands (tasks.status)."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    # Its scout frames are done: the rest are held until its owner or an admin approves (or cancels) it.
    AWAITING_APPROVAL = "awaiting_approval"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class FrameStatus(_Status):
    """Where one frame of a task stands (frames.status)."""

    QUEUED = "queued"
    LEASED = "leased"
    RENDERING = "rendering"
    # Not handed out until the task is approved: a frame of a task submitted with scouts that is not a scout.
    HELD = "held"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class FrameReport(_Status):
    """What a worker may report about a frame it holds; `released` gives it back unrendered."""

    RENDERING = "rendering"
    DONE = "done"
    FAILED = "failed"
    RELEASED = "released"


class WorkerState(_Status):
    """How the status page and the add-on describe a worker, from its `enabled` and `alive` flags and its frames."""

    OFFLINE = "offline"
    OFF = "off"
    IDLE = "idle"
    BUSY = "busy"

    @classmethod
    def of(cls, enabled: bool, alive: bool, busy: bool) -> WorkerState:
        """The state of a worker: offline wins, then switched OFF, then whether it holds frames."""
        if not alive:
            return cls.OFFLINE
        if not enabled:
            return cls.OFF
        return cls.BUSY if busy else cls.IDLE


# A paused task is still open: its frames may be rendering, and resuming hands the queued ones out again.
TASK_OPEN = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.AWAITING_APPROVAL})
TASK_FINAL = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELED})
# The tasks whose queued frames are handed out (and may be paused); a paused one may be resumed.
TASK_CLAIMABLE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})
TASK_RESUMABLE = frozenset({TaskStatus.PAUSED})
# The tasks whose scouts are done and whose held frames an approval hands out.
TASK_APPROVABLE = frozenset({TaskStatus.AWAITING_APPROVAL})
# The tasks whose failed frames may be retried: a canceled task is submitted again instead.
TASK_RETRYABLE = frozenset(TaskStatus) - {TaskStatus.CANCELED}
# Frames a worker holds under a lease.
# The frame number of a task's encode job (frames.kind 'encode'): one past the last frame Blender can render, so it
# never meets a rendered frame's number and lists after them all.
VIDEO_FRAME = 1048575
# The kinds of frame row: a frame Blender renders, and the job that encodes the task's video from them.
FRAME_KIND_RENDER = "render"
FRAME_KIND_ENCODE = "encode"
# A tiled still (renderq.tiles): its tiles are frame rows of kind "tile" numbered 1 to columns x rows, and its merge
# job, added once every tile is done, is frame MERGE_FRAME of kind "merge". Below VIDEO_FRAME, so the claim hands it
# to any worker that renders the task.
FRAME_KIND_TILE = "tile"
FRAME_KIND_MERGE = "merge"
MERGE_FRAME = VIDEO_FRAME - 1
FRAME_KINDS = (FRAME_KIND_RENDER, FRAME_KIND_ENCODE, FRAME_KIND_TILE, FRAME_KIND_MERGE)
# The video containers a task may ask for; "scene" takes the container and codec of the scene's own FFmpeg output.
VIDEO_CONTAINERS = ("mp4", "mov", "webm")
# The order a task's frames are handed out in: "sampled" (the whole range thinly first, then filled in) or
# "sequential" (lowest number first). coordinator/claim_order.py builds them.
RENDER_ORDERS = ("sampled", "sequential")
DEFAULT_RENDER_ORDER = "sampled"

FRAME_ACTIVE = frozenset({FrameStatus.LEASED, FrameStatus.RENDERING})
FRAME_OPEN = frozenset({FrameStatus.QUEUED, FrameStatus.LEASED, FrameStatus.RENDERING, FrameStatus.HELD})
FRAME_FINAL = frozenset({FrameStatus.DONE, FrameStatus.FAILED, FrameStatus.CANCELED})


# How people read a status whose plain string is not a sentence (the page, the CLI and the add-on show these).
STATUS_LABELS = {TaskStatus.AWAITING_APPROVAL.value: "waiting for approval"}


def status_label(status: str) -> str:
    """A task or frame status as the page, the CLI and the add-on show it."""
    return STATUS_LABELS.get(str(status), str(status))


def scout_frames(frames: range, count: int) -> list[int]:
    """The `count` frames of the range that render first as scouts: the first, the last and the rest spread evenly
    between them (one scout: the first frame)."""
    if count <= 1:
        return list(frames[:count])
    last = len(frames) - 1
    return sorted({frames[round(i * last / (count - 1))] for i in range(count)})


def ordered(statuses: frozenset[_Status]) -> tuple[str, ...]:
    """A set of statuses as plain strings in declaration order (for messages, SQL and JSON)."""
    kind = type(next(iter(statuses)))
    return tuple(value for value in kind.values() if value in statuses)


def page_statuses() -> dict[str, Any]:
    """The sets the status page's scripts need, as JSON lists, and how a status reads to people (`labels`): the
    page keeps no copy of its own."""
    return {
        "task_final": list(ordered(TASK_FINAL)),
        "task_open": list(ordered(TASK_OPEN)),
        "task_claimable": list(ordered(TASK_CLAIMABLE)),
        "task_resumable": list(ordered(TASK_RESUMABLE)),
        "task_approvable": list(ordered(TASK_APPROVABLE)),
        "task_retryable": list(ordered(TASK_RETRYABLE)),
        "frame_final": list(ordered(FRAME_FINAL)),
        "labels": dict(STATUS_LABELS),
    }


# -- records -----------------------------------------------------------------------------------------------------

R = TypeVar("R", bound="_Record")


class _Record:
    """from_dict and to_dict for the dataclasses below. `_nested` names the fields that hold records (a
    list field holds a list of them) and the reader of each."""

    _nested: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    # The fields that hold a record or a list of them (to_dict turns those into dicts too).
    _record_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[R], mapping: Mapping[str, Any]) -> R:
        """The record from a coordinator answer (or a store row): unknown keys ignored, missing optional ones
        defaulted; ValueError when a required one is missing or the mapping is no mapping."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"a {cls.__name__} must be an object, not {type(mapping).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]  # cls is a dataclass; mypy types it as the base
        unknown = sorted(key for key in mapping if key not in known)
        if unknown:
            log.debug("%s: ignoring unknown keys %s", cls.__name__, ", ".join(map(str, unknown)))
        values: dict[str, Any] = {}
        for name, spec in known.items():
            if name in mapping:
                values[name] = cls._read(name, mapping[name])
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ValueError(f"a {cls.__name__} needs {name!r}")
        return cls(**values)

    @classmethod
    def _read(cls, name: str, value: Any) -> Any:
        reader = cls._nested.get(name)
        if reader is None or value is None:
            return value
        if isinstance(value, list):
            return [reader(item) for item in value]
        return reader(value)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values, keys in field order (statuses stay `str` enums, which encode as their
        strings). Nested records become dicts; other values are not copied."""
        # A dataclass's __dict__ holds exactly its fields, in order; only the fields holding records need more.
        values = dict(self.__dict__)
        for name in self._record_fields:
            values[name] = _plain(values[name])
        return values


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list) and value and isinstance(value[0], _Record):
        return [item.to_dict() for item in value]
    return value


def _status(kind: type[_Status]) -> Callable[[Any], Any]:
    """A reader that makes a known status string its enum member and leaves anything else as it came (a newer
    coordinator may know statuses this client does not: it shows them, it does not crash on them)."""

    def read(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            return value

    return read


@dataclasses.dataclass
class Frame(_Record):
    """One frame of a task, as GET /task lists it (`worker` is the worker's name)."""

    frame: int
    status: FrameStatus | str = FrameStatus.QUEUED
    worker: str | None = None
    attempts: int = 0
    failures: int = 0
    failed_on: list[str] = dataclasses.field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    render_seconds: float | None = None
    output: str | None = None
    output_sha256: str | None = None
    output_size: int | None = None
    error: str | None = None
    log_tail: str | None = None
    preview_sha256: str | None = None  # a small PNG of the frame (GET /download_frame?inline=1), when it has one
    # "render", "encode" for the task's video (its output is the video file), "tile" for a part of a tiled still,
    # "merge" for the tiled still's whole image.
    kind: str = FRAME_KIND_RENDER

    _nested: ClassVar[dict[str, Callable[[Any], Any]]] = {"status": _status(FrameStatus)}

    @property
    def is_done(self) -> bool:
        """Whether the frame rendered (its file is on the coordinator unless the task's files were deleted)."""
        return self.status == FrameStatus.DONE

    @property
    def is_video(self) -> bool:
        """Whether this row is the task's encode job, whose output is the video."""
        return self.kind == FRAME_KIND_ENCODE

    @property
    def is_tile(self) -> bool:
        """Whether this row is a tile of a still: a part its merge job puts together, not an output of the task."""
        return self.kind == FRAME_KIND_TILE


@dataclasses.dataclass
class Progress(_Record):
    """A task's frame counts and finish estimate (the `progress` of a task summary)."""

    total: int = 0
    done: int = 0
    failed: int = 0
    rendering: int = 0
    leased: int = 0
    queued: int = 0
    canceled: int = 0
    # Frames held until the task is approved (the frames of a task with scouts that are not scouts).
    held: int = 0
    percent: float | None = None
    eta_seconds: float | None = None
    # The range the ETA is likely within while few frames are done (null when there is no estimate).
    eta_low_seconds: float | None = None
    eta_high_seconds: float | None = None
    workers_rendering: int = 0
    current: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.percent is None:
            self.percent = 100.0 * self.done / self.total if self.total else 0.0


@dataclasses.dataclass
class Task(_Record):
    """A task as GET /task and GET /tasks describe it; the detail-only fields are None in a summary."""

    task_id: int
    name: str = ""
    status: TaskStatus | str = TaskStatus.QUEUED
    priority: int = 0
    frame_start: int = 0
    frame_end: int = 0
    frame_step: int = 1
    workers: list[str] = dataclasses.field(default_factory=list)
    submitted_by: str = ""
    owner: str = ""
    blend_sha256: str = ""
    blend_filename: str = ""
    main_file: str = ""
    blender_version: str | None = None
    blender_version_exact: bool = False
    missing_assets_count: int = 0
    files_count: int | None = None
    files_bytes: int | None = None
    files_deleted: bool = False
    needs_python: bool = False
    # The video the task asks for once its frames are done ({"container": ...}), None for none.
    video: dict[str, Any] | None = None
    # "CxR" for a still split into tiles (renderq.tiles), "" for any other task.
    tiles: str = ""
    frame_timeout: float | None = None
    no_progress_timeout: float | None = None
    # What a worker must offer: every tag, the engine (Blender's id; '' when not known) and, for "GPU", a GPU.
    tags: list[str] = dataclasses.field(default_factory=list)
    render_engine: str = ""
    device: str = ""
    # The order its frames are handed out in (RENDER_ORDERS).
    order: str = DEFAULT_RENDER_ORDER
    waiting_reason: str | None = None
    # How many of its frames render first as scouts (0: none), and what the frames left would take on the farm as
    # it is now ({wall_seconds, render_hours, cost, currency, energy_kwh, workers}; None when not estimated).
    scout_frames: int = 0
    estimate: dict[str, Any] | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    progress: Progress = dataclasses.field(default_factory=Progress)
    failed_frames: list[int] = dataclasses.field(default_factory=list)
    blocked_workers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Only in a task's detail:
    settings: dict[str, Any] | None = None
    missing_assets: list[str] | None = None
    latest_done: Frame | None = None
    frames: list[Frame] | None = None
    frames_next: int | None = None

    _nested: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "status": _status(TaskStatus), "progress": Progress.from_dict, "latest_done": Frame.from_dict,
        "frames": Frame.from_dict,
    }
    _record_fields: ClassVar[tuple[str, ...]] = ("progress", "latest_done", "frames")

    @property
    def is_final(self) -> bool:
        """Whether the task has ended (done, failed or canceled): nothing about it changes any more."""
        return self.status in TASK_FINAL

    @property
    def awaits_approval(self) -> bool:
        """Whether its scouts are done and it waits for its owner or an admin to approve or cancel it."""
        return self.status in TASK_APPROVABLE

    def done_frames(self) -> list[Frame]:
        """The frames of this answer that rendered (none when it carries no frames)."""
        return [frame for frame in self.frames or [] if frame.is_done]


@dataclasses.dataclass
class Worker(_Record):
    """A worker as GET /list_workers describes it (the store's row has the same names for what both hold)."""

    worker_id: int
    name: str = ""
    host: str = ""
    blender_version: str = ""
    cpu_count: int = 0
    enabled: bool = True
    allows_python: bool = False
    # What its FFmpeg encodes ("ffmpeg 5.1 (libx264, ...)"); "" when it has none.
    video_encoders: str = ""
    alive: bool | None = None
    last_seen: float | None = None
    registered_at: float | None = None
    current: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    frames_done: int = 0
    frames_failed: int = 0
    mean_frame_seconds: float | None = None
    # The Cycles devices its Blender sees ({name, type, id, use}), the engines it renders, its tags.
    devices: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    engines: list[str] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=list)
    tags_by_admin: bool = False

    @property
    def state(self) -> WorkerState:
        """Offline, switched OFF, idle or busy (a worker whose liveness is unknown counts as alive)."""
        return WorkerState.of(bool(self.enabled), self.alive is not False, bool(self.current))


@dataclasses.dataclass(eq=False)
class Lease(_Record):
    """One frame a worker holds, as the coordinator's claim hands it out, plus what the worker learns meanwhile
    (revoked, started_at, finished)."""

    task_id: int
    frame: int
    lease_id: str
    blend_sha256: str
    blend_filename: str
    task_name: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    attempt: int = 1
    # The main .blend's path inside the task's tree; None from coordinators that send one .blend per task.
    main_file: str | None = None
    # The task's limits in seconds (None: no limit), and whether it is marked as needing the file's Python.
    frame_timeout: float | None = None
    no_progress_timeout: float | None = None
    needs_python: bool = False
    # The task's Cycles device: "GPU", "CPU", or "" for the file's own choice.
    device: str = ""
    # The Blender version the task asks for ("" when any), how many files its tree has, and the lease's length
    # in seconds: told by the claim, read by nothing in the worker yet.
    blender_version: str = ""
    files_count: int | None = None
    lease_seconds: float | None = None
    # "render", or "encode": then `video` holds what to encode ({"container": ...}; the frames come from GET
    # /video_frames) and Blender renders nothing.
    kind: str = FRAME_KIND_RENDER
    video: dict[str, Any] | None = None
    # "tile" and "merge": the tiling ({"columns", "rows", "frame": the still's frame number}; a tile's own number
    # is its frame number).
    tile: dict[str, Any] | None = None
    revoked: bool = False
    started_at: float | None = None
    # Set when Blender is done with the frame, so background retries of the "rendering" report stop.
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> Lease:
        """A lease from the `frame` object of a claim answer, its values checked and normalised."""
        lease = super().from_dict(mapping)
        lease.task_id, lease.frame = int(lease.task_id), int(lease.frame)
        lease.lease_id, lease.blend_sha256 = str(lease.lease_id), str(lease.blend_sha256)
        lease.blend_filename, lease.task_name = str(lease.blend_filename), str(lease.task_name or "")
        lease.settings = dict(lease.settings or {})
        lease.attempt = int(lease.attempt or 1)
        lease.main_file = str(lease.main_file) if lease.main_file else None
        lease.frame_timeout = _positive_seconds(lease.frame_timeout)
        lease.no_progress_timeout = _positive_seconds(lease.no_progress_timeout)
        lease.needs_python = lease.needs_python is True
        lease.kind = lease.kind if lease.kind in FRAME_KINDS else FRAME_KIND_RENDER
        lease.tile = {key: int(lease.tile[key]) for key in ("columns", "rows", "frame")} \
            if isinstance(lease.tile, Mapping) else None
        lease.video = dict(lease.video) if isinstance(lease.video, Mapping) else None
        # What only the worker knows never comes from the coordinator.
        lease.revoked, lease.started_at, lease.finished = False, None, threading.Event()
        return lease

    from_claim = from_dict

    def to_dict(self) -> dict[str, Any]:
        """The lease as the claim answer carried it (without the worker's own state)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("revoked", "started_at", "finished")}

    def __str__(self) -> str:
        return f"task {self.task_id} frame {self.frame}"


def _positive_seconds(value: Any) -> float | None:
    """A limit from a claim: a positive finite number of seconds, else None (no limit)."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


@dataclasses.dataclass
class FrameResult(_Record):
    """What became of one frame a worker asked its Blender session for."""

    frame: int
    ok: bool = False  # render_write seen AND the file exists
    output_path: str | None = None  # absolute path of the written file
    started_at: float | None = None  # wall clock (time.time() inside Blender) at render_pre
    ended_at: float | None = None  # wall clock at render_write
    render_seconds: float | None = None  # render_write - render_pre, monotonic, inside Blender
    error: str | None = None  # plain sentence when not ok
    log_tail: str = ""  # the last lines of Blender output seen during this frame
    aborted: bool = False  # True when abort() stopped it
    timed_out: bool = False  # True when a limit of render() stopped it
    needs_python: bool = False  # True when refused because the file holds Python this session may not run
    preview_path: str | None = None  # a small PNG of the frame, for a format a browser cannot show (frame_script.py)

    @classmethod
    def failure(cls, frame: int, error: str, log_tail: str = "") -> FrameResult:
        """A frame that did not render, and why."""
        return cls(frame=frame, ok=False, error=error, log_tail=log_tail)
