"""Following the farm: the artist's tasks and the workers, task end notices, thumbnails, downloads, approve and
cancel.

A timer polls the coordinator (in a job) every few seconds while a task of this session is unfinished, or while
"All My Tasks" is on. When a task ends, the artist is told even with the panel closed. The thumbnail of a task's
last finished frame is downloaded in a job and shown through `bpy.utils.previews`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from typing import Any

import bpy
import bpy.utils.previews

from renderq.frame_download import fetch_done_frames
from renderq.http_client import NotFound
from renderq.model import TASK_APPROVABLE, VIDEO_FRAME, Frame, FrameStatus, TaskStatus

from . import client, jobs, notify, prefs, state, text

POLL_INTERVAL = 2.0
# The worker list refreshes itself this often while the scene on screen picks workers.
WORKERS_INTERVAL = 5.0
_TIMER_INTERVAL = 1.0
# What only a task's detail (GET /task) carries, not the task list's summaries.
DETAIL_KEYS = ("latest_done", "missing_assets", "settings")
# A thumbnail is the frame's PNG preview when it has one, else the rendered frame itself; past this size the frame is
# not worth fetching just for a thumbnail.
THUMBNAIL_MAX_BYTES = 64 * 1024 * 1024
# Formats Blender's preview loader reads; others (e.g. multilayer EXR) get no thumbnail.
_THUMBNAIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".tga", ".webp", ".hdr")

_previews: Any = None
_thumbnail_dir: str | None = None
_last_poll_error = ""


Refused = client.Refused


def _settings() -> client.Settings:
    """The coordinator settings, checked; raises Refused (main thread)."""
    return client.checked_settings()


# -- tasks ---------------------------------------------------------------------------------------------------------


def _show_all_my_tasks() -> bool:
    preferences = prefs.get()
    return bool(preferences and preferences.show_all_my_tasks)


def _tasks_to_follow() -> list[int]:
    """Tasks of this session whose detail is needed: unfinished ones, and ended ones whose detail was not fetched."""
    follow = []
    for task_id in state.SESSION.session_task_ids:
        task = state.SESSION.tasks.get(task_id)
        if task is None or not state.is_final(task) or "latest_done" not in task:
            follow.append(task_id)
    return follow


def poll() -> bool:
    """Start fetching the followed tasks (and the user's task list when shown); False when already running."""
    settings = _settings()
    task_ids = _tasks_to_follow()
    list_mine = _show_all_my_tasks()
    user = client.current_user()

    def work(_progress: Any) -> dict:
        coordinator = settings.client(timeout=client.CHECK_TIMEOUT * 2)
        full: list[dict] = []
        gone: list[int] = []
        for task_id in task_ids:
            try:
                # The detail without frames: a task of many frames would cost a big answer every poll, and the
                # thumbnail needs only the latest rendered frame, which the detail names.
                full.append(coordinator.get_task(task_id, with_frames=False))
            except NotFound:
                gone.append(task_id)  # deleted on the coordinator (or another coordinator now)
        mine = None
        if list_mine:
            mine = [task for task in coordinator.list_tasks() if task.get("submitted_by") == user]
        return {"full": full, "gone": gone, "mine": mine}

    state.SESSION.tasks_fetched_at = time.monotonic()
    return jobs.start("tasks", work, on_done=_on_tasks, on_error=_on_tasks_error)


def _on_tasks(answer: dict) -> None:
    global _last_poll_error
    _last_poll_error = ""
    session = state.SESSION
    session.tasks_error = ""
    session.tasks_fetched_at = time.monotonic()
    for task_id in answer.get("gone", []):
        state.forget_task(task_id)
        session.tasks.pop(task_id, None)
    for task in answer.get("full", []):
        _update(task)
    mine = answer.get("mine")
    if mine is not None:
        session.my_task_ids = [task["task_id"] for task in mine if isinstance(task.get("task_id"), int)]
        for task in mine:
            _update(task)


def _on_tasks_error(error: BaseException) -> None:
    global _last_poll_error
    sentence = client.error_sentence(error)
    state.SESSION.tasks_error = sentence
    state.SESSION.tasks_fetched_at = time.monotonic()
    if sentence != _last_poll_error:  # polling repeats; say it once, not every two seconds
        print(f"RenderQ: cannot follow the tasks: {sentence}", flush=True)
        _last_poll_error = sentence


def _update(task: dict) -> None:
    """Store a task's new state, announce its end, and fetch a newer thumbnail when there is one."""
    task_id = task.get("task_id")
    if not isinstance(task_id, int):
        return
    before = state.SESSION.tasks.get(task_id)
    if before is not None:
        # A summary from the task list must not wipe what the task's detail brought.
        task = {**{key: before[key] for key in DETAIL_KEYS if key in before}, **task}
    state.remember_task(task)
    if state.is_final(task) and before is not None and not state.is_final(before):
        _announce_end(task)
    if task.get("status") in TASK_APPROVABLE and (before is None or before.get("status") not in TASK_APPROVABLE):
        notify.tell(f"Task {task_id} ({task.get('name', '')}): its scout frames are done; approve or cancel it "
                    "in the RenderQ panel", "INFO", popup=before is not None)
    if "latest_done" in task or "frames" in task:
        _maybe_fetch_thumbnail(task)


def _announce_end(task: dict) -> None:
    task_id = task["task_id"]
    if task_id in state.SESSION.announced:
        return
    state.SESSION.announced.add(task_id)
    progress = task.get("progress") or {}
    done, total = state.as_int(progress.get("done")), state.as_int(progress.get("total"))
    name = task.get("name", "")
    status = task.get("status")
    if status == TaskStatus.DONE:
        notify.tell(f"Task {task_id} ({name}) is done: {done} of {total} frames rendered", "INFO", popup=True)
        return
    failed = task.get("failed_frames") or []
    failed_text = f"; failed frames {text.frame_list(failed)}" if failed else ""
    notify.tell(f"Task {task_id} ({name}) ended {status}: {done} of {total} frames rendered{failed_text}",
                "WARNING", popup=True)


def last_finished_frame(task: dict) -> Frame | None:
    """The done frame that ended last, or None (also when the coordinator's answer describes no frame)."""
    try:
        if "latest_done" in task:
            latest = task["latest_done"]
            return Frame.from_dict(latest) if isinstance(latest, dict) else None
        done = [frame for frame in map(Frame.from_dict, task.get("frames") or []) if frame.is_done]
    except ValueError:
        return None
    if not done:
        return None
    return max(done, key=lambda frame: (frame.ended_at or 0.0, frame.frame or 0))


# -- thumbnails ------------------------------------------------------------------------------------------------------


def _maybe_fetch_thumbnail(task: dict) -> None:
    if _previews is None or bpy.app.background:
        return  # nobody sees thumbnails in background mode
    frame = last_finished_frame(task)
    if frame is None:
        return
    task_id = task["task_id"]
    shown = state.SESSION.thumbnails.get(task_id)
    if shown is not None and shown[0] == frame.frame:
        return
    name = frame.output if isinstance(frame.output, str) else ""
    # The small PNG the worker made of a frame whose format a browser cannot show (a multilayer EXR among them).
    preview = bool(frame.preview_sha256)
    if not preview and (not name.lower().endswith(_THUMBNAIL_SUFFIXES)
                        or state.as_int(frame.output_size) > THUMBNAIL_MAX_BYTES):
        return
    try:
        settings = _settings()
    except Refused:
        return
    frame_number = frame.frame
    folder = os.path.join(_thumbnails_folder(), f"task-{task_id}-frame-{frame_number}")
    expected = frame.preview_sha256 if preview else frame.output_sha256

    def work(_progress: Any) -> str:
        os.makedirs(folder, exist_ok=True)
        coordinator = settings.client(timeout=client.TRANSFER_TIMEOUT)
        return coordinator.download_frame(task_id, frame_number, folder, expected_sha256=expected, preview=preview)

    def done(path: str) -> None:
        _show_thumbnail(task_id, frame_number, path)

    def failed(error: BaseException) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"RenderQ: no thumbnail for task {task_id}: {client.error_sentence(error)}", flush=True)

    jobs.start(f"thumbnail:{task_id}", work, on_done=done, on_error=failed)


