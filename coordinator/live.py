"""What the status page polls: snapshots of the farm (and of one task) and the changes between them.

Each snapshot is built at most once per poll interval, however many pages are open: every request in between
gets the cached one. Each rebuild is compared with the previous snapshot, and what changed is kept as a change
set under the next version number. A page that has version V asks for the changes since V and gets only the
items that changed (or a full snapshot when V is unknown or older than the history kept). An admin's change
(pause, priority, a worker switched) makes the next poll rebuild at once: on this coordinator, and on PostgreSQL on
every coordinator (and serving process) sharing the database too, told through LISTEN/NOTIFY.

Snapshots leave out what changes without news: workers' heartbeat times (only whether they are alive) and
elapsed times (the page computes them from start times and the server's clock). So an idle farm sends almost
nothing, and one worker changing sends that worker.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from renderq.capabilities import describe_devices, engine_label
from renderq.model import TASK_OPEN, page_statuses

from .scheduler import Scheduler

Sections = dict[str, dict[str, Any]]
Clock = Callable[[], float]

# The farm page lists this many of the newest tasks, plus every older task that is still open.
NEWEST_TASKS = 500
# How many change sets a feed keeps; a page further behind than that gets a full snapshot.
HISTORY = 120
# Versions grow by this much per change set; below it, each feed's own tag (see ChangeFeed).
VERSION_STEP = 1 << 16
# A task page's feed is dropped after this long without a poll.
TASK_FEED_IDLE_SECONDS = 120.0
MAX_TASK_FEEDS = 64
# The PostgreSQL channel on which coordinators sharing a database announce an admin's change (payload: the task's
# id, or empty for the farm as a whole).
CHANGES_CHANNEL = "renderq_status_changes"
# A task page shows its frames this many at a time, and its latest rendered frames this many (from any page).
TASK_PAGE_FRAMES = 1_000
LATEST_FRAMES = 16


class ChangeFeed:
    """Versioned change sets of a snapshot that `build` makes at most once per `interval` seconds."""

    def __init__(self, build: Callable[[], Sections], interval: float, history: int = HISTORY,
                 clock: Clock = time.monotonic) -> None:
        self._build = build
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._sections: Sections | None = None
        self._built_at = 0.0
        self._stale = True
        # Versions continue across coordinator restarts (they start from the wall clock in seconds), so a page
        # still open on a previous coordinator can never mistake an old version for a current one; and their low
        # bits are this feed's own random tag, so a page whose polls a load balancer sends to another coordinator
        # of a cluster gets a full snapshot there, never changes counted from a version that is not theirs. (Under
        # 2**53: the page keeps versions as JavaScript numbers.)
        self._tag = secrets.randbelow(VERSION_STEP)
        self._version = int(time.time()) * VERSION_STEP + self._tag
        self._history: collections.deque[tuple[int, Sections]] = collections.deque(maxlen=history)
        self.last_used = clock()

    @property
    def version(self) -> int:
        return self._version

    def invalidate(self) -> None:
        """Rebuild at the next request, not at the end of the interval (an admin has just changed something)."""
        self._stale = True

    def _refresh(self) -> None:
        now = self._clock()
        self.last_used = now
        if not self._stale and now - self._built_at < self.interval:
            return
        with self._lock:
            # Another request may have rebuilt it while this one waited for the lock.
            if not self._stale and self._clock() - self._built_at < self.interval:
                return
            self._stale = False
            sections = self._build()
            self._built_at = self._clock()
            if self._sections is None:
                self._sections = sections
                return
            changes = diff_sections(self._sections, sections)
            self._sections = sections
            if changes:
                self._version += VERSION_STEP
                self._history.append((self._version, changes))

    def updates(self, since: int | None) -> dict[str, Any]:
        """The changes since version `since`, or the full snapshot (`full: true`) when they are not known."""
        self._refresh()
        with self._lock:
            version, sections, history = self._version, self._sections, list(self._history)
            next_build = max(0.0, self.interval - (self._clock() - self._built_at))
        answer: dict[str, Any] = {"version": version, "next_poll": round(next_build, 3)}
        oldest_known = history[0][0] - VERSION_STEP if history else version
        if since is not None and since % VERSION_STEP == self._tag and oldest_known <= since <= version:
            merged: Sections = {}
            for number, changes in history:
                if number > since:
                    for section, items in changes.items():
                        merged.setdefault(section, {}).update(items)
            answer.update(full=False, changes=merged)
        else:
            answer.update(full=True, snapshot=sections)
        return answer


def diff_sections(old: Sections, new: Sections) -> Sections:
    """Per section, the items that are new or changed (their new value) or gone (None)."""
    changes: Sections = {}
    for section in old.keys() | new.keys():
        before, after = old.get(section, {}), new.get(section, {})
        changed = {key: value for key, value in after.items() if before.get(key) != value}
        changed.update({key: None for key in before.keys() - after.keys()})
        if changed:
            changes[section] = changed
    return changes


class LiveStatus:
    """The farm's feed and one feed per task page being watched."""

    def __init__(self, scheduler: Scheduler, interval: float) -> None:
        self.scheduler = scheduler
        self.interval = interval
        self.farm = ChangeFeed(lambda: farm_sections(scheduler), interval)
        self._task_feeds: dict[tuple[int, int], ChangeFeed] = {}
        self._lock = threading.Lock()

    def task_feed(self, task_id: int, page: int = 0) -> ChangeFeed:
        """The feed of one page of a task's frames (the caller checked that the task exists)."""
        key = (task_id, page)
        with self._lock:
            feed = self._task_feeds.get(key)
            if feed is None:
                self._drop_idle_feeds()
                feed = ChangeFeed(lambda: task_sections(self.scheduler, task_id, page), self.interval)
                self._task_feeds[key] = feed
            return feed

    def _drop_idle_feeds(self) -> None:
        now = time.monotonic()
        for task_id, feed in list(self._task_feeds.items()):
            if now - feed.last_used > TASK_FEED_IDLE_SECONDS:
                del self._task_feeds[task_id]
        while len(self._task_feeds) >= MAX_TASK_FEEDS:
            oldest = min(self._task_feeds, key=lambda key: self._task_feeds[key].last_used)
            del self._task_feeds[oldest]

    def changed(self, task_id: int | None = None) -> None:
        """An admin changed something: the next poll shows it without waiting for the interval, here and on every
        coordinator sharing the database (PostgreSQL's NOTIFY; see follow_others)."""
        self._invalidate(task_id)
        self.scheduler.store.announce(CHANGES_CHANNEL, "" if task_id is None else str(task_id))

    def follow_others(self, stop: threading.Event) -> None:
        """In a background thread until `stop` is set: invalidate the feeds when another coordinator (or another
        process of this one) announces an admin's change, so its pages here show it at their next poll. Nothing to
        follow on SQLite, which no other coordinator shares."""
        threading.Thread(target=self.scheduler.store.follow_announcements,
                         args=(CHANGES_CHANNEL, self._announced, stop), name="status-listener", daemon=True).start()

    def _announced(self, payload: str | None) -> None:
        # None: announcements may have been missed while the link was down, so every feed is rebuilt.
        self._invalidate(int(payload) if payload and payload.isdigit() else None)

    def _invalidate(self, task_id: int | None) -> None:
        self.farm.invalidate()
        with self._lock:
            feeds = [feed for (feed_task, _), feed in self._task_feeds.items()
                     if task_id is None or feed_task == task_id]
        for feed in feeds:
            feed.invalidate()


