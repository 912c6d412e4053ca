"""Reading the farm for people: task summaries with progress, finish estimates and why a task waits, pages of a
task's frames, and the workers with what they render.

The read side of the Scheduler (which inherits it): nothing here changes the farm's state. Every answer costs a
fixed number of queries whatever the number of tasks or frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from renderq.blend_header import key_to_version
from renderq.capabilities import ALL_ENGINES, ENCODE_BIT, GPU_BIT, engine_label
from renderq.model import (
    FRAME_KIND_RENDER, TASK_APPROVABLE, TASK_CLAIMABLE, TASK_OPEN, Frame, FrameStatus, TaskStatus, Worker,
)

from . import estimate, eta
from .errors import BadRequest, NotFound
from .store import Store

if TYPE_CHECKING:
    from .policy import Policy

Clock = Callable[[], float]

# Frames per page of a task's detail (GET /task) unless the client asks for another size, and the most it may ask.
FRAMES_PAGE = 1_000
MAX_FRAMES_PAGE = 10_000
# A task's summary lists at most this many of its failed frames (progress.failed counts them all).
FAILED_FRAMES_SHOWN = 1_000
# A worker's detail (GET /worker) lists its latest done frames and its latest failed reports, at most this many, and
# the lines it wrote in the last bytes of the log of the task it renders.
WORKER_RECENT_FRAMES = 50
WORKER_RECENT_FAILURES = 20
WORKER_LOG_TAIL_BYTES = 64 * 1024
# Seconds an answer that counts the live workers (for the advised heartbeat and idle poll) is reused.
ADVICE_INTERVAL = 5.0


class FarmReader:
    """Task, frame and worker descriptions from the state in a Store (the Scheduler sets the attributes)."""

    store: Store
    policy: Policy
    clock: Clock
    _eta: eta.EtaCache
    _costs_left: estimate.CostLeftCache

    # (when the live workers were counted, how many there were): see live_workers().
    _live_count: tuple[float, int]

    def live_workers(self) -> int:
        """Workers heard from within a lease of the farm's last count (each beats several times a lease):
        counted at most every ADVICE_INTERVAL seconds, as it reads every worker."""
        now = self.clock()
        counted_at, count = self._live_count
        if not counted_at <= now < counted_at + ADVICE_INTERVAL:
            lease_seconds = max(self.policy.alive_timeout, self.policy.liveness(count)[1])
            count = self.store.count_workers_seen_since(now - lease_seconds)
            self._live_count = (now, count)
        return count

    def liveness(self) -> tuple[float, float]:
        """(heartbeat interval, lease seconds) the coordinator gives workers now, from the farm's size (at least the
        worker asking, which the count may not see yet)."""
        return self.policy.liveness(max(1, self.live_workers()))

    def liveness_advice(self) -> dict[str, Any]:
        """What the heartbeat and registration answers tell a worker about beating: how often, how long its leases
        live, and whether it should send its "rendering" reports and log lines with its next heartbeat or claim
        (`batch_reports`: the farm is large enough that its heartbeats were spread out)."""
        heartbeat_seconds, lease_seconds = self.liveness()
        return {"heartbeat_seconds": heartbeat_seconds, "lease_seconds": lease_seconds,
                "batch_reports": heartbeat_seconds > self.policy.heartbeat_seconds}

    def alive_seconds(self) -> float:
        """How long a worker counts as alive after it was last heard from: as long as its leases live."""
        return max(self.policy.alive_timeout, self.liveness()[1])

    def _worker(self, worker_id: int) -> dict:
        worker = self.store.get_worker(worker_id=worker_id)
        if worker is None:
            raise NotFound(no_worker_sentence(worker_id))
        return worker

    def _worker_by_name(self, name: str) -> dict:
        worker = self.store.get_worker(name=name)
        if worker is None:
            raise NotFound(f"no worker named {name!r}")
        return worker

    def _task(self, task_id: int, detail: bool = False) -> dict:
        task = self.store.get_task(task_id, detail)
        if task is None:
            raise NotFound(no_task_sentence(task_id))
        return task

    def list_workers(self) -> list[dict]:
        current: dict[int, list[dict]] = {}
        for frame in self.store.current_frames():
            current.setdefault(frame["worker_id"], []).append(frame)
        return [self.describe_worker(w, current.get(w["worker_id"], [])) for w in self.store.list_workers()]

    def describe_worker(self, worker: dict, current: list[dict] | None = None) -> dict:
        """A store worker row as GET /list_workers shows it (the model's Worker), with the frames it holds."""
        if current is None:
            current = self.store.current_frames(worker["worker_id"])
        done = worker["frames_done"]
        return Worker(
            worker_id=worker["worker_id"],
            name=worker["name"],
            host=worker["host"],
            blender_version=worker["blender_version"],
            cpu_count=worker["cpu_count"],
            enabled=bool(worker["enabled"]),
            allows_python=bool(worker["allows_python"]),
            video_encoders=worker.get("video_encoders") or "",
            alive=self.clock() - worker["last_seen"] < self.alive_seconds(),
            last_seen=worker["last_seen"],
            registered_at=worker["registered_at"],
            current=[
                {"task_id": f["task_id"], "task_name": f["task_name"], "frame": f["frame"], "status": f["status"],
                 "started_at": f["started_at"]}
                for f in sorted(current, key=lambda f: (f["task_id"], f["frame"]))
            ],
            frames_done=done,
            frames_failed=worker["frames_failed"],
            mean_frame_seconds=worker["render_seconds_total"] / done if done else None,
            devices=worker["devices"],
            engines=worker["engines"],
            tags=worker["tags"],
            tags_by_admin=bool(worker["tags_by_admin"]),
        ).to_dict()

    def worker_detail(self, name: str) -> dict:
        """One worker by name as GET /worker (its page, `renderq workers NAME`) shows it: its description, its
        latest done frames with their exact times, its latest failures with their errors, and the lines it wrote
        in the tail of the log of the frame it renders now. A fixed number of indexed queries."""
        worker = self._worker_by_name(name)
        described = self.describe_worker(worker)
        described["engine_names"] = [engine_label(engine) for engine in described["engines"]]
        described["recent_frames"] = [
            {"task_id": f["task_id"], "task_name": f["task_name"], "frame": f["frame"], "attempts": f["attempts"],
             "started_at": f["started_at"], "ended_at": f["ended_at"], "render_seconds": f["render_seconds"],
             "output": f["output"], "preview": f["preview_sha256"] is not None, "kind": f["kind"]}
            for f in self.store.worker_done_frames(worker["worker_id"], WORKER_RECENT_FRAMES)]
        described["failures"] = self.store.worker_failures(worker["worker_id"], WORKER_RECENT_FAILURES)
        described["log"] = self._worker_log(name, described["current"])
        return described

    def _worker_log(self, name: str, current: list[dict]) -> dict | None:
        """The worker's lines (each starts "[name] ") in the last WORKER_LOG_TAIL_BYTES of the log of the task it
        renders now; None when it renders nothing."""
        if not current:
            return None
        frame = next((f for f in current if f["status"] == FrameStatus.RENDERING), current[0])
        _, size = self.store.read_log(frame["task_id"], 0, 0)
        start = max(0, size - WORKER_LOG_TAIL_BYTES)
        chunk, _ = self.store.read_log(frame["task_id"], start, WORKER_LOG_TAIL_BYTES)
        lines = chunk.decode("utf-8", errors="replace").splitlines(keepends=True)
        if start and lines:
            lines = lines[1:]  # the tail may begin inside a line
        prefix = f"[{name}] "
        return {"task_id": frame["task_id"], "frame": frame["frame"],
                "text": "".join(line for line in lines if line.startswith(prefix))}

    def list_tasks(self, status: str | None = None) -> list[dict]:
        """Task summaries, newest first, optionally of one status."""
        if status is not None and status not in TaskStatus.values():
            raise BadRequest(f"status must be one of {', '.join(TaskStatus.values())}, not {status!r}")
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
        if status is not None and status not in FrameStatus.values():
            raise BadRequest(f"frames_status must be one of {', '.join(FrameStatus.values())}, not {status!r}")
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

    def describe_tasks(self, tasks: list[dict]) -> list[dict]:
        """Summaries (progress, ETA, who renders, why it waits) of store task rows, with a fixed number of queries
        whatever the number of tasks."""
        open_ids = [t["task_id"] for t in tasks if t["status"] in TASK_OPEN]
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
        states = self._eta_states(tasks, counts, failed)
        estimators = self._eta.estimators(
            states.values(), self._done_frame_times,
            lambda task_ids: self.store.frames_claimed_last_many(task_ids, eta.TAIL_FRAMES)) if states else {}
        blocked = self.store.blocked_workers_many([t["task_id"] for t in tasks], self.policy.bad_worker_failures)
        started = {t["task_id"]: t["started_at"] for t in tasks}
        measured = {task_id: (states[task_id], estimator, started[task_id]) for task_id, estimator in estimators.items()
                    if estimator.measured}
        costs_left = self._costs_left.costs(measured, self._done_frame_times) if measured else {}
        workers: list[dict] | None = None
        described = []
        for task in tasks:
            task_id = task["task_id"]
            if task_id in counts:
                task_counts = counts[task_id]
            else:
                task_counts = {FrameStatus.DONE: task["frames_done"], FrameStatus.FAILED: task["frames_failed"],
                               FrameStatus.CANCELED: task["frames_total"] - task["frames_done"]
                               - task["frames_failed"]}
            waiting_reason = None
            if (task["status"] in TASK_CLAIMABLE and task_counts.get(FrameStatus.QUEUED)
                    and not (task_counts.get(FrameStatus.RENDERING, 0) + task_counts.get(FrameStatus.LEASED, 0))):
                if workers is None:
                    workers = self.store.list_workers()
                waiting_reason = self._capable_workers(task, workers, blocked[task_id])[1]
            summary = self._describe_task(task, task_counts, current.get(task_id, []), estimators.get(task_id),
                                          failed.get(task_id, []), waiting_reason, blocked[task_id])
            if task_id in costs_left:
                if workers is None:
                    workers = self.store.list_workers()
                summary["estimate"] = self._farm_estimate(task, measured[task_id][1].model, costs_left[task_id],
                                                          current.get(task_id, []), workers, blocked[task_id])
            described.append(summary)
        return described

    def _eta_states(self, tasks: list[dict], counts: dict[int, dict[str, int]],
                    failed: dict[int, list[int]]) -> dict[int, eta.TaskState]:
        """What the estimators of the tasks queued, running or awaiting approval are built from: the eta cache
        keeps each while its done and failed frames stay the same, else builds it from its done frames (one query
        for all of those)."""
        return {t["task_id"]: eta.TaskState(t["task_id"], t["created_at"], t["frame_start"], t["frame_end"],
                                            t["frame_step"], counts[t["task_id"]].get(FrameStatus.DONE, 0),
                                            tuple(failed.get(t["task_id"], ())))
                for t in tasks if t["status"] in TASK_CLAIMABLE | TASK_APPROVABLE}

    def _farm_estimate(self, task: dict, model: eta.CostModel, left: estimate.Left, current: list[dict],
                       all_workers: list[dict], blocked: list[dict]) -> dict[str, Any]:
        """The task's `estimate`: its frames left on the workers that may take it now (coordinator.estimate)."""
        capable = [w["worker_id"] for w in self._capable_workers(task, all_workers, blocked)[0]]
        holdings = [estimate.Holding(f["frame"], f["worker_id"], f["status"] == FrameStatus.RENDERING,
                                     f["started_at"]) for f in current]
        pricing = estimate.Pricing(self.policy.cost_per_worker_hour, self.policy.cost_currency,
                                   self.policy.watts_per_worker)
        return estimate.farm_estimate(model, left, holdings, capable, self.clock(), pricing) or {}

    def _done_frame_times(self, task_ids: list[int]) -> dict[int, list[eta.DoneFrame]]:
        # The model reads only the last MODEL_FRAMES timed frames; the others only count as done.
        return {task_id: [eta.DoneFrame(*row) for row in rows]
                for task_id, rows in self.store.done_frame_times_many(task_ids, eta.MODEL_FRAMES).items()}

    def _describe_task(self, task: dict, counts: dict[str, int], current: list[dict],
                       estimator: eta.TaskEstimator | None, failed_frames: list[int], waiting_reason: str | None,
                       blocked: list[dict]) -> dict:
        task_id = task["task_id"]
        total = task["frames_total"]
        done = counts.get(FrameStatus.DONE, 0)
        failed = counts.get(FrameStatus.FAILED, 0)
        rendering = counts.get(FrameStatus.RENDERING, 0)
        leased = counts.get(FrameStatus.LEASED, 0)
        queued = counts.get(FrameStatus.QUEUED, 0)
        workers_rendering = len({f["worker_id"] for f in current if f["status"] == FrameStatus.RENDERING})
        if task["status"] in (TaskStatus.PAUSED, TaskStatus.AWAITING_APPROVAL):
            eta_seconds = None  # nothing new starts until it is resumed, or approved
        elif task["status"] not in TASK_CLAIMABLE or not queued + leased + rendering:
            eta_seconds = 0.0
        elif estimator is None:
            eta_seconds = None
        else:
            eta_seconds = estimator.eta_seconds(
                [eta.ActiveFrame(f["frame"], f["worker_id"], f["status"] == FrameStatus.RENDERING, f["started_at"])
                 for f in current], self.clock())
        low, high = estimator.eta_range(eta_seconds) if estimator is not None else (eta_seconds, eta_seconds)
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
            "tags": task["tags"],
            "render_engine": task["render_engine"],
            "device": task["device"],
            "video": task.get("video"),
            "order": task["render_order"],
            "tiles": task.get("tiles") or "",
            "frame_timeout": task["frame_timeout"],
            "no_progress_timeout": task["no_progress_timeout"],
            "waiting_reason": waiting_reason,
            "scout_frames": task.get("scout_frames") or 0,
            "estimate": None,
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
                "canceled": counts.get(FrameStatus.CANCELED, 0),
                "held": counts.get(FrameStatus.HELD, 0),
                "percent": round(100.0 * done / total, 1) if total else 100.0,
                "eta_seconds": eta_seconds,
                "eta_low_seconds": low,
                "eta_high_seconds": high,
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

    def _capable_workers(self, task: dict, all_workers: list[dict], blocked: list[dict]
                         ) -> tuple[list[dict], str | None]:
        """The live, switched-ON workers that may render the task's frames by the claim's rules, and when there
        are none, why the task waits."""
        now = self.clock()
        workers = [w for w in all_workers if w["enabled"] and now - w["last_seen"] < self.alive_seconds()]
        if not workers:
            return [], "waiting: no worker is alive and switched ON"
        if task["workers"]:
            workers = [w for w in workers if w["name"] in task["workers"]]
            if not workers:
                return [], f"waiting: none of its workers ({', '.join(task['workers'])}) is alive and switched ON"
        needed = task["blender_version_key"]
        if needed:
            if task["blender_version_exact"]:
                workers = [w for w in workers if w["blender_version_key"] == needed]
                if not workers:
                    return [], f"waiting: no worker with Blender {key_to_version(needed)}"
            else:
                workers = [w for w in workers if w["blender_version_key"] >= needed]
                if not workers:
                    return [], f"waiting: no worker with Blender >= {key_to_version(needed)}"
        if task["needs_python"]:
            workers = [w for w in workers if w["allows_python"]]
            if not workers:
                return [], ("waiting: the file runs Python (scripts or drivers); "
                        "it needs a worker started with --allow-blend-python")
        workers, reason = _offering(task, workers)
        if reason:
            return [], reason
        blocked_ids = {b["worker_id"] for b in blocked}
        workers = [w for w in workers if w["worker_id"] not in blocked_ids]
        if not workers:
            return [], (f"waiting: every worker that could render it has failed it {self.policy.bad_worker_failures} "
                    "times and is blocked; retry its failed frames to unblock them")
        return workers, None

    @staticmethod
    def _describe_frame(frame: dict, names: dict[int, str], failed_on: list[str]) -> dict:
        """A store frame row as GET /task lists it (the model's Frame): the worker by name, not by id."""
        return Frame(
            frame=frame["frame"],
            status=frame["status"],
            worker=names.get(frame["worker_id"]) if frame["worker_id"] is not None else None,
            attempts=frame["attempts"],
            failures=frame["failures"],
            failed_on=failed_on,
            started_at=frame["started_at"],
            ended_at=frame["ended_at"],
            render_seconds=frame["render_seconds"],
            output=frame["output"],
            output_sha256=frame["output_sha256"],
            output_size=frame["output_size"],
            error=frame["error"],
            log_tail=frame["log_tail"],
            preview_sha256=frame.get("preview_sha256"),
            kind=frame.get("kind") or FRAME_KIND_RENDER,
        ).to_dict()


def _offering(task: dict, workers: list[dict]) -> tuple[list[dict], str | None]:
    """The workers that offer what the task needs (its tags, its engine, a GPU), or why none does. Tested in the
    claim's order of reasons, so the sentence names what is missing first."""
    if task["tags"]:
        workers = [w for w in workers if set(task["tags"]) <= set(w["tags"])]
        if not workers:
            plural = "s" if len(task["tags"]) > 1 else ""
            return [], f"waiting: no live worker has the tag{plural} {', '.join(task['tags'])}"
    engine_bits = task["needs"] & ALL_ENGINES
    if engine_bits:
        workers = [w for w in workers if w["offers"] & engine_bits == engine_bits]
        if not workers:
            return [], f"waiting: no live worker can render {engine_label(task['render_engine'])}"
    if task["needs"] & GPU_BIT:
        workers = [w for w in workers if w["offers"] & GPU_BIT]
        if not workers:
            return [], "waiting: the task asks for GPU rendering and no live worker renders Cycles on a GPU"
    if _encode_job_added(task):
        # The frames are done and the encode job (counted in frames_total) waits for a worker with FFmpeg.
        workers = [w for w in workers if w["offers"] & ENCODE_BIT]
        if not workers:
            return [], "waiting: its video is to be encoded and no live worker has FFmpeg"
    return workers, None


def _encode_job_added(task: dict) -> bool:
    """Whether the task's encode job row exists: frames_total counts it beside the frames of the range."""
    rendered = len(range(task["frame_start"], task["frame_end"] + 1, task["frame_step"]))
    return bool(task.get("video")) and task["frames_total"] > rendered


def no_task_sentence(task_id: int) -> str:
    """The refusal for an unknown task id."""
    return f"no task with id {task_id}"


def no_worker_sentence(worker_id: int) -> str:
    """The refusal for an unknown worker id."""
    return f"no worker with id {worker_id}; register first"
