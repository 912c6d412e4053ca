"""Who renders which frame: registration, leases, reports, retries, cancel and progress.

Plain Python over the store, with an injectable clock, so every rule here is testable without Flask or HTTP.
The coordinator's clock alone decides when a lease expires; times sent by workers are only recorded.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from renderq.blend_header import key_to_version, version_key

from . import eta
from .errors import BadRequest, Conflict, NotFound
from .store import Store

Clock = Callable[[], float]

FRAME_REPORTS = ("rendering", "done", "failed", "released")
TASK_STATES = ("queued", "running", "paused", "done", "failed", "canceled")
OPEN_TASK_STATES = ("queued", "running", "paused")
MAX_FRAMES_PER_TASK = 1_000_000
PRIORITY_LIMIT = 1_000_000


@dataclasses.dataclass
class Policy:
    """The scheduler's knobs (from the coordinator's Config)."""

    lease_seconds: float = 15.0
    alive_timeout: float = 15.0
    heartbeat_seconds: float = 2.0
    max_attempts: int = 3
    frame_time_window: int = 8


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

    # -- workers --------------------------------------------------------------------------------------------------

    def register_worker(self, name: str, host: str, blender_version: str, cpu_count: int) -> dict:
        worker = self.store.upsert_worker(name, host, blender_version, version_key(blender_version), cpu_count,
                                          self.clock())
        return {
            "worker_id": worker["worker_id"],
            "name": worker["name"],
            "enabled": bool(worker["enabled"]),
            "heartbeat_seconds": self.policy.heartbeat_seconds,
            "lease_seconds": self.policy.lease_seconds,
        }

    def heartbeat(self, worker_id: int, leases: Sequence[str]) -> dict:
        worker = self._worker(worker_id)
        now = self.clock()
        revoked = self.store.heartbeat(worker_id, list(leases), now, now + self.policy.lease_seconds)
        return {"enabled": bool(worker["enabled"]), "revoked": revoked}

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
        }
        files = [(f.path, f.sha256, f.size) for f in spec.files]
        task_id = self.store.insert_task(task, list(frames), list(spec.workers), files)
        return self.task_detail(task_id, with_frames=False)

    def list_tasks(self, status: str | None = None) -> list[dict]:
        """Task summaries, newest first, optionally of one status."""
        if status is not None and status not in TASK_STATES:
            raise BadRequest(f"status must be one of {', '.join(TASK_STATES)}, not {status!r}")
        return self.describe_tasks(self.store.list_tasks(status))

    def task_detail(self, task_id: int, with_frames: bool = True) -> dict:
        """One task's summary, with its frames unless with_frames is False."""
        task = self._task(task_id)
        described = self.describe_tasks([task])[0]
        if with_frames:
            names = {w["worker_id"]: w["name"] for w in self.store.list_workers()}
            described["frames"] = [self._describe_frame(f, names) for f in self.store.frames_of(task_id)]
        return described

    def cancel_task(self, task_id: int) -> dict:
        task = self._task(task_id)
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
        """Queue the task's failed frames again with their failures reset; the task runs again."""
        task = self._task(task_id)
        if task["status"] == "canceled":
            raise Conflict(f"task {task_id} was canceled; submit it again to render its failed frames")
        if not self.store.retry_failed_frames(task_id):
            raise Conflict(f"task {task_id} has no failed frames")
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
        self._task(task_id)
        row = self.store.get_frame(task_id, frame)
        if row is None:
            raise NotFound(f"task {task_id} has no frame {frame}")
        return row

    # -- leases ---------------------------------------------------------------------------------------------------

    def claim(self, worker_id: int, prefer_task_id: int | None = None) -> tuple[dict | None, str | None]:
        """Lease the next frame for a worker: (frame assignment, None) or (None, why there is none)."""
        worker = self._worker(worker_id)
        if not worker["enabled"]:
            return None, "this worker is switched OFF"
        now = self.clock()
        self.store.expire_leases(now)
        lease_id = secrets.token_hex(16)
        frame = self.store.claim_frame(worker, lease_id, now, now + self.policy.lease_seconds, prefer_task_id)
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
            "settings": task["settings"],
        }, None

    def check_lease(self, worker_id: int, task_id: int, frame: int, lease_id: str) -> dict:
        """The frame, if this worker holds this live lease on it; else Conflict (or NotFound)."""
        self._worker(worker_id)
        row = self.frame(task_id, frame)
        if row["lease_id"] != lease_id or row["worker_id"] != worker_id or row["status"] not in ("leased", "rendering"):
            raise Conflict(self._lost_lease_sentence(row, task_id, frame))
        return row

    def record_output(self, worker_id: int, task_id: int, frame: int, lease_id: str, filename: str,
                      sha256: str, size: int) -> dict:
        self.check_lease(worker_id, task_id, frame, lease_id)
        row = self.store.record_output(task_id, frame, lease_id, filename, sha256, size)
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        return row

    def report(self, worker_id: int, task_id: int, frame: int, lease_id: str, status: str, *,
               started_at: float | None = None, ended_at: float | None = None,
               render_seconds: float | None = None, error: str | None = None, log_tail: str | None = None) -> dict:
        """Apply a worker's report about a frame it holds. Repeating a final report changes nothing."""
        if status not in FRAME_REPORTS:
            raise BadRequest(f"status must be one of {', '.join(FRAME_REPORTS)}, not {status!r}")
        self._worker(worker_id)
        current = self.frame(task_id, frame)
        if (current["lease_id"] == lease_id and current["worker_id"] == worker_id
                and current["status"] == status and status in ("done", "failed")):
            return current
        self.check_lease(worker_id, task_id, frame, lease_id)
        now = self.clock()
        if status == "rendering":
            row = self.store.mark_rendering(task_id, frame, lease_id, started_at or now,
                                            now + self.policy.lease_seconds)
            if row is None and current["status"] == "rendering":
                row = current
        elif status == "done":
            if current["output_sha256"] is None:
                raise Conflict(f"frame {frame} of task {task_id} has no uploaded file yet; upload it first")
            row = self.store.mark_done(task_id, frame, lease_id, worker_id, started_at, ended_at or now,
                                       render_seconds, now)
        elif status == "failed":
            row = self.store.mark_failed(task_id, frame, lease_id, worker_id, error or "the render failed",
                                         (log_tail or "")[-20000:], self.policy.max_attempts, now)
        else:
            row = self.store.release_frame(task_id, frame, lease_id)
        if row is None:
            raise Conflict(self._lost_lease_sentence(self.frame(task_id, frame), task_id, frame))
        return row

    def expire_leases(self) -> int:
        return self.store.expire_leases(self.clock())

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
            raise NotFound(f"no worker with id {worker_id}; register first")
        return worker

    def _worker_by_name(self, name: str) -> dict:
        worker = self.store.get_worker(name=name)
        if worker is None:
            raise NotFound(f"no worker named {name!r}")
        return worker

    def _task(self, task_id: int) -> dict:
        task = self.store.get_task(task_id)
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
        recent = self.store.recent_frame_seconds_many(open_ids, self.policy.frame_time_window)
        current: dict[int, list[dict]] = {}
        if open_ids:
            frames = (self.store.current_frames(task_id=open_ids[0]) if len(open_ids) == 1
                      else self.store.current_frames())
            for frame in frames:
                current.setdefault(frame["task_id"], []).append(frame)
        with_failures = [t["task_id"] for t in tasks if t["frames_failed"]]
        failed = self.store.failed_frame_numbers(with_failures)
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
                waiting_reason = self._waiting_reason(task, workers)
            described.append(self._describe_task(task, task_counts, current.get(task_id, []),
                                                 recent.get(task_id, []), failed.get(task_id, []), waiting_reason))
        return described

    def _describe_task(self, task: dict, counts: dict[str, int], current: list[dict], recent: list[float],
                       failed_frames: list[int], waiting_reason: str | None) -> dict:
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
        else:
            frames_left = queued + leased + rendering if task["status"] in ("queued", "running") else 0
            estimate = eta.estimate_eta(recent, frames_left, workers_rendering)
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
            "blend_sha256": task["blend_sha256"],
            "blend_filename": task["blend_filename"],
            "main_file": task["main_file"] or task["blend_filename"],
            "blender_version": task["blender_version"] or None,
            "blender_version_exact": bool(task["blender_version_exact"]),
            "missing_assets": task["missing_assets"],
            "files_count": task["files_count"],
            "files_bytes": task["files_bytes"],
            "files_deleted": task["files_deleted_at"] is not None,
            "waiting_reason": waiting_reason,
            "settings": task["settings"],
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
            "failed_frames": failed_frames,
        }

    def _waiting_reason(self, task: dict, all_workers: list[dict]) -> str | None:
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
                if not any(w["blender_version_key"] == needed for w in workers):
                    return f"waiting: no worker with Blender {key_to_version(needed)}"
            elif not any(w["blender_version_key"] >= needed for w in workers):
                return f"waiting: no worker with Blender >= {key_to_version(needed)}"
        return None

    @staticmethod
    def _describe_frame(frame: dict, names: dict[int, str]) -> dict:
        return {
            "frame": frame["frame"],
            "status": frame["status"],
            "worker": names.get(frame["worker_id"]) if frame["worker_id"] is not None else None,
            "attempts": frame["attempts"],
            "failures": frame["failures"],
            "started_at": frame["started_at"],
            "ended_at": frame["ended_at"],
            "render_seconds": frame["render_seconds"],
            "output": frame["output"],
            "output_sha256": frame["output_sha256"],
            "output_size": frame["output_size"],
            "error": frame["error"],
            "log_tail": frame["log_tail"],
        }