# -- what the snapshots hold -----------------------------------------------------------------------------------------


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def worker_item(worker: dict) -> dict[str, Any]:
    """A worker as the status page shows it; last_seen only once it is offline (it moves with every heartbeat)."""
    return {
        "id": worker["worker_id"],
        "name": worker["name"],
        "host": worker["host"],
        "enabled": worker["enabled"],
        "alive": worker["alive"],
        "last_seen": None if worker["alive"] else worker["last_seen"],
        "blender": worker["blender_version"],
        "cpus": worker["cpu_count"],
        "current": [{"task_id": f["task_id"], "task": f["task_name"], "frame": f["frame"], "status": f["status"],
                     "started_at": f["started_at"]} for f in worker["current"]],
        "done": worker["frames_done"],
        "failed": worker["frames_failed"],
        "mean": _rounded(worker["mean_frame_seconds"]),
        **offered_item(worker),
    }


def offered_item(worker: dict) -> dict[str, Any]:
    """What a worker offers, as the page shows it: the devices Cycles renders on (else those Blender sees), its
    engines by the names people use, what its FFmpeg encodes ('' for none), its tags and whether an admin set them."""
    used = [device for device in worker["devices"] if device.get("use")] or worker["devices"]
    return {"devices": describe_devices(used) if used else "", "engines": [engine_label(e) for e in worker["engines"]],
            "video": worker["video_encoders"], "tags": worker["tags"], "tags_by_admin": worker["tags_by_admin"]}


