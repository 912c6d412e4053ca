"""Who renders which frame: registration, leases, reports, retries, cancel; the read side is coordinator.reading.

Plain Python over the store, with an injectable clock, so every rule here is testable without Flask or HTTP.
The coordinator's clock alone decides when a lease expires; times sent by workers are only recorded.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from renderq.blend_header import version_key
from renderq.capabilities import task_needs
from renderq.model import (
    DEFAULT_RENDER_ORDER, FRAME_ACTIVE, FRAME_FINAL, FRAME_KIND_ENCODE, FRAME_KIND_MERGE, FRAME_KIND_TILE,
    RENDER_ORDERS, TASK_OPEN, TASK_RETRYABLE, FrameReport, FrameStatus, TaskStatus, scout_frames,
)
from renderq.paths import collision_key
from renderq.tiles import parse_tiles

from . import estimate, eta
from .errors import BadRequest, Conflict, Forbidden, NotFound
from .policy import Policy
from .reading import FRAMES_PAGE, MAX_FRAMES_PAGE, FarmReader, no_task_sentence, no_worker_sentence
from .store import OutputNameTaken, Store
from .store.task_writes import LogEnd

__all__ = ["FRAMES_PAGE", "MAX_FRAMES_PAGE", "MAX_FRAMES_PER_TASK", "Policy", "Scheduler", "TaskFile", "TaskSpec",
           "check_timeout"]

Clock = Callable[[], float]

# The hard ceiling whatever the coordinator's --max-task-frames (checked by the API before any work is done).
MAX_FRAMES_PER_TASK = 1_000_000
PRIORITY_LIMIT = 1_000_000
# A task's frame_timeout and no_progress_timeout: at least a second, at most a week.
TIMEOUT_MIN_SECONDS = 1.0
TIMEOUT_MAX_SECONDS = 7 * 86400.0
# Frames in one page of GET /video_frames (about 130 bytes each as JSON).
VIDEO_FRAMES_PAGE = 5000
# Seconds between the lease expiries a claim runs (the coordinator's reaper runs one every second too).
EXPIRY_INTERVAL = 1.0


@dataclasses.dataclass
class TaskFile:
    """One file of a task's packed tree."""

    path: str
    sha256: str
    size: int


@dataclasses.dataclass
class TaskSpec:
    """A validated submission: the main .blend inside a tree of files, and what to render of it."""

    name: str
    files: Sequence[TaskFile]
    main_file: str
    frame_start: int
    frame_end: int
    frame_step: int = 1
    priority: int = 0
    workers: Sequence[str] = ()
    submitted_by: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    blender_version: str = ""
    blender_version_exact: bool = False
    missing_assets: Sequence[str] = ()
    # Who may cancel it besides an admin (the identity of the token that submitted it).
    owner: str = ""
    # The file runs Python (scripts, drivers): only workers that allow it render it.
    needs_python: bool = False
    # Seconds; None takes the Policy's default.
    frame_timeout: float | None = None
    no_progress_timeout: float | None = None
    # What a worker must offer: every tag, the engine (as Blender names it; '' for any) and, for "GPU", a GPU.
    tags: Sequence[str] = ()
    render_engine: str = ""
    device: str = ""
    # The video to encode once every frame is done ({"container": "mp4" | "mov" | "webm" | "scene"}), or None.
    video: dict[str, Any] | None = None
    # URLs told of the task's events (coordinator/notify.py), besides the farm-wide one.
    notify: Sequence[str] = ()
    # The order its frames are claimed in (renderq.model.RENDER_ORDERS; coordinator/claim_order.py).
    order: str = DEFAULT_RENDER_ORDER
    # Frames rendered first, spread over the range; the others are held until the task is approved (0: none).
    scout_frames: int = 0
    # "CxR" to split the still into tiles (renderq.tiles), '' for none; whether the submit said the scene denoises.
    tiles: str = ""
    denoising: bool = False

    @property
    def main(self) -> TaskFile:
        return next(f for f in self.files if f.path == self.main_file)

    def frame_numbers(self) -> range:
        """The task's frame rows: its frames, or a tiled still's tiles (1 to columns x rows)."""
        if self.tiles:
            columns, rows = tiles_of(self)
            return range(1, columns * rows + 1)
        return range(self.frame_start, self.frame_end + 1, self.frame_step)