def _thumbnails_folder() -> str:
    global _thumbnail_dir
    if _thumbnail_dir is None or not os.path.isdir(_thumbnail_dir):
        _thumbnail_dir = tempfile.mkdtemp(prefix="renderq-thumbnails-")
    return _thumbnail_dir


def _show_thumbnail(task_id: int, frame: int, path: str) -> None:
    if _previews is None:
        return
    key = f"{task_id}:{frame}"
    old = state.SESSION.thumbnails.get(task_id)
    if key not in _previews:
        _previews.load(key, path, "IMAGE")
    state.SESSION.thumbnails[task_id] = (frame, key)
    if old is not None and old[1] != key and old[1] in _previews:
        del _previews[old[1]]
        shutil.rmtree(os.path.join(_thumbnails_folder(), f"task-{task_id}-frame-{old[0]}"), ignore_errors=True)


def thumbnail_icon(task_id: int) -> int:
    """The icon id of a task's thumbnail, or 0 when there is none."""
    shown = state.SESSION.thumbnails.get(task_id)
    if shown is None or _previews is None or shown[1] not in _previews:
        return 0
    return _previews[shown[1]].icon_id


# -- actions on one task -----------------------------------------------------------------------------------------


def approve(task_id: int) -> None:
    """Approve a task whose scout frames are done: the rest renders (in a job); raises Refused."""
    settings = _settings()

    def work(_progress: Any) -> dict:
        return settings.client().approve_task(task_id)

    def done(task: dict) -> None:
        state.remember_task(task)
        notify.tell(f"Task {task_id} approved: the rest of its frames render now")

    def failed(error: BaseException) -> None:
        notify.tell(f"Could not approve task {task_id}: {client.error_sentence(error)}", "ERROR")

    if not jobs.start(f"approve:{task_id}", work, on_done=done, on_error=failed):
        raise Refused(f"Task {task_id} is being approved already")