def task_item(task: dict) -> dict[str, Any]:
    """A task summary as the farm page shows it."""
    progress = task["progress"]
    eta = progress["eta_seconds"]
    return {
        "id": task["task_id"],
        "name": task["name"],
        "owner": task["owner"],  # who submitted, from their token
        "by": task["submitted_by"],  # a label the client chose: shown, never trusted
        "status": task["status"],
        "priority": task["priority"],
        "created_at": task["created_at"],
        "started_at": task["started_at"],
        "ended_at": task["ended_at"],
        "total": progress["total"],
        "done": progress["done"],
        "failed": progress["failed"],
        "rendering": progress["rendering"],
        "queued": progress["queued"],
        "percent": progress["percent"],
        "eta": None if eta is None else round(eta),
        "eta_low": _rounded(progress.get("eta_low_seconds"), 0),
        "eta_high": _rounded(progress.get("eta_high_seconds"), 0),
        "order": task.get("order"),
        "workers": sorted({c["worker"] for c in progress["current"] if c["worker"]}),
        "waiting": task["waiting_reason"],
        "held": progress.get("held", 0),
        "scouts": task.get("scout_frames") or 0,
        "estimate": task.get("estimate"),
    }


def farm_sections(scheduler: Scheduler) -> Sections:
    """The farm page's snapshot: every worker, the newest tasks (and all open ones) and the farm's totals."""
    workers = scheduler.list_workers()
    tasks = scheduler.describe_tasks(scheduler.store.list_tasks_for_status(NEWEST_TASKS))
    totals = {
        "workers": len(workers),
        "alive": sum(1 for w in workers if w["alive"]),
        "on": sum(1 for w in workers if w["enabled"] and w["alive"]),
        "busy": sum(1 for w in workers if w["current"]),
        "open_tasks": sum(1 for t in tasks if t["status"] in TASK_OPEN),
        "frames_rendering": sum(t["progress"]["rendering"] for t in tasks),
        "frames_queued": sum(t["progress"]["queued"] for t in tasks if t["status"] in TASK_OPEN),
    }
    return {
        "workers": {str(w["worker_id"]): worker_item(w) for w in workers},
        "tasks": {str(t["task_id"]): task_item(t) for t in tasks},
        # The status sets the page's script needs, from the model (they never change, so only a full snapshot
        # carries them and the page keeps them).
        "farm": {"totals": totals, "statuses": page_statuses()},
    }


def frame_item(frame: dict) -> list[Any]:
    """One frame, compact (a task may have thousands): [status, worker, attempts, started_at, ended_at,
    render_seconds, output file name, error, whether it has a PNG preview (its thumbnail, whatever its format)]."""
    return [frame["status"], frame["worker"], frame["attempts"], frame["started_at"], frame["ended_at"],
            _rounded(frame["render_seconds"], 3), frame["output"] if frame["output_sha256"] else None,
            frame["error"], bool(frame.get("preview_sha256"))]


def task_sections(scheduler: Scheduler, task_id: int, page: int = 0) -> Sections:
    """A task page's snapshot: the task's summary, one page of its frames (TASK_PAGE_FRAMES of them; the summary
    says which page of how many) and its latest rendered frames, whichever page they are on."""
    task = scheduler.task_detail(task_id, with_frames=False)
    # A task's frames are its range, so page n starts at a known frame number without counting rows.
    first = task["frame_start"] + page * TASK_PAGE_FRAMES * task["frame_step"]
    frames, _ = scheduler.frames_page(task_id, first - 1, TASK_PAGE_FRAMES)
    latest = scheduler.latest_done_frames(task_id, LATEST_FRAMES)
    summary = task_item(task)
    summary.update(
        page=page, pages=max(1, -(-task["progress"]["total"] // TASK_PAGE_FRAMES)), page_size=TASK_PAGE_FRAMES,
        frame_start=task["frame_start"], frame_end=task["frame_end"], frame_step=task["frame_step"],
        main_file=task["main_file"], blender_version=task["blender_version"],
        blender_version_exact=task["blender_version_exact"], assigned=task["workers"],
        files_count=task["files_count"], files_bytes=task["files_bytes"], files_deleted=task["files_deleted"],
        missing_assets=task["missing_assets_count"], canceled=task["progress"]["canceled"],
        leased=task["progress"]["leased"],
        blocked=[{"worker": b["worker"], "failures": b["failures"]} for b in task["blocked_workers"]],
    )
    return {"task": {"summary": summary, "statuses": page_statuses()},
            "frames": {str(f["frame"]): frame_item(f) for f in frames},
            "latest": {str(f["frame"]): frame_item(f) for f in latest}}