def tiles_of(spec: TaskSpec) -> tuple[int, int]:
    """A tiled submit's (columns, rows), or BadRequest saying in one sentence why it cannot be tiled."""
    try:
        columns, rows = parse_tiles(spec.tiles)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    count = len(range(spec.frame_start, spec.frame_end + 1, spec.frame_step))
    if count != 1:
        raise BadRequest(f"only a single frame can be split into tiles, and this task has {count} frames")
    if spec.video:
        raise BadRequest("a task split into tiles is a still and cannot also make a video")
    if spec.scout_frames:
        raise BadRequest("a still split into tiles has no scout frames: it is one image, rendered at once")
    if spec.denoising:
        raise BadRequest("a denoised scene cannot be split into tiles: each tile denoised alone leaves seams, and "
                         "RenderQ does not yet denoise the merged image; turn denoising off or render it whole")
    return columns, rows


class Scheduler(FarmReader):
    """The farm's rules, applied to the state in a Store (its descriptions of tasks and workers: FarmReader)."""

    def __init__(self, store: Store, policy: Policy | None = None, clock: Clock = time.time) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.clock = clock
        self._last_expiry = float("-inf")
        self._live_count = (float("-inf"), 0)
        self._eta = eta.EtaCache()
        self._costs_left = estimate.CostLeftCache()
        # Told of what happened, for the coordinator's metrics: ("dispatched" | "finished" | "expired" |
        # "report:<status>", how many). Plain callbacks keep the scheduler free of any metrics library.
        self.count: Callable[[str, int], None] = _count_nothing

    # -- workers --------------------------------------------------------------------------------------------------

    def register_worker(self, name: str, host: str, blender_version: str, cpu_count: int,
                        allows_python: bool = False, offered: dict[str, Any] | None = None) -> dict:
        """Register (or re-register) a worker by name; allows_python: it may run Python stored in .blend files;
        offered: its devices, engines, tags, FFmpeg's encoders and their bits (see WorkerQueries.upsert_worker)."""
        worker = self.store.upsert_worker(name, host, blender_version, version_key(blender_version), cpu_count,
                                          self.clock(), allows_python, offered)
        return {
            "worker_id": worker["worker_id"],
            "name": worker["name"],
            "enabled": bool(worker["enabled"]),
            "allows_python": bool(worker["allows_python"]),
            "tags": worker["tags"],
            "tags_by_admin": bool(worker["tags_by_admin"]),
            **self.liveness_advice(),
            "poll_seconds": self.idle_poll_seconds(),
        }

    def idle_poll_seconds(self) -> float:
        """How long an idle worker should wait before asking for work again, from the number of live workers."""
        shortest, longest = self.policy.idle_poll_limits
        return min(longest, max(shortest, self.live_workers() / self.policy.idle_claims_per_second))

    def heartbeat(self, worker_id: int, leases: Sequence[str]) -> dict:
        """Mark the worker seen and renew its leases: whether it is ON, the leases it lost, and how often to beat
        and how long a lease lives from now on (both grow with the farm)."""
        now = self.clock()
        advice = self.liveness_advice()
        answer = self.store.heartbeat(worker_id, list(leases), now, now + advice["lease_seconds"])
        if answer is None:
            raise NotFound(no_worker_sentence(worker_id))
        enabled, revoked = answer
        return {"enabled": enabled, "revoked": revoked, **advice}

    def set_worker_enabled(self, enabled: bool, worker_id: int | None = None, name: str | None = None) -> dict:
        worker = self._worker(worker_id) if worker_id is not None else self._worker_by_name(name or "")
        self.store.set_worker_enabled(worker["worker_id"], enabled)
        return self.describe_worker(self._worker(worker["worker_id"]))

    def set_worker_tags(self, tags: Sequence[str], worker_id: int | None = None, name: str | None = None) -> dict:
        """An admin sets a worker's tags (they then outlast the worker's own --tag); returns the worker."""
        worker = self._worker(worker_id) if worker_id is not None else self._worker_by_name(name or "")
        self.store.set_worker_tags(worker["worker_id"], tags)
        return self.describe_worker(self._worker(worker["worker_id"]))

    # -- tasks ----------------------------------------------------------------------------------------------------

    def submit_task(self, spec: TaskSpec) -> dict:
        frames = spec.frame_numbers()
        if len(frames) > MAX_FRAMES_PER_TASK:
            raise BadRequest(f"a task may have at most {MAX_FRAMES_PER_TASK} frames, not {len(frames)}")
        for field in ("frame_timeout", "no_progress_timeout"):
            check_timeout(field, getattr(spec, field))
        if spec.order not in RENDER_ORDERS:
            raise BadRequest(f"'order' must be one of {', '.join(RENDER_ORDERS)}, not {spec.order!r}")
        if spec.scout_frames and not 1 <= spec.scout_frames < len(frames):
            raise BadRequest(f"a task of {len(frames)} frames may have 1 to {len(frames) - 1} scout frames, not "
                             f"{spec.scout_frames}: the scouts render first and the rest waits for approval")
        frame_timeout = spec.frame_timeout if spec.frame_timeout is not None else self.policy.frame_timeout
        task = {
            "name": spec.name,
            "priority": spec.priority,
            "frame_start": spec.frame_start,
            "frame_end": spec.frame_end,
            "frame_step": spec.frame_step,
            "submitted_by": spec.submitted_by,
            "blend_sha256": spec.main.sha256,
            "blend_filename": spec.main_file.rsplit("/", 1)[-1],
            "main_file": spec.main_file,
            "blender_version": spec.blender_version,
            "blender_version_key": version_key(spec.blender_version),
            "blender_version_exact": spec.blender_version_exact,
            "missing_assets": list(spec.missing_assets),
            "settings": spec.settings,
            "created_at": self.clock(),
            "owner": spec.owner,
            "needs_python": spec.needs_python,
            "video": dict(spec.video) if spec.video else None,
            "tiles": "{}x{}".format(*tiles_of(spec)) if spec.tiles else "",
            "frame_timeout": frame_timeout or None,
            "no_progress_timeout": (spec.no_progress_timeout if spec.no_progress_timeout is not None
                                    else self.policy.no_progress_timeout),
            "tags": list(spec.tags),
            "render_engine": spec.render_engine,
            "device": spec.device,
            "needs": task_needs(spec.render_engine, spec.device),
            "notify": list(spec.notify),
            "render_order": spec.order,
            "scouts": scout_frames(frames, spec.scout_frames),
        }
        files = [(f.path, f.sha256, f.size) for f in spec.files]
        task_id = self.store.insert_task(task, list(frames), list(spec.workers), files)
        return self.task_detail(task_id, with_frames=False)

    def cancel_task(self, task_id: int, by_owner: str | None = None) -> dict:
        """Cancel the task's frames not rendered yet. by_owner: the artist asking, who may cancel only their own
        tasks (None: an admin, who may cancel any)."""
        task = self._task(task_id)
        if by_owner is not None and by_owner != task["owner"]:
            raise Forbidden(f"task {task_id} belongs to {task['owner'] or 'no artist'}; "
                            "an artist may cancel only their own tasks")
        if not self.store.cancel_task(task_id, self.clock()):
            raise Conflict(f"task {task_id} has already ended ({task['status']})")
        return self.task_detail(task_id, with_frames=False)

    def approve_task(self, task_id: int, by_owner: str | None = None) -> dict:
        """Render the rest of a task whose scouts are done: its held frames are queued. by_owner as for cancel."""
        task = self._task(task_id)
        if by_owner is not None and by_owner != task["owner"]:
            raise Forbidden(f"task {task_id} belongs to {task['owner'] or 'no artist'}; "
                            "an artist may approve only their own tasks")
        if not self.store.approve_task(task_id):
            raise Conflict(f"task {task_id} is not waiting for approval ({task['status']}); only a task whose "
                           "scout frames are done can be approved")
        return self.task_detail(task_id, with_frames=False)

    def set_task_priority(self, task_id: int, priority: int) -> dict:
        """Change a task's priority: higher renders first, from the next frame claimed on."""
        self._task(task_id)
        if not -PRIORITY_LIMIT <= priority <= PRIORITY_LIMIT:
            raise BadRequest(f"priority must be between {-PRIORITY_LIMIT} and {PRIORITY_LIMIT}, not {priority}")
        self.store.set_task_priority(task_id, priority)
        return self.task_detail(task_id, with_frames=False)

    def pause_task(self, task_id: int) -> dict:
        """Stop handing out the task's queued frames; frames being rendered finish."""
        task = self._task(task_id)
        if not self.store.pause_task(task_id):
            if task["status"] == TaskStatus.PAUSED:
                raise Conflict(f"task {task_id} is already paused")
            raise Conflict(f"task {task_id} has already ended ({task['status']})")
        return self.task_detail(task_id, with_frames=False)

    def resume_task(self, task_id: int) -> dict:
        """Hand out a paused task's frames again."""
        task = self._task(task_id)
        if not self.store.resume_task(task_id):
            raise Conflict(f"task {task_id} is not paused ({task['status']})")
        return self.task_detail(task_id, with_frames=False)

    def retry_failed_frames(self, task_id: int) -> dict:
        """Queue the task's failed frames again with their failures reset, and unblock the workers blocked from
        it; the task runs again. A task with blocked workers but no failed frames is only unblocked."""
        task = self._task(task_id)
        if task["status"] not in TASK_RETRYABLE:
            raise Conflict(f"task {task_id} was canceled; submit it again to render its failed frames")
        blocked = self.store.blocked_workers_many([task_id], self.policy.bad_worker_failures)[task_id]
        if not task["frames_failed"] and not blocked:
            raise Conflict(f"task {task_id} has no failed frames and no blocked workers")
        self.store.retry_failed_frames(task_id)
        return self.task_detail(task_id, with_frames=False)

    def task_manifest(self, task_id: int) -> dict:
        """The task's tree: its main file and every file's path, hash and size."""
        task = self._task(task_id)
        return {"task_id": task_id, "main_file": task["main_file"] or task["blend_filename"],
                "files": self.store.task_files(task_id)}

    def disk_usage(self) -> list[dict]:
        """Bytes used by each task's files, largest first."""
        usage = self.store.task_disk_bytes()
        tasks = {t["task_id"]: t for t in self.store.list_tasks(limit=1_000_000)}
        rows = [{"task_id": task_id, "name": tasks[task_id]["name"], "status": tasks[task_id]["status"],
                 "bytes": size} for task_id, size in usage.items() if task_id in tasks]
        return sorted(rows, key=lambda row: (-row["bytes"], row["task_id"]))

    def forget_task_files(self, task_id: int) -> list[str]:
        """Forget an ended task's inputs and frames; returns the hashes no other task uses."""
        task = self._task(task_id)
        if task["status"] in TASK_OPEN:
            raise Conflict(f"task {task_id} is still {task['status']}; cancel it before deleting its files")
        return self.store.forget_task_files(task_id, self.clock())

    def frame(self, task_id: int, frame: int) -> dict:
        row = self.store.get_frame(task_id, frame)
        if row is None:
            self._task(task_id)  # a missing task is named as such
            raise NotFound(f"task {task_id} has no frame {frame}")
        return row

    # -- leases ---------------------------------------------------------------------------------------------------

    def claim(self, worker_id: int, prefer_task_id: int | None = None,
              ahead: bool = False) -> tuple[dict | None, str | None]:
        """Lease the next frame for a worker: (frame assignment, None) or (None, why there is none). `ahead`: the
        worker is still rendering a frame (a task's last frames are kept for free workers)."""
        worker = self._worker(worker_id)
        if not worker["enabled"]:
            return None, "this worker is switched OFF"
        now = self.clock()
        # Frames of workers that stopped reporting go back to the queue before the claim looks. The reaper does it
        # every second anyway, so claims do it at most that often instead of paying a write each.
        if not self._last_expiry <= now < self._last_expiry + EXPIRY_INTERVAL:
            self._last_expiry = now
            self.count("expired", self.store.expire_leases(now, self.policy.frame_fail_workers))
        lease_id = secrets.token_hex(16)
        lease_seconds = self.liveness()[1]
        frame = self.store.claim_frame(worker, lease_id, now, now + lease_seconds, prefer_task_id,
                                       self.policy.bad_worker_failures, ahead)
        if frame is None:
            return None, "no frames waiting" if not ahead else "none to claim ahead: the last frames go to free workers"
        self.count("dispatched", 1)
        task = self.store.lease_fields(frame["task_id"])
        if task is None:  # deleted as its frame was claimed
            raise NotFound(no_task_sentence(frame["task_id"]))
        encode: dict[str, Any] = {}
        if frame["kind"] == FRAME_KIND_ENCODE:
            # What the encode job needs: the video asked for and the rendered frames it is made of.
            encode = {"kind": FRAME_KIND_ENCODE, "video": dict(task["video"] or {})}
        elif frame["kind"] in (FRAME_KIND_TILE, FRAME_KIND_MERGE):
            columns, rows = parse_tiles(task["tiles"])
            encode = {"kind": frame["kind"], "tile": {"columns": columns, "rows": rows, "frame": task["frame_start"]}}
        return {
            "task_id": frame["task_id"],
            "frame": frame["frame"],
            "lease_id": lease_id,
            "lease_seconds": lease_seconds,
            "attempt": frame["attempts"] + 1,
            "task_name": task["name"],
            "blend_sha256": task["blend_sha256"],
            "blend_filename": task["blend_filename"],
            "main_file": task["main_file"] or task["blend_filename"],
            "files_count": task["files_count"],
            "blender_version": task["blender_version"],
            "settings": task["settings"],
            "frame_timeout": task["frame_timeout"],
            "no_progress_timeout": task["no_progress_timeout"],
            "needs_python": bool(task["needs_python"]),
            "device": task["device"],
            **encode,
        }, None

    def video_frames(self, task_id: int, frames_after: int | None = None) -> dict:
        """One page of the rendered frames the task's video is made of, in order, and where the next page starts."""
        self._task(task_id)
        frames = self.store.video_inputs(task_id, frames_after, VIDEO_FRAMES_PAGE + 1)
        more = len(frames) > VIDEO_FRAMES_PAGE
        frames = frames[:VIDEO_FRAMES_PAGE]
        return {"task_id": task_id, "frames": frames, "frames_next": frames[-1]["frame"] if more else None}

    def claim_answer(self, worker_id: int, prefer_task_id: int | None = None, ahead: bool = False) -> dict:
        """A claim as the API answers it: the frame, or why there is none and when to ask again."""
        frame, reason = self.claim(worker_id, prefer_task_id, ahead)
        if frame is None:
            return {"frame": None, "wait_reason": reason, "poll_seconds": self.idle_poll_seconds()}
        return {"frame": frame, "wait_reason": None}

    def check_lease(self, worker_id: int, task_id: int, frame: int, lease_id: str) -> dict:
        """The frame, if this worker holds this live lease on it; else Conflict (or NotFound)."""
        row = self.store.get_frame(task_id, frame)
        if row is not None and _holds(row, worker_id, lease_id):
            # Only a registered worker is ever given a lease (and workers are never deleted): no need to look.
            return row
        self._worker(worker_id)
        row = self.frame(task_id, frame)
        self._require_lease(row, worker_id, task_id, frame, lease_id)
        return row

    def _require_lease(self, row: dict, worker_id: int, task_id: int, frame: int, lease_id: str) -> None:
        if not _holds(row, worker_id, lease_id):
            raise Conflict(self._lost_lease_sentence(row, task_id, frame))

    def check_output_name(self, task_id: int, frame: int, filename: str) -> None:
        """Refuse (409) an output name that another frame of the task has already, by renderq.paths.collision_key:
        the frames zip and an artist's folder can hold only one of them."""
        holder = self.store.output_holder(task_id, frame, collision_key(filename))
        if holder is not None:
            raise Conflict(_output_taken_sentence(task_id, frame, filename, holder["frame"], holder["output"]))

    def record_output(self, worker_id: int, task_id: int, frame: int, lease_id: str, filename: str,
                      sha256: str, size: int) -> dict:
        self.check_lease(worker_id, task_id, frame, lease_id)
        try:
            row = self.store.record_output(task_id, frame, lease_id, filename, collision_key(filename), sha256, size)
        except OutputNameTaken as taken:
            raise Conflict(_output_taken_sentence(task_id, frame, filename, taken.frame, taken.output)) from None
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        return row

    def check_finish(self, worker_id: int, task_id: int, frame: int, lease_id: str, filename: str) -> dict | None:
        """Before a finished frame's file is read: None when it may be stored (live lease, free name); the frame
        when this finish was already applied (a repeat after a lost answer); else Conflict or NotFound."""
        row = self.store.get_frame(task_id, frame)
        if row is not None and row["status"] == "done" and row["lease_id"] == lease_id \
                and row["worker_id"] == worker_id:
            return row
        self.check_lease(worker_id, task_id, frame, lease_id)
        self.check_output_name(task_id, frame, filename)
        return None

    def finish_frame(self, worker_id: int, task_id: int, frame: int, lease_id: str, output: tuple[str, str, int], *,
                     started_at: float | None = None, ended_at: float | None = None,
                     render_seconds: float | None = None, preview_sha256: str | None = None) -> dict:
        """Store a rendered frame's output (filename, sha256, size) and its stored preview, if any, and mark it
        done: one transaction, fenced by the lease, so a worker that lost its lease changes nothing (Conflict)."""
        filename, sha256, size = output
        now = self.clock()
        try:
            row = self.store.finish_frame(task_id, frame, lease_id, worker_id,
                                          (filename, collision_key(filename), sha256, size),
                                          started_at, ended_at or now, render_seconds, now, preview_sha256)
        except OutputNameTaken as taken:
            raise Conflict(_output_taken_sentence(task_id, frame, filename, taken.frame, taken.output)) from None
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        self.count("finished", 1)
        return row

    def report(self, worker_id: int, task_id: int, frame: int, lease_id: str, status: str, *,
               started_at: float | None = None, ended_at: float | None = None,
               render_seconds: float | None = None, error: str | None = None, log_tail: str | None = None,
               needs_python: bool = False) -> dict:
        """Apply a worker's report about a frame it holds. Repeating a final report changes nothing.

        "released" with needs_python: the worker found that the file runs Python it may not run; the task is
        marked as needing a worker that allows Python and the frame is queued again without counting a failure.
        """
        if status not in FrameReport.values():
            raise BadRequest(f"status must be one of {', '.join(FrameReport.values())}, not {status!r}")
        if needs_python and status != FrameReport.RELEASED:
            raise BadRequest(f"'needs_python' goes with the status 'released', not {status!r}")
        current = self.store.get_frame(task_id, frame)
        if current is None or current["worker_id"] != worker_id:
            # Not this worker's frame now: the refusals below, for an unknown worker or task first.
            self._worker(worker_id)
            current = self.frame(task_id, frame)
        if (current["lease_id"] == lease_id and current["worker_id"] == worker_id
                and current["status"] == status and status in (FrameReport.DONE, FrameReport.FAILED)):
            return current
        if (status == FrameReport.FAILED and current["lease_id"] != lease_id
                and self.store.failure_reported(task_id, frame, lease_id, worker_id)):
            # A repeat of a failure already counted; the frame went back to the queue then (and may be someone
            # else's now, so their lease is not shown).
            return {**current, "lease_id": None}
        self._require_lease(current, worker_id, task_id, frame, lease_id)
        now = self.clock()
        if status == FrameReport.RENDERING:
            lease_seconds = self.liveness()[1]
            row = self.store.mark_rendering(task_id, frame, lease_id, started_at or now,
                                            now + lease_seconds, now + 2 * lease_seconds)
            if row is None and current["status"] == FrameStatus.RENDERING:
                row = current
        elif status == FrameReport.DONE:
            if current["output_sha256"] is None:
                raise Conflict(f"frame {frame} of task {task_id} has no uploaded file yet; upload it first")
            row = self.store.mark_done(task_id, frame, lease_id, worker_id, started_at, ended_at or now,
                                       render_seconds, now)
        elif status == FrameReport.FAILED:
            row = self.store.mark_failed(task_id, frame, lease_id, worker_id, error or "the render failed",
                                         (log_tail or "")[-20000:], self.policy.frame_fail_workers, now)
        else:
            row = self.store.release_frame(task_id, frame, lease_id, needs_python)
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        self.count(f"report:{status}", 1)
        if status == FrameReport.DONE:
            self.count("finished", 1)
        return row

    def expire_leases(self) -> int:
        """Requeue frames whose worker stopped reporting; fail frames rendering far past their frame timeout
        (frame_timeout + 2 lease lengths: the worker should have stopped them itself). Returns how many."""
        expired = self.store.expire_leases(self.clock(), self.policy.frame_fail_workers)
        self.count("expired", expired)
        return expired

    def recover_after_restart(self) -> None:
        """Workers could not report while the coordinator was down: do not count that against their leases.

        Not on a database several coordinators share: the others may have been up all along, their workers renewing
        leases there, and one UPDATE of every leased frame of the farm only fights their transactions for the rows
        (a restarted coordinator died of a deadlock in the cluster soak)."""
        if not self.store.engine.shared:
            self.store.extend_all_leases(self.clock() + self.liveness()[1])

    # -- logs -----------------------------------------------------------------------------------------------------

    def append_log(self, task_id: int, worker_id: int | None, text: str) -> int | LogEnd:
        """Append to the task's log: its size after the append (in a turn of worker calls, a LogEnd the turn fills
        in once it has written it)."""
        if not self.store.has_task(task_id):
            raise NotFound(no_task_sentence(task_id))
        if worker_id is not None:
            self._worker(worker_id)
        return self.store.append_log(task_id, text)

    def read_log(self, task_id: int, offset: int, max_bytes: int = 1024 * 1024) -> dict:
        self._task(task_id)
        chunk, total = self.store.read_log(task_id, offset, max_bytes)
        return {"text": chunk.decode("utf-8", errors="replace"), "offset": offset,
                "next_offset": offset + len(chunk), "size": total}

    # -- helpers --------------------------------------------------------------------------------------------------

    def _lost_lease_sentence(self, row: dict, task_id: int, frame: int) -> str:
        if row["status"] == FrameStatus.CANCELED:
            return f"frame {frame} of task {task_id} was canceled"
        if row["status"] in FRAME_FINAL:
            return f"frame {frame} of task {task_id} is already {row['status']}"
        return f"this worker no longer holds the lease on frame {frame} of task {task_id}"


def _output_taken_sentence(task_id: int, frame: int, filename: str, other_frame: int, other_output: str) -> str:
    return (f"frame {frame} of task {task_id} cannot have the output {filename!r}: frame {other_frame} has "
            f"{other_output!r} already, and the frames of a task need different file names (case and Unicode "
            "form aside)")


def _holds(row: dict, worker_id: int, lease_id: str) -> bool:
    """Whether the frame row is under this worker's live lease."""
    return row["lease_id"] == lease_id and row["worker_id"] == worker_id and row["status"] in FRAME_ACTIVE


def check_timeout(field: str, seconds: float | None) -> None:
    """A task's timeout in seconds: None (the default) or from a second to a week."""
    if seconds is None:
        return
    # NaN fails the range comparison too.
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not TIMEOUT_MIN_SECONDS <= seconds <= TIMEOUT_MAX_SECONDS):
        raise BadRequest(f"'{field}' must be a number of seconds from {TIMEOUT_MIN_SECONDS:g} to "
                         f"{TIMEOUT_MAX_SECONDS:g} (7 days), not {seconds!r}")


def _count_nothing(event: str, number: int) -> None:
    """The scheduler's default `count`: no metrics kept."""