def cancel(task_id: int) -> None:
    """Cancel a task's frames not rendered yet (in a job); raises Refused."""
    settings = _settings()

    def work(_progress: Any) -> dict:
        return settings.client().cancel_task(task_id)

    def done(task: dict) -> None:
        state.remember_task(task)
        notify.tell(f"Task {task_id} canceled: the frames not rendered yet will not be rendered")

    def failed(error: BaseException) -> None:
        notify.tell(f"Could not cancel task {task_id}: {client.error_sentence(error)}", "ERROR")

    if not jobs.start(f"cancel:{task_id}", work, on_done=done, on_error=failed):
        raise Refused(f"Task {task_id} is being canceled already")


def download(task_id: int, folder: str) -> None:
    """Download a task's rendered frames into `folder` (in a job), keeping files already there; raises Refused."""
    settings = _settings()

    def work(progress: Any) -> dict:
        coordinator = settings.client(timeout=client.TRANSFER_TIMEOUT)
        task = coordinator.get_task(task_id, frames_status=FrameStatus.DONE)
        fetched = fetch_done_frames(coordinator, task, folder, lambda index, count: progress((index, count)))
        return {"task": task, "downloaded": len(fetched.paths) - fetched.kept, "kept": fetched.kept,
                "skipped": fetched.skipped}

    def on_progress(payload: Any) -> None:
        index, count = payload
        state.SESSION.downloads[task_id] = f"Downloading frame {index} of {count}"

    def done(answer: dict) -> None:
        state.remember_task(answer["task"])
        downloaded, kept, skipped = answer["downloaded"], answer["kept"], answer["skipped"]
        if downloaded + kept + len(skipped) == 0:
            sentence = f"Task {task_id} has no rendered frames yet"
        else:
            already = f" ({kept} already there)" if kept else ""
            sentence = f"Downloaded {downloaded} frame(s) of task {task_id} into {folder}{already}"
        if skipped:
            # Each skipped frame is named once in the console; the panel gets the count and the first reason.
            for number, why in skipped:
                print(f"RenderQ: frame {number} of task {task_id} skipped: {why}")
            number, why = skipped[0]
            sentence += f"; {len(skipped)} frame(s) skipped, e.g. frame {number}: {why}"
        state.SESSION.downloads[task_id] = sentence
        notify.tell(sentence, "WARNING" if skipped else "INFO")

    def failed(error: BaseException) -> None:
        sentence = f"Could not download the frames of task {task_id}: {client.error_sentence(error)}"
        state.SESSION.downloads[task_id] = sentence
        notify.tell(sentence, "ERROR")

    if not jobs.start(f"download:{task_id}", work, on_done=done, on_error=failed, on_progress=on_progress):
        raise Refused(f"The frames of task {task_id} are being downloaded already")
    state.SESSION.downloads[task_id] = "Downloading..."


