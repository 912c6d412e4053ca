"""Who renders which frame: registration, leases, reports, retries, cancel and progress.

Plain Python over the store, with an injectable clock, so every rule here is testable without Flask or HTTP.
The coordinator's clock alone decides when a lease expires; times sent by workers are only recorded.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from renderq.blend_header import key_to_version, version_key
from renderq.paths import collision_key

from . import eta
from .errors import BadRequest, Conflict, Forbidden, NotFound
from .store import OutputNameTaken, Store

Clock = Callable[[], float]

FRAME_REPORTS = ("rendering", "done", "failed", "released")
TASK_STATES = ("queued", "running", "paused", "done", "failed", "canceled")
OPEN_TASK_STATES = ("queued", "running", "paused")
FRAME_STATES = ("queued", "leased", "rendering", "done", "failed", "canceled")
# The hard ceiling whatever the coordinator's --max-task-frames (checked by the API before any work is done).
MAX_FRAMES_PER_TASK = 1_000_000
# Frames per page of a task's detail (GET /task) unless the client asks for another size, and the most it may ask.
FRAMES_PAGE = 1_000
MAX_FRAMES_PAGE = 10_000
# A task's summary lists at most this many of its failed frames (progress.failed counts them all).
FAILED_FRAMES_SHOWN = 1_000
PRIORITY_LIMIT = 1_000_000
# A task's frame_timeout and no_progress_timeout: at least a second, at most a week.
TIMEOUT_MIN_SECONDS = 1.0
TIMEOUT_MAX_SECONDS = 7 * 86400.0
# Seconds between the lease expiries a claim runs (the coordinator's reaper runs one every second too).
EXPIRY_INTERVAL = 1.0
# Seconds an answer on how often idle workers should ask for work is reused: counting the live workers reads them all.
POLL_ADVICE_INTERVAL = 5.0


@dataclasses.dataclass
class Policy:
    """The scheduler's knobs (from the coordinator's Config)."""

    lease_seconds: float = 15.0
    alive_timeout: float = 15.0
    heartbeat_seconds: float = 2.0
    # A frame is marked failed once it has failed on this many different workers.
    frame_fail_workers: int = 3
    # A worker that failed frames of a task this many times gets no more frames of it (until a retry).
    bad_worker_failures: int = 3
    # Defaults of a task's timeouts, in seconds; frame_timeout 0 means no limit.
    frame_timeout: float = 0.0
    no_progress_timeout: float = 600.0
    # Idle workers are told to ask for work so that all of them together ask about this often a second, each at
    # most every idle_poll_limits[1] and at least every idle_poll_limits[0] seconds. A new task waits for the first
    # of them to ask, about 1 / idle_claims_per_second seconds whatever the farm's size, and a large idle farm does
    # not flood the coordinator.
    idle_claims_per_second: float = 50.0
    idle_poll_limits: tuple[float, float] = (0.25, 30.0)


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

    @property
    def main(self) -> TaskFile:
        return next(f for f in self.files if f.path == self.main_file)

    def frame_numbers(self) -> range:
        return range(self.frame_start, self.frame_end + 1, self.frame_step)


class Scheduler:
    """The farm's rules, applied to the state in a Store."""

    def __init__(self, store: Store, policy: Policy | None = None, clock: Clock = time.time) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.clock = clock
        self._last_expiry = float("-inf")
        self._poll_advice: tuple[float, float] = (float("-inf"), self.policy.idle_poll_limits[0])
        self._eta = eta.EtaCache()

    # -- workers --------------------------------------------------------------------------------------------------

    def register_worker(self, name: str, host: str, blender_version: str, cpu_count: int,
                        allows_python: bool = False) -> dict:
        """Register (or re-register) a worker by name; allows_python: it may run Python stored in .blend files."""
        worker = self.store.upsert_worker(name, host, blender_version, version_key(blender_version), cpu_count,
                                          self.clock(), allows_python)
        return {
            "worker_id": worker["worker_id"],
            "name": worker["name"],
            "enabled": bool(worker["enabled"]),
            "allows_python": bool(worker["allows_python"]),
            "heartbeat_seconds": self.policy.heartbeat_seconds,
            "lease_seconds": self.policy.lease_seconds,
            "poll_seconds": self.idle_poll_seconds(),
        }

    def idle_poll_seconds(self) -> float:
        """How long an idle worker should wait before asking for work again, from the number of live workers."""
        now = self.clock()
        counted_at, seconds = self._poll_advice
        if not counted_at <= now < counted_at + POLL_ADVICE_INTERVAL:
            live = self.store.count_workers_seen_since(now - self.policy.alive_timeout)
            shortest, longest = self.policy.idle_poll_limits
            seconds = min(longest, max(shortest, live / self.policy.idle_claims_per_second))
            self._poll_advice = (now, seconds)
        return seconds

    def heartbeat(self, worker_id: int, leases: Sequence[str]) -> dict:
        now = self.clock()
        answer = self.store.heartbeat(worker_id, list(leases), now, now + self.policy.lease_seconds)
        if answer is None:
            raise NotFound(_no_worker(worker_id))
        enabled, revoked = answer
        return {"enabled": enabled, "revoked": revoked}

    def set_worker_enabled(self, enabled: bool, worker_id: int | None = None, name: str | None = None) -> dict:
        worker = self._worker(worker_id) if worker_id is not None else self._worker_by_name(name or "")
        self.store.set_worker_enabled(worker["worker_id"], enabled)
        return self.describe_worker(self._worker(worker["worker_id"]))

    def list_workers(self) -> list[dict]:
        current: dict[int, list[dict]] = {}
        for frame in self.store.current_frames():
            current.setdefault(frame["worker_id"], []).append(frame)
        return [self.describe_worker(w, current.get(w["worker_id"], [])) for w in self.store.list_workers()]

    def describe_worker(self, worker: dict, current: list[dict] | None = None) -> dict:
        if current is None:
            current = self.store.current_frames(worker["worker_id"])
        now = self.clock()
        done = worker["frames_done"]
        return {
            "worker_id": worker["worker_id"],
            "name": worker["name"],
            "host": worker["host"],
            "blender_version": worker["blender_version"],
            "cpu_count": worker["cpu_count"],
            "enabled": bool(worker["enabled"]),
            "allows_python": bool(worker["allows_python"]),
            "alive": now - worker["last_seen"] < self.policy.alive_timeout,
            "last_seen": worker["last_seen"],
            "registered_at": worker["registered_at"],
            "current": [
                {"task_id": f["task_id"], "task_name": f["task_name"], "frame": f["frame"], "status": f["status"],
                 "started_at": f["started_at"]}
                for f in sorted(current, key=lambda f: (f["task_id"], f["frame"]))
            ],
            "frames_done": done,
            "frames_failed": worker["frames_failed"],
            "mean_frame_seconds": worker["render_seconds_total"] / done if done else None,
        }

    # -- tasks ----------------------------------------------------------------------------------------------------

    def submit_task(self, spec: TaskSpec) -> dict:
        frames = spec.frame_numbers()
        if len(frames) > MAX_FRAMES_PER_TASK:
            raise BadRequest(f"a task may have at most {MAX_FRAMES_PER_TASK} frames, not {len(frames)}")
        for field in ("frame_timeout", "no_progress_timeout"):
            check_timeout(field, getattr(spec, field))
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
            "frame_timeout": frame_timeout or None,
            "no_progress_timeout": (spec.no_progress_timeout if spec.no_progress_timeout is not None
                                    else self.policy.no_progress_timeout),
        }
        files = [(f.path, f.sha256, f.size) for f in spec.files]
        task_id = self.store.insert_task(task, list(frames), list(spec.workers), files)
        return self.task_detail(task_id, with_frames=False)

    def list_tasks(self, status: str | None = None) -> list[dict]:
        """Task summaries, newest first, optionally of one status."""
        if status is not None and status not in TASK_STATES:
            raise BadRequest(f"status must be one of {', '.join(TASK_STATES)}, not {status!r}")
        return self.describe_tasks(self.store.list_tasks(status))

    def task_detail(self, task_id: int, with_frames: bool = True, *, frames_after: int | None = None,
                    frames_limit: int = FRAMES_PAGE, frames_status: str | None = None) -> dict:
        """One task's summary with its settings and missing assets, and unless with_frames is False one page of its
        frames: at most frames_limit numbered above frames_after (optionally of one status), with `frames_next`,
        the frames_after of the next page (None after the last)."""
        task = self._task(task_id, detail=True)
        described = self.describe_tasks([task])[0]
        described["settings"] = task["settings"]
        described["missing_assets"] = task["missing_assets"]
        latest = self.latest_done_frames(task_id, 1)
        described["latest_done"] = latest[0] if latest else None
        if with_frames:
            described["frames"], described["frames_next"] = self.frames_page(task_id, frames_after, frames_limit,
                                                                              frames_status)
        return described

    def frames_page(self, task_id: int, after: int | None, limit: int,
                    status: str | None = None) -> tuple[list[dict], int | None]:
        """At most `limit` frames of the task numbered above `after` (optionally of one status), described, and
        the `after` of the next page (None after the last)."""
        if status is not None and status not in FRAME_STATES:
            raise BadRequest(f"frames_status must be one of {', '.join(FRAME_STATES)}, not {status!r}")
        # One more than asked tells whether a next page exists.
        rows = self.store.frames_page(task_id, after, limit + 1, status)
        page = rows[:limit]
        if not page:
            return [], None
        names = {w["worker_id"]: w["name"] for w in self.store.list_workers()}
        failed_on = self.store.frame_failed_workers(task_id, page[0]["frame"], page[-1]["frame"])
        return ([self._describe_frame(f, names, failed_on.get(f["frame"], [])) for f in page],
                page[-1]["frame"] if len(rows) > limit else None)

    def latest_done_frames(self, task_id: int, count: int) -> list[dict]:
        """The task's `count` done frames that ended last, latest first."""
        names = {w["worker_id"]: w["name"] for w in self.store.list_workers()}
        return [self._describe_frame(f, names, []) for f in self.store.latest_done_frames(task_id, count)]

    def iter_frames(self, task_id: int, status: str | None = None) -> Iterator[dict]:
        """Every frame row of the task (optionally of one status) by number, read a page at a time."""
        after = None
        while True:
            page = self.store.frames_page(task_id, after, FRAMES_PAGE, status)
            yield from page
            if len(page) < FRAMES_PAGE:
                return
            after = page[-1]["frame"]

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
            if task["status"] == "paused":
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
        if task["status"] == "canceled":
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
        if task["status"] in OPEN_TASK_STATES:
            raise Conflict(f"task {task_id} is still {task['status']}; cancel it before deleting its files")
        return self.store.forget_task_files(task_id, self.clock())

    def frame(self, task_id: int, frame: int) -> dict:
        row = self.store.get_frame(task_id, frame)
        if row is None:
            self._task(task_id)  # a missing task is named as such
            raise NotFound(f"task {task_id} has no frame {frame}")
        return row

    # -- leases ---------------------------------------------------------------------------------------------------

    def claim(self, worker_id: int, prefer_task_id: int | None = None) -> tuple[dict | None, str | None]:
        """Lease the next frame for a worker: (frame assignment, None) or (None, why there is none)."""
        worker = self._worker(worker_id)
        if not worker["enabled"]:
            return None, "this worker is switched OFF"
        now = self.clock()
        # Frames of workers that stopped reporting go back to the queue before the claim looks. The reaper does it
        # every second anyway, so claims do it at most that often instead of paying a write each.
        if not self._last_expiry <= now < self._last_expiry + EXPIRY_INTERVAL:
            self._last_expiry = now
            self.store.expire_leases(now, self.policy.frame_fail_workers)
        lease_id = secrets.token_hex(16)
        frame = self.store.claim_frame(worker, lease_id, now, now + self.policy.lease_seconds, prefer_task_id,
                                       self.policy.bad_worker_failures)
        if frame is None:
            return None, "no frames waiting"
        task = self._task(frame["task_id"])
        return {
            "task_id": frame["task_id"],
            "frame": frame["frame"],
            "lease_id": lease_id,
            "lease_seconds": self.policy.lease_seconds,
            "attempt": frame["attempts"] + 1,
            "task_name": task["name"],
            "blend_sha256": task["blend_sha256"],
            "blend_filename": task["blend_filename"],
            "main_file": task["main_file"] or task["blend_filename"],
            "files_count": task["files_count"],
            "blender_version": task["blender_version"],
            "settings": self.store.task_settings(task["task_id"]),
            "frame_timeout": task["frame_timeout"],
            "no_progress_timeout": task["no_progress_timeout"],
            "needs_python": bool(task["needs_python"]),
        }, None

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
                     render_seconds: float | None = None) -> dict:
        """Store a rendered frame's output (filename, sha256, size) and mark it done: one transaction, fenced by the
        lease, so a worker that lost its lease changes nothing (Conflict)."""
        filename, sha256, size = output
        now = self.clock()
        try:
            row = self.store.finish_frame(task_id, frame, lease_id, worker_id,
                                          (filename, collision_key(filename), sha256, size),
                                          started_at, ended_at or now, render_seconds, now)
        except OutputNameTaken as taken:
            raise Conflict(_output_taken_sentence(task_id, frame, filename, taken.frame, taken.output)) from None
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        return row

    def report(self, worker_id: int, task_id: int, frame: int, lease_id: str, status: str, *,
               started_at: float | None = None, ended_at: float | None = None,
               render_seconds: float | None = None, error: str | None = None, log_tail: str | None = None,
               needs_python: bool = False) -> dict:
        """Apply a worker's report about a frame it holds. Repeating a final report changes nothing.

        "released" with needs_python: the worker found that the file runs Python it may not run; the task is
        marked as needing a worker that allows Python and the frame is queued again without counting a failure.
        """
        if status not in FRAME_REPORTS:
            raise BadRequest(f"status must be one of {', '.join(FRAME_REPORTS)}, not {status!r}")
        if needs_python and status != "released":
            raise BadRequest(f"'needs_python' goes with the status 'released', not {status!r}")
        current = self.store.get_frame(task_id, frame)
        if current is None or current["worker_id"] != worker_id:
            # Not this worker's frame now: the refusals below, for an unknown worker or task first.
            self._worker(worker_id)
            current = self.frame(task_id, frame)
        if (current["lease_id"] == lease_id and current["worker_id"] == worker_id
                and current["status"] == status and status in ("done", "failed")):
            return current
        if (status == "failed" and current["lease_id"] != lease_id
                and self.store.failure_reported(task_id, frame, lease_id, worker_id)):
            # A repeat of a failure already counted; the frame went back to the queue then (and may be someone
            # else's now, so their lease is not shown).
            return {**current, "lease_id": None}
        self._require_lease(current, worker_id, task_id, frame, lease_id)
        now = self.clock()
        if status == "rendering":
            row = self.store.mark_rendering(task_id, frame, lease_id, started_at or now,
                                            now + self.policy.lease_seconds, now + 2 * self.policy.lease_seconds)
            if row is None and current["status"] == "rendering":
                row = current
        elif status == "done":
            if current["output_sha256"] is None:
                raise Conflict(f"frame {frame} of task {task_id} has no uploaded file yet; upload it first")
            row = self.store.mark_done(task_id, frame, lease_id, worker_id, started_at, ended_at or now,
                                       render_seconds, now)
        elif status == "failed":
            row = self.store.mark_failed(task_id, frame, lease_id, worker_id, error or "the render failed",
                                         (log_tail or "")[-20000:], self.policy.frame_fail_workers, now)
        else:
            row = self.store.release_frame(task_id, frame, lease_id, needs_python)
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        return row

    def expire_leases(self) -> int:
        """Requeue frames whose worker stopped reporting; fail frames rendering far past their frame timeout
        (frame_timeout + 2 lease lengths: the worker should have stopped them itself). Returns how many."""
        return self.store.expire_leases(self.clock(), self.policy.frame_fail_workers)

    def recover_after_restart(self) -> None:
        """Workers could not report while the coordinator was down: do not count that against their leases."""
        self.store.extend_all_leases(self.clock() + self.policy.lease_seconds)

    # -- logs -----------------------------------------------------------------------------------------------------

    def append_log(self, task_id: int, worker_id: int | None, text: str) -> int:
        self._task(task_id)
        if worker_id is not None:
            self._worker(worker_id)
        return self.store.append_log(task_id, text)

    def read_log(self, task_id: int, offset: int, max_bytes: int = 1024 * 1024) -> dict:
        self._task(task_id)
        chunk, total = self.store.read_log(task_id, offset, max_bytes)
        return {"text": chunk.decode("utf-8", errors="replace"), "offset": offset,
                "next_offset": offset + len(chunk), "size": total}

    # -- helpers --------------------------------------------------------------------------------------------------

    def _worker(self, worker_id: int) -> dict:
        worker = self.store.get_worker(worker_id=worker_id)
        if worker is None:
            raise NotFound(_no_worker(worker_id))
        return worker

    def _worker_by_name(self, name: str) -> dict:
        worker = self.store.get_worker(name=name)
        if worker is None:
            raise NotFound(f"no worker named {name!r}")
        return worker

    def _task(self, task_id: int, detail: bool = False) -> dict:
        task = self.store.get_task(task_id, detail)
        if task is None:
            raise NotFound(f"no task with id {task_id}")
        return task

    def _lost_lease_sentence(self, row: dict, task_id: int, frame: int) -> str:
        if row["status"] == "canceled":
            return f"frame {frame} of task {task_id} was canceled"
        if row["status"] in ("done", "failed"):
            return f"frame {frame} of task {task_id} is already {row['status']}"
        return f"this worker no longer holds the lease on frame {frame} of task {task_id}"

    def describe_tasks(self, tasks: list[dict]) -> list[dict]:
        """Summaries (progress, ETA, who renders, why it waits) of store task rows, with a fixed number of queries
        whatever the number of tasks."""
        open_ids = [t["task_id"] for t in tasks if t["status"] in OPEN_TASK_STATES]
        # Frames of an ended task no longer change state, so its counts come from the task row itself;
        # only open tasks need counting.
        counts = self.store.frame_counts_many(open_ids)
        current: dict[int, list[dict]] = {}
        if open_ids:
            frames = (self.store.current_frames(task_id=open_ids[0]) if len(open_ids) == 1
                      else self.store.current_frames())
            for frame in frames:
                current.setdefault(frame["task_id"], []).append(frame)
        with_failures = [t["task_id"] for t in tasks if t["frames_failed"]]
        failed = self.store.failed_frame_numbers(with_failures)
        estimators = self._eta_estimators(tasks, counts, failed)
        blocked = self.store.blocked_workers_many([t["task_id"] for t in tasks], self.policy.bad_worker_failures)
        workers: list[dict] | None = None
        described = []
        for task in tasks:
            task_id = task["task_id"]
            if task_id in counts:
                task_counts = counts[task_id]
            else:
                task_counts = {"done": task["frames_done"], "failed": task["frames_failed"],
                               "canceled": task["frames_total"] - task["frames_done"] - task["frames_failed"]}
            waiting_reason = None
            if (task["status"] in ("queued", "running") and task_counts.get("queued")
                    and not (task_counts.get("rendering", 0) + task_counts.get("leased", 0))):
                if workers is None:
                    workers = self.store.list_workers()
                waiting_reason = self._waiting_reason(task, workers, blocked[task_id])
            described.append(self._describe_task(task, task_counts, current.get(task_id, []),
                                                 estimators.get(task_id), failed.get(task_id, []), waiting_reason,
                                                 blocked[task_id]))
        return described

    def _eta_estimators(self, tasks: list[dict], counts: dict[int, dict[str, int]],
                        failed: dict[int, list[int]]) -> dict[int, eta.TaskEstimator]:
        """Finish-time estimators of the tasks queued or running: cached while their done and failed frames stay
        the same, else built from their done frames (one query for all of those)."""
        states = [eta.TaskState(t["task_id"], t["created_at"], t["frame_start"], t["frame_end"], t["frame_step"],
                                counts[t["task_id"]].get("done", 0), tuple(failed.get(t["task_id"], ())))
                  for t in tasks if t["status"] in ("queued", "running")]
        return self._eta.estimators(states, self._done_frame_times) if states else {}

    def _done_frame_times(self, task_ids: list[int]) -> dict[int, list[eta.DoneFrame]]:
        # The model reads only the last MODEL_FRAMES timed frames; the others only count as done.
        return {task_id: [eta.DoneFrame(*row) for row in rows]
                for task_id, rows in self.store.done_frame_times_many(task_ids, eta.MODEL_FRAMES).items()}

    def _describe_task(self, task: dict, counts: dict[str, int], current: list[dict],
                       estimator: eta.TaskEstimator | None, failed_frames: list[int], waiting_reason: str | None,
                       blocked: list[dict]) -> dict:
        task_id = task["task_id"]
        total = task["frames_total"]
        done = counts.get("done", 0)
        failed = counts.get("failed", 0)
        rendering = counts.get("rendering", 0)
        leased = counts.get("leased", 0)
        queued = counts.get("queued", 0)
        workers_rendering = len({f["worker_id"] for f in current if f["status"] == "rendering"})
        if task["status"] == "paused":
            estimate = None  # nothing new starts until it is resumed
        elif task["status"] not in ("queued", "running") or not queued + leased + rendering:
            estimate = 0.0
        elif estimator is None:
            estimate = None
        else:
            estimate = estimator.eta_seconds(
                [eta.ActiveFrame(f["frame"], f["worker_id"], f["status"] == "rendering", f["started_at"])
                 for f in current], self.clock())
        return {
            "task_id": task_id,
            "name": task["name"],
            "status": task["status"],
            "priority": task["priority"],
            "frame_start": task["frame_start"],
            "frame_end": task["frame_end"],
            "frame_step": task["frame_step"],
            "workers": task["workers"],
            "submitted_by": task["submitted_by"],
            "owner": task["owner"],
            "blend_sha256": task["blend_sha256"],
            "blend_filename": task["blend_filename"],
            "main_file": task["main_file"] or task["blend_filename"],
            "blender_version": task["blender_version"] or None,
            "blender_version_exact": bool(task["blender_version_exact"]),
            "missing_assets_count": task["missing_assets_count"],
            "files_count": task["files_count"],
            "files_bytes": task["files_bytes"],
            "files_deleted": task["files_deleted_at"] is not None,
            "needs_python": bool(task["needs_python"]),
            "frame_timeout": task["frame_timeout"],
            "no_progress_timeout": task["no_progress_timeout"],
            "waiting_reason": waiting_reason,
            "created_at": task["created_at"],
            "started_at": task["started_at"],
            "ended_at": task["ended_at"],
            "progress": {
                "total": total,
                "done": done,
                "failed": failed,
                "rendering": rendering,
                "leased": leased,
                "queued": queued,
                "canceled": counts.get("canceled", 0),
                "percent": round(100.0 * done / total, 1) if total else 100.0,
                "eta_seconds": estimate,
                "workers_rendering": workers_rendering,
                "current": [
                    {"worker": f["worker_name"], "frame": f["frame"],
                     "status": f["status"], "started_at": f["started_at"]}
                    for f in sorted(current, key=lambda f: f["frame"])
                ],
            },
            "failed_frames": failed_frames[:FAILED_FRAMES_SHOWN],
            "blocked_workers": blocked,
        }

    def _waiting_reason(self, task: dict, all_workers: list[dict], blocked: list[dict]) -> str | None:
        """Why no worker takes the task's frames, when no live worker may render it; None when one could."""
        now = self.clock()
        workers = [w for w in all_workers if w["enabled"] and now - w["last_seen"] < self.policy.alive_timeout]
        if not workers:
            return "waiting: no worker is alive and switched ON"
        if task["workers"]:
            workers = [w for w in workers if w["name"] in task["workers"]]
            if not workers:
                return f"waiting: none of its workers ({', '.join(task['workers'])}) is alive and switched ON"
        needed = task["blender_version_key"]
        if needed:
            if task["blender_version_exact"]:
                workers = [w for w in workers if w["blender_version_key"] == needed]
                if not workers:
                    return f"waiting: no worker with Blender {key_to_version(needed)}"
            else:
                workers = [w for w in workers if w["blender_version_key"] >= needed]
                if not workers:
                    return f"waiting: no worker with Blender >= {key_to_version(needed)}"
        if task["needs_python"]:
            workers = [w for w in workers if w["allows_python"]]
            if not workers:
                return ("waiting: the file runs Python (scripts or drivers); "
                        "it needs a worker started with --allow-blend-python")
        blocked_ids = {b["worker_id"] for b in blocked}
        if all(w["worker_id"] in blocked_ids for w in workers):
            return (f"waiting: every worker that could render it has failed it {self.policy.bad_worker_failures} "
                    "times and is blocked; retry its failed frames to unblock them")
        return None

    @staticmethod
    def _describe_frame(frame: dict, names: dict[int, str], failed_on: list[str]) -> dict:
        return {
            "frame": frame["frame"],
            "status": frame["status"],
            "worker": names.get(frame["worker_id"]) if frame["worker_id"] is not None else None,
            "attempts": frame["attempts"],
            "failures": frame["failures"],
            "failed_on": failed_on,
            "started_at": frame["started_at"],
            "ended_at": frame["ended_at"],
            "render_seconds": frame["render_seconds"],
            "output": frame["output"],
            "output_sha256": frame["output_sha256"],
            "output_size": frame["output_size"],
            "error": frame["error"],
            "log_tail": frame["log_tail"],
        }


def _no_worker(worker_id: int) -> str:
    return f"no worker with id {worker_id}; register first"


def _output_taken_sentence(task_id: int, frame: int, filename: str, other_frame: int, other_output: str) -> str:
    return (f"frame {frame} of task {task_id} cannot have the output {filename!r}: frame {other_frame} has "
            f"{other_output!r} already, and the frames of a task need different file names (case and Unicode "
            "form aside)")


def _holds(row: dict, worker_id: int, lease_id: str) -> bool:
    """Whether the frame row is under this worker's live lease."""
    return row["lease_id"] == lease_id and row["worker_id"] == worker_id and row["status"] in ("leased", "rendering")


def check_timeout(field: str, seconds: float | None) -> None:
    """A task's timeout in seconds: None (the default) or from a second to a week."""
    if seconds is None:
        return
    # NaN fails the range comparison too.
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not TIMEOUT_MIN_SECONDS <= seconds <= TIMEOUT_MAX_SECONDS):
        raise BadRequest(f"'{field}' must be a number of seconds from {TIMEOUT_MIN_SECONDS:g} to "
                         f"{TIMEOUT_MAX_SECONDS:g} (7 days), not {seconds!r}")