def open_video(task_id: int, folder: str) -> None:
    """Download a task's video into `folder` (in a job), then open it in the system's player; raises Refused."""
    settings = _settings()

    def work(_progress: Any) -> str:
        coordinator = settings.client(timeout=client.TRANSFER_TIMEOUT)
        return coordinator.download_frame(task_id, VIDEO_FRAME, folder)

    def done(path: str) -> None:
        sentence = f"The video of task {task_id} is {path}"
        state.SESSION.downloads[task_id] = sentence
        notify.tell(sentence, "INFO")
        if not bpy.app.background:  # no desktop to open it on in background mode
            bpy.ops.wm.path_open(filepath=path)

    def failed(error: BaseException) -> None:
        why = "it is not made yet" if isinstance(error, NotFound) else client.error_sentence(error)
        sentence = f"Could not get the video of task {task_id}: {why}"
        state.SESSION.downloads[task_id] = sentence
        notify.tell(sentence, "ERROR")

    if not jobs.start(f"video:{task_id}", work, on_done=done, on_error=failed):
        raise Refused(f"The video of task {task_id} is being downloaded already")
    state.SESSION.downloads[task_id] = "Downloading the video..."


# -- workers ---------------------------------------------------------------------------------------------------------


def refresh_workers(*, quiet: bool = False) -> bool:
    """Fetch the worker list (in a job); False when a refresh is running already. Raises Refused.

    `quiet` (the timer's refreshes) shows a failure in the panel only, instead of reporting it every time.
    """
    settings = _settings()
    state.SESSION.workers_fetched_at = time.monotonic()

    def work(_progress: Any) -> list[dict]:
        return settings.client(timeout=client.CHECK_TIMEOUT * 2).list_workers()

    def done(workers: list[dict]) -> None:
        state.SESSION.workers = sorted(
            (worker for worker in workers if isinstance(worker, dict)), key=lambda w: str(w.get("name", ""))
        )
        state.SESSION.workers_error = ""
        state.SESSION.workers_fetched_at = time.monotonic()

    def failed(error: BaseException) -> None:
        state.SESSION.workers_error = client.error_sentence(error)
        state.SESSION.workers_fetched_at = time.monotonic()
        if not quiet:
            notify.tell(f"Could not list the workers: {state.SESSION.workers_error}", "ERROR")

    return jobs.start("workers", work, on_done=done, on_error=failed)


# -- timer -----------------------------------------------------------------------------------------------------------


def _picking_workers() -> bool:
    """Whether the scene on screen assigns its task to picked workers (its panel then lists them live)."""
    scene = getattr(bpy.context, "scene", None)
    settings = getattr(scene, "renderq", None)
    return settings is not None and settings.assignment == "MANUAL"


def _timer() -> float:
    try:
        session = state.SESSION
        if client.online_access_problem() is not None:
            return _TIMER_INTERVAL
        wanted = bool(_tasks_to_follow()) or _show_all_my_tasks()
        if wanted and state.age(session.tasks_fetched_at) >= POLL_INTERVAL and not jobs.is_running("tasks"):
            poll()
        if (_picking_workers() and state.age(session.workers_fetched_at) >= WORKERS_INTERVAL
                and not jobs.is_running("workers")):
            refresh_workers(quiet=True)
    except Refused:
        pass
    except Exception:  # noqa: BLE001 - a timer that raises is unregistered by Blender; keep following
        traceback.print_exc()
    return _TIMER_INTERVAL


def register() -> None:
    """Create the thumbnail collection and start following tasks."""
    global _previews
    _previews = bpy.utils.previews.new()
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=_TIMER_INTERVAL, persistent=True)


def unregister() -> None:
    """Stop following, free the thumbnails and their files."""
    global _previews, _thumbnail_dir
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
    if _thumbnail_dir is not None:
        shutil.rmtree(_thumbnail_dir, ignore_errors=True)
        _thumbnail_dir = None
