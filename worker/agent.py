"""The RenderQ worker: claims frames from the coordinator, renders them with Blender and reports back.

One Blender process per task stays open while this worker keeps getting frames of that task. Blender should never
wait on the network between two frames, so:

- the next frame is claimed in the background (preferring the same task) shortly before the current one is expected
  to end (from the exact time of the task's previous frame here; at once when there is none), so it is ready when
  the current one ends but not taken from another worker that could start it sooner;
- a rendered frame is uploaded and reported done by a background thread while Blender renders the next one. At most
  one frame is on its way at a time: the frame after that waits for it, so an unreachable coordinator cannot make
  this worker render ahead of what it can deliver. Its lease stays held (and renewed) until it is delivered.

Every network call that fails because the coordinator is away is retried with backoff; a frame whose lease was lost
(409, or `revoked` by the heartbeat) is dropped.

A task may limit how long a frame renders and how long Blender may stay silent; Blender is stopped past either
limit, the frame is reported failed with the reason, and the next frame gets a new Blender.

Python stored in a .blend runs only for a task marked as needing it, on a worker started with
--allow-blend-python. A file found to hold Python otherwise is not rendered: its frame is given back with
`needs_python`, which marks the task on the coordinator, and this worker renders no more of that task unless a
claim says the task needs Python and this worker allows it.

Run it as `renderq worker ...` or `python -m worker.agent ...`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from renderq.http_client import CoordinatorClient, CoordinatorError, CoordinatorUnreachable, safe_file_name
from worker.blender_session import BlenderSession, SessionError, blender_version, find_blender
from worker.cache import DEFAULT_CACHE_SIZE, BlendCache, CacheError, TaskTree, format_size, parse_size
from worker.log_shipper import LogShipper

__all__ = ["WorkerAgent", "Lease", "add_arguments", "main", "default_work_dir"]

log = logging.getLogger("renderq.worker")

T = TypeVar("T")

# The coordinator's log_tail is for a human reading why a frame failed; the last lines are the useful ones.
_MAX_LOG_TAIL_CHARS = 16 * 1024
# How long an idle worker waits between claims. It is also how long a new task waits for an idle farm: a second is
# small next to any render, and an idle claim is one cheap request.
DEFAULT_POLL_SECONDS = 1.0
# The next frame is claimed this long before the current one is expected to end (seconds, plus a fraction of the
# expected frame time): enough for a claim to come back, short enough that the last frames of a task go to
# whichever worker is free first.
_PREFETCH_LEAD_SECONDS = 0.5
_PREFETCH_LEAD_FRACTION = 0.1


class _GaveUp(Exception):
    """A retried call was abandoned: the lease was revoked, the worker is stopping, or its time ran out."""


class SessionLike(Protocol):
    """What the agent needs of a Blender session (BlenderSession, or a fake in tests)."""

    def start(self) -> None: ...

    def render(
        self,
        frame: int,
        on_started: Callable[[float], None] | None = None,
        *,
        frame_timeout: float | None = None,
        no_progress_timeout: float | None = None,
    ) -> Any: ...

    def abort(self, grace: float = 5.0) -> None: ...

    def close(self, grace: float = 5.0) -> None: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def python_found(self) -> list[str]: ...


@dataclass(eq=False)
class Lease:
    """One frame this worker holds, as handed out by the coordinator's claim."""

    task_id: int
    frame: int
    lease_id: str
    task_name: str
    blend_sha256: str
    blend_filename: str
    settings: dict[str, Any]
    attempt: int = 1
    # The main .blend's path inside the task's tree; None from coordinators that send one .blend per task.
    main_file: str | None = None
    # The task's limits in seconds (None: no limit), and whether it is marked as needing the file's Python.
    frame_timeout: float | None = None
    no_progress_timeout: float | None = None
    needs_python: bool = False
    revoked: bool = False
    started_at: float | None = None
    # Set when Blender is done with the frame, so background retries of the "rendering" report stop.
    finished: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_claim(cls, claimed: dict[str, Any]) -> "Lease":
        """Build a lease from the `frame` object of a claim answer."""
        return cls(
            task_id=int(claimed["task_id"]),
            frame=int(claimed["frame"]),
            lease_id=str(claimed["lease_id"]),
            task_name=str(claimed.get("task_name") or ""),
            blend_sha256=str(claimed["blend_sha256"]),
            blend_filename=str(claimed["blend_filename"]),
            settings=dict(claimed.get("settings") or {}),
            attempt=int(claimed.get("attempt") or 1),
            main_file=str(claimed["main_file"]) if claimed.get("main_file") else None,
            frame_timeout=_positive_seconds(claimed.get("frame_timeout")),
            no_progress_timeout=_positive_seconds(claimed.get("no_progress_timeout")),
            needs_python=claimed.get("needs_python") is True,
        )

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


def _retryable(exc: CoordinatorError) -> bool:
    """Network trouble or a fault of the coordinator itself: worth trying again later."""
    return isinstance(exc, CoordinatorUnreachable) or exc.status >= 500


class WorkerAgent:
    """The worker loop. `run()` blocks until `request_stop()` (or a signal) and returns the exit code.

    `client` is a CoordinatorClient (or a fake with the same methods); `session_factory` builds a Blender session
    with BlenderSession's signature, which lets tests run without Blender.
    """

    def __init__(
        self,
        client: CoordinatorClient,
        name: str,
        work_dir: str,
        *,
        blender: str = "blender",
        blender_version: str = "unknown",
        threads: int = 0,
        host: str | None = None,
        cpu_count: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        session_factory: Callable[..., SessionLike] = BlenderSession,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_backoff: float = 10.0,
        log_interval: float = 1.0,
        abort_grace: float = 5.0,
        shutdown_seconds: float = 10.0,
        allow_python: bool = False,
    ) -> None:
        self.client = client
        self.name = name
        self.blender = blender
        self.blender_version = blender_version
        self.threads = threads
        self.host = host or socket.gethostname()
        self.cpu_count = cpu_count or _usable_cpu_count()
        self.cache = BlendCache(work_dir, cache_size)
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.abort_grace = abort_grace
        self.shutdown_seconds = shutdown_seconds
        self.allow_python = allow_python
        self._session_factory = session_factory
        self._shipper = LogShipper(self._send_log, f"[{name}] ", interval=log_interval, max_backoff=max_backoff)

        self.worker_id: int | None = None
        self.heartbeat_seconds = 2.0
        self.lease_seconds = 15.0

        # One lock for everything the heartbeat, the prefetch helper and the main loop share.
        self._lock = threading.RLock()
        # Building a task's tree and removing it never overlap (the delivery thread removes finished tasks' trees).
        # Taken before self._lock, never while holding it.
        self._tree_lock = threading.Lock()
        self._held: dict[str, Lease] = {}
        self._current: Lease | None = None
        self._prefetched: Lease | None = None
        self._enabled = True
        self._session: SessionLike | None = None
        self._session_task_id: int | None = None
        self._session_busy = False
        self._session_python = False  # whether the open session lets the file's Python run
        # Tasks whose files hold Python: rendered here only from a claim that marks them so, if this worker allows it.
        self._python_tasks: set[int] = set()
        # task id -> (manifest files, main file): fetched once per task while this worker works on it.
        self._manifests: dict[int, tuple[list[dict[str, Any]], str]] = {}
        self._rendering = False
        self._helper: threading.Thread | None = None
        # The thread uploading and reporting the last rendered frame while the next one renders.
        self._delivery: threading.Thread | None = None
        # (task id, exact seconds of its last two frames rendered here): when to claim the next frame of that task.
        self._frame_times: tuple[int, list[float]] | None = None

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._heartbeat_failing = False
        self._last_wait_reason: str | None = None
        self._signals_received = 0

    # -- public control -----------------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stop.is_set()

    @property
    def enabled(self) -> bool:
        """Whether the coordinator last said this worker is ON."""
        with self._lock:
            return self._enabled

    def held_leases(self) -> list[str]:
        """The lease ids this worker holds right now (what the heartbeat renews)."""
        with self._lock:
            return list(self._held)

    def request_stop(self) -> None:
        """Stop gracefully: abort Blender, give back every unfinished frame, let `run()` return 0."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            session = self._session if self._session_busy else None
        self._wake.set()
        log.info("stopping: giving back unfinished frames")
        if session is not None:
            threading.Thread(target=self._abort_session, args=(session,), name="abort-blender", daemon=True).start()

    def force_exit(self, code: int = 1) -> None:
        """Kill Blender and leave the process at once, without reporting anything."""
        # No lock: this runs inside a signal handler, possibly interrupting a thread that holds it.
        session = self._session
        pid = session.pid if session is not None else None
        if pid:
            try:
                # Blender leads its own process group; killing the group also ends anything it started.
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        logging.shutdown()
        os._exit(code)

    def install_signal_handlers(self) -> dict[int, Any]:
        """First SIGINT/SIGTERM stops gracefully, a second one exits at once; returns the previous handlers.

        Call from the main thread.
        """

        def on_signal(signum: int, _frame: object) -> None:
            self._signals_received += 1
            if self._signals_received > 1 or self._stop.is_set():
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                self.force_exit(1)
            log.info("%s received (send it again to exit at once)", signal.Signals(signum).name)
            # Locks may be held by the very code this handler interrupted: hand the work to a thread.
            threading.Thread(target=self.request_stop, name="stop", daemon=True).start()

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    # -- main loop ----------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Register, then claim and render frames until stopped; returns the process exit code."""
        self.cache.clear_tasks()
        try:
            if not self._register():
                return 0 if self._stop.is_set() else 1
        except CoordinatorError as exc:
            hint = ("; give the worker token with --token-file FILE (a copy of the coordinator's worker_token) or "
                    "$RENDERQ_TOKEN" if exc.status in (401, 403) else "")
            log.error("the coordinator refused to register worker %r: %s%s", self.name, exc, hint)
            return 1
        self._shipper.start()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception:
                    # The loop must outlive any single bad frame or surprise answer.
                    log.exception("unexpected error in the worker loop; going on")
                    self._stop.wait(1.0)
        finally:
            self._shutdown()
        return 0

    def _step(self) -> None:
        """One turn of the loop: wait while OFF, else get a frame and work on it."""
        if not self.enabled:
            self._wait_while_disabled()
            return
        lease = self._next_lease()
        if lease is None:
            # Nothing to do: Blender should not hold the scene's memory while idle.
            self._close_session(remove_task_files=True)
            self._wait(self.poll_seconds)
            return
        self._work_on(lease)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _wait_while_disabled(self) -> None:
        self._release_prefetched("the worker was switched OFF")
        self._close_session(remove_task_files=True)
        log.info("worker is OFF: claiming no frames until it is switched ON")
        while not self._stop.is_set() and not self.enabled:
            self._wait(self.poll_seconds)
        if not self._stop.is_set():
            log.info("worker is ON again")

    def _next_lease(self) -> Lease | None:
        """The prefetched frame if there is one, else a fresh claim (preferring the open session's task)."""
        with self._lock:
            lease, self._prefetched = self._prefetched, None
        if lease is not None:
            return lease
        try:
            answer = self._retry(
                "claim a frame",
                lambda: self.client.claim_frame(self.worker_id, prefer_task_id=self._session_task_id),
                give_up=self._stop.is_set,
            )
        except _GaveUp:
            return None
        except CoordinatorError as exc:
            if exc.status == 404:
                log.warning("the coordinator no longer knows this worker (%s); registering again", exc)
                self._forget_all_leases()
                self._register()
            else:
                log.warning("could not claim a frame: %s", exc)
                self._wait(self.poll_seconds)
            return None
        claimed = answer.get("frame")
        if not claimed:
            reason = answer.get("wait_reason")
            if reason != self._last_wait_reason:
                log.info("no frame to render%s", f": {reason}" if reason else "")
                self._last_wait_reason = reason
            return None
        self._last_wait_reason = None
        lease = Lease.from_claim(claimed)
        with self._lock:
            self._held[lease.lease_id] = lease
        log.info("claimed %s (%s, attempt %d)", lease, lease.task_name or "unnamed", lease.attempt)
        if self._stop.is_set() or not self.enabled:
            self._release(lease, "the worker is stopping" if self._stop.is_set() else "the worker was switched OFF")
            return None
        return lease

    def _work_on(self, lease: Lease) -> None:
        """Render one held frame and report its outcome; the lease is let go of in every case (a rendered frame's
        once the background delivery is done with it)."""
        with self._lock:
            self._current = lease
        handed_over = False
        try:
            if lease.revoked:
                log.info("%s: lease revoked before rendering; dropped", lease)
                return
            if lease.task_id in self._python_tasks and not self._python_permitted(lease):
                # Known from an earlier frame: no need to start Blender to find the Python again.
                self._release_needs_python(lease, ["found in an earlier frame of this task"])
                return
            try:
                session = self._ensure_session(lease)
            except _GaveUp:
                self._release(lease, "the worker is stopping")
                return
            except (SessionError, CacheError, CoordinatorError, OSError) as exc:
                # Session errors put Blender's last lines after the first line: they belong in the log tail.
                error, _, tail = str(exc).partition("\n")
                log.error("%s: cannot render: %s", lease, error)
                self._shipper.add(lease.task_id, f"frame {lease.frame} cannot be rendered here: {error}")
                self._report_failed(lease, error, tail)
                return
            if lease.revoked:
                log.info("%s: lease revoked before rendering; dropped", lease)
                return
            if self._stop.is_set() or not self.enabled:
                self._release(lease, "the worker is stopping" if self._stop.is_set() else "the worker was switched OFF")
                return
            found = list(getattr(session, "python_found", None) or [])
            if found and not self._python_permitted(lease):
                # Checked before anything renders: rendered without its Python, the file would come out wrong.
                self._close_session(remove_task_files=False)
                self._release_needs_python(lease, found)
                return
            result = self._render(session, lease)
            if result is None:
                if not lease.revoked:
                    self._release(lease, "the worker is stopping")
                return
            if result.ok and not lease.revoked and not getattr(result, "aborted", False):
                if result.render_seconds:
                    self._note_frame_time(lease.task_id, float(result.render_seconds))
                self._deliver_in_background(lease, result)
                handed_over = True
                return
            self._settle(lease, result)
        finally:
            with self._lock:
                self._current = None
            if not handed_over:
                self._let_go(lease)

    def _let_go(self, lease: Lease) -> None:
        """Forget a lease this worker is done with, and its task's files if nothing else needs them."""
        with self._lock:
            self._held.pop(lease.lease_id, None)
        # A task whose Blender never started (its files could not be fetched) has no session to clean up after.
        try:
            self._end_task_if_done(lease.task_id)
        except OSError as exc:
            log.warning("could not clean the folder of task %s: %s", lease.task_id, exc)
        self._shipper.flush()

    def _deliver_in_background(self, lease: Lease, result: Any) -> None:
        """Upload and report a rendered frame in a thread, so Blender can go on with the next one.

        Waits first for the frame before it: one frame on its way at a time.
        """
        self._wait_for_delivery()
        thread = threading.Thread(
            target=self._delivery_thread, args=(lease, result), name=f"deliver-{lease.frame}", daemon=True
        )
        with self._lock:
            self._delivery = thread
        thread.start()

    def _delivery_thread(self, lease: Lease, result: Any) -> None:
        try:
            self._settle(lease, result)
        except Exception:
            log.exception("%s: delivering the frame failed; its lease will run out on the coordinator", lease)
        finally:
            self._let_go(lease)

    def _wait_for_delivery(self, timeout: float | None = None) -> None:
        """Wait until the frame being delivered in the background (if any) is delivered or given up."""
        with self._lock:
            thread = self._delivery
        if thread is not None:
            thread.join(timeout)

    # -- Blender sessions ---------------------------------------------------------------------------------------

    def _ensure_session(self, lease: Lease) -> SessionLike:
        """A started session for the lease's task: the open one if it fits and lives, else a new one."""
        python = self._python_permitted(lease)
        with self._lock:
            session, session_task, session_python = self._session, self._session_task_id, self._session_python
        if session is not None and (
            session_task != lease.task_id or not session.alive or session_python != python
        ):
            if session_task == lease.task_id and not session.alive:
                log.warning("Blender of task %s is gone; starting a new one", lease.task_id)
            self._close_session(remove_task_files=session_task != lease.task_id)
            session = None
        if session is not None:
            return session

        with self._tree_lock:
            blend_path = self._prepare_tree(lease)
        threads = self.threads or int(lease.settings.get("threads") or 0)
        session = self._session_factory(
            self.blender,
            blend_path,
            self.cache.output_dir(lease.task_id),
            threads=threads,
            on_log_line=lambda line, task_id=lease.task_id: self._shipper.add(task_id, line),
            allow_python=python,
            stop_grace=self.abort_grace,
        )
        with self._lock:
            self._session, self._session_task_id, self._session_python = session, lease.task_id, python
            self._session_busy = True
        log.info(
            "starting Blender for task %s (%s)%s",
            lease.task_id, lease.main_file or lease.blend_filename,
            " with the file's Python allowed" if python else "",
        )
        try:
            session.start()
        except BaseException:
            with self._lock:
                self._session_busy = False
            self._close_session(remove_task_files=False)
            raise
        with self._lock:
            self._session_busy = False
        if self._stop.is_set():
            raise _GaveUp()
        return session

    def _prepare_tree(self, lease: Lease) -> str:
        """Download the files of the task's tree that the cache lacks, build the tree, return its main .blend."""
        files, main_file = self._task_manifest(lease)

        def download(sha256: str, dest_path: str) -> None:
            self._retry(
                f"download file {sha256[:12]} of task {lease.task_id}",
                lambda: self.client.download_file(sha256, dest_path),
                give_up=lambda: lease.revoked or self._stop.is_set(),
            )

        tree = self.cache.materialize_tree(lease.task_id, files, main_file, download)
        log.info("task %s: %s", lease.task_id, _describe_tree(tree))
        return tree.main_path

    def _task_manifest(self, lease: Lease) -> tuple[list[dict[str, Any]], str]:
        """The task's files and main file: asked of the coordinator once per task, then kept in memory."""
        if lease.main_file is None:
            # A coordinator from before task trees: the task is its one .blend.
            return [{"path": lease.blend_filename, "sha256": lease.blend_sha256}], lease.blend_filename
        with self._lock:
            known = self._manifests.get(lease.task_id)
        if known is not None:
            return known
        answer = self._retry(
            f"fetch the manifest of task {lease.task_id}",
            lambda: self._fetch_manifest(lease.task_id),
            give_up=lambda: lease.revoked or self._stop.is_set(),
        )
        files = answer.get("files") if isinstance(answer, dict) else None
        if not isinstance(files, list):
            raise CacheError(f"the coordinator sent no file list in the manifest of task {lease.task_id}")
        known = (files, lease.main_file)
        with self._lock:
            self._manifests[lease.task_id] = known
        return known

    def _fetch_manifest(self, task_id: int) -> Any:
        # Clients from before task trees lack task_manifest(); the generic request speaks the same API.
        method = getattr(self.client, "task_manifest", None)
        if callable(method):
            return method(task_id)
        return self.client.request("GET", "/task_manifest", params={"task_id": task_id})

    def _end_task_if_done(self, task_id: int) -> None:
        """Delete the task's tree and forget its manifest once no session is open on it and no frame of it is held."""
        with self._tree_lock:
            with self._lock:
                if self._session_task_id == task_id or any(held.task_id == task_id for held in self._held.values()):
                    return
                self._manifests.pop(task_id, None)
            self.cache.remove_task(task_id)

    def _close_session(self, *, remove_task_files: bool) -> None:
        """Close the open Blender session, if any; optionally delete its task's tree and output folder.

        The tree stays while a frame of the task is still held; it goes once that frame is let go of.
        """
        with self._lock:
            session, task_id = self._session, self._session_task_id
            self._session, self._session_task_id = None, None
        if session is None:
            return
        try:
            session.close(self.abort_grace)
        except Exception:
            log.exception("closing Blender of task %s failed", task_id)
        log.info("closed Blender of task %s", task_id)
        if remove_task_files and task_id is not None:
            self._end_task_if_done(task_id)

    def _abort_session(self, session: SessionLike) -> None:
        try:
            session.abort(self.abort_grace)
        except Exception:
            log.exception("aborting Blender failed")

    def _render(self, session: SessionLike, lease: Lease) -> Any | None:
        """Render the frame; returns the FrameResult, or None when it was not begun (lease revoked, stopping)."""

        def on_started(wall_time: float) -> None:
            # Called from the session while Blender renders: only hand the network work to a thread.
            if lease.started_at is not None:
                return
            lease.started_at = wall_time
            helper = threading.Thread(
                target=self._after_start, args=(lease, wall_time), name=f"started-{lease.frame}", daemon=True
            )
            with self._lock:
                self._helper = helper
            helper.start()

        with self._lock:
            # Checked under the lock that _revoke and request_stop take, so either they see the render running
            # (and abort it) or it sees them.
            if lease.revoked:
                log.info("%s: lease revoked before rendering; dropped", lease)
                return None
            if self._stop.is_set():
                return None
            self._rendering = True
            self._session_busy = True
        log.info("rendering %s", lease)
        try:
            result = session.render(
                lease.frame,
                on_started=on_started,
                frame_timeout=lease.frame_timeout,
                no_progress_timeout=lease.no_progress_timeout,
            )
        except Exception as exc:
            log.error("%s: Blender session failed: %s", lease, exc)
            result = _SessionFailure(frame=lease.frame, error=str(exc))
        finally:
            with self._lock:
                self._rendering = False
                self._session_busy = False
                helper, self._helper = self._helper, None
            lease.finished.set()
        if helper is not None:
            # The "rendering" report must reach the coordinator before "done", and the prefetch should land.
            helper.join(timeout=getattr(self.client, "timeout", 30.0) + 5.0)
        return result

    def _after_start(self, lease: Lease, wall_time: float) -> None:
        """Background work once Blender began the frame: report "rendering", then claim the next frame shortly
        before this one is expected to end."""
        try:
            self._retry(
                f"report {lease} rendering",
                lambda: self.client.update_frame(
                    self.worker_id, lease.task_id, lease.frame, lease.lease_id, "rendering", started_at=wall_time
                ),
                give_up=lambda: lease.finished.is_set() or lease.revoked or self._stop.is_set(),
            )
        except _GaveUp:
            pass
        except CoordinatorError as exc:
            if exc.status == 409:
                log.info("%s: lease lost (%s); stopping its render", lease, exc)
                self._revoke([lease.lease_id])
                return
            log.warning("%s: the coordinator refused the rendering report: %s", lease, exc)
        delay = self._prefetch_delay(lease, wall_time)
        if delay > 0 and lease.finished.wait(delay):
            return  # the frame ended sooner than expected: the main loop claims the next one itself
        self._prefetch(lease)

    def _note_frame_time(self, task_id: int, seconds: float) -> None:
        with self._lock:
            earlier = self._frame_times[1][-1:] if self._frame_times and self._frame_times[0] == task_id else []
            self._frame_times = (task_id, [*earlier, seconds])

    def _prefetch_delay(self, lease: Lease, wall_time: float) -> float:
        """Seconds from now until the next frame should be claimed: a lead before the frame is expected to end, or
        0 when there is nothing to expect it from.

        The frame is expected to take as long as the shorter of the task's last two frames here: a session's first
        frame takes longer (Blender sets up the renderer), and claiming a little early costs nothing.
        """
        with self._lock:
            times = self._frame_times
        if times is None or times[0] != lease.task_id:
            return 0.0
        expected = min(times[1])
        lead = _PREFETCH_LEAD_SECONDS + _PREFETCH_LEAD_FRACTION * expected
        # wall_time is Blender's clock at render_pre: the same machine's clock as ours.
        return max(0.0, wall_time + expected - lead - time.time())

    def _prefetch(self, current: Lease) -> None:
        """Claim the frame to render after `current`, preferring its task; one try, the main loop claims otherwise."""
        if self._stop.is_set() or not self.enabled or current.revoked:
            return
        with self._lock:
            if self._prefetched is not None:
                return
        try:
            answer = self.client.claim_frame(self.worker_id, prefer_task_id=current.task_id)
        except CoordinatorError as exc:
            log.debug("prefetch claim failed: %s", exc)
            return
        claimed = answer.get("frame")
        if not claimed:
            return
        lease = Lease.from_claim(claimed)
        with self._lock:
            self._held[lease.lease_id] = lease
            keep = not self._stop.is_set() and self._enabled
            if keep:
                self._prefetched = lease
        if keep:
            log.info("prefetched %s (%s, attempt %d)", lease, lease.task_name or "unnamed", lease.attempt)
        else:
            self._release(lease, "the worker is stopping" if self._stop.is_set() else "the worker was switched OFF")

    # -- reporting ----------------------------------------------------------------------------------------------

    def _settle(self, lease: Lease, result: Any) -> None:
        """Report a rendered (or failed, or aborted) frame, then delete its output file."""
        output_path = getattr(result, "output_path", None)
        try:
            if lease.revoked:
                log.info("%s: lease revoked; result dropped", lease)
            elif getattr(result, "aborted", False) or (not result.ok and self._stop.is_set()):
                # Aborted by our own stop (or a stray abort): the frame was not rendered, so it is given back.
                self._release(lease, "the worker is stopping" if self._stop.is_set() else "the render was aborted")
            elif result.ok:
                self._deliver(lease, result)
            elif getattr(result, "needs_python", False):
                self._close_session(remove_task_files=False)
                self._release_needs_python(lease, [])
            else:
                error = result.error or "the render failed"
                log.warning("%s failed: %s", lease, error)
                self._shipper.add(lease.task_id, f"frame {lease.frame} failed: {error}")
                self._report_failed(lease, error, result.log_tail or "")
        finally:
            if output_path:
                _remove_quietly(output_path)

    def _deliver(self, lease: Lease, result: Any) -> None:
        """Upload the frame's file, then report it done; retried until the coordinator takes it or the lease is lost."""
        path = result.output_path
        if not path or not os.path.isfile(path):
            self._report_failed(lease, "Blender reported the frame written but its file is missing", result.log_tail)
            return
        try:
            # Only a plain file in the task's output folder is sent: never what a link there points to.
            self.cache.check_output_file(lease.task_id, path)
        except CacheError as exc:
            log.error("%s: %s", lease, exc)
            self._report_failed(lease, str(exc), result.log_tail)
            return
        filename = os.path.basename(path)

        def give_up() -> bool:
            return lease.revoked or self._stop.is_set()

        try:
            self._retry(
                f"upload {lease}",
                lambda: self.client.upload_frame(
                    self.worker_id, lease.task_id, lease.frame, lease.lease_id, path, filename
                ),
                give_up=give_up,
            )
        except CoordinatorError as exc:
            if exc.status == 409:
                log.info("%s: lease lost before the upload (%s); dropped", lease, exc)
                return
            log.error("%s: the coordinator refused the frame's file: %s", lease, exc)
            self._report_failed(lease, f"the coordinator refused the rendered file: {exc}", result.log_tail)
            return
        except _GaveUp:
            self._gave_up(lease)
            return
        try:
            self._retry(
                f"report {lease} done",
                lambda: self.client.update_frame(
                    self.worker_id,
                    lease.task_id,
                    lease.frame,
                    lease.lease_id,
                    "done",
                    started_at=result.started_at,
                    ended_at=result.ended_at,
                    render_seconds=result.render_seconds,
                ),
                give_up=give_up,
            )
        except CoordinatorError as exc:
            if exc.status == 409:
                log.info("%s: lease lost before the done report (%s); dropped", lease, exc)
            else:
                log.error("%s: the coordinator refused the done report: %s", lease, exc)
            return
        except _GaveUp:
            self._gave_up(lease)
            return
        seconds = result.render_seconds
        log.info("%s done%s", lease, f" in {seconds:.2f} s" if seconds is not None else "")
        self._shipper.add(lease.task_id, f"frame {lease.frame} done" + (f" in {seconds:.2f} s" if seconds else ""))

    def _report_failed(self, lease: Lease, error: str, log_tail: str | None) -> None:
        tail = (log_tail or "")[-_MAX_LOG_TAIL_CHARS:]
        try:
            self._retry(
                f"report {lease} failed",
                lambda: self.client.update_frame(
                    self.worker_id, lease.task_id, lease.frame, lease.lease_id, "failed", error=error, log_tail=tail
                ),
                give_up=lambda: lease.revoked or self._stop.is_set(),
            )
        except CoordinatorError as exc:
            if exc.status == 409:
                log.info("%s: lease lost before the failure report (%s); dropped", lease, exc)
            else:
                log.error("%s: the coordinator refused the failure report: %s", lease, exc)
        except _GaveUp:
            self._gave_up(lease)

    def _gave_up(self, lease: Lease) -> None:
        if lease.revoked:
            log.info("%s: lease revoked while reporting; dropped", lease)
        else:
            self._release(lease, "the worker is stopping")

    def _release(self, lease: Lease, reason: str, deadline: float | None = None, **fields: Any) -> None:
        """Give a held frame back unrendered; tries until `deadline` (default: `shutdown_seconds` from now).

        `fields` go with the report, e.g. needs_python=True.
        """
        if deadline is None:
            deadline = time.monotonic() + self.shutdown_seconds
        try:
            if lease.revoked:
                return
            self._retry(
                f"give back {lease}",
                lambda: self.client.update_frame(
                    self.worker_id, lease.task_id, lease.frame, lease.lease_id, "released", **fields
                ),
                give_up=lambda: lease.revoked or time.monotonic() >= deadline,
            )
            log.info("gave back %s: %s", lease, reason)
        except CoordinatorError as exc:
            log.info("%s: not given back (%s); the coordinator no longer holds it for us", lease, exc)
        except _GaveUp:
            if not lease.revoked:
                log.warning("%s: could not give it back; its lease will expire on the coordinator", lease)
        finally:
            with self._lock:
                self._held.pop(lease.lease_id, None)
                if self._prefetched is lease:
                    self._prefetched = None

    def _python_permitted(self, lease: Lease) -> bool:
        """Whether the file's own Python may run for this frame: the task needs it and this worker allows it."""
        return lease.needs_python and self.allow_python

    def _release_needs_python(self, lease: Lease, found: list[str]) -> None:
        """Give the frame back unrendered as needing Python, and render no more of its task until allowed to."""
        with self._lock:
            first = lease.task_id not in self._python_tasks
            self._python_tasks.add(lease.task_id)
        reason = "the file holds Python" + (f" ({'; '.join(found)})" if found else "")
        if not self.allow_python:
            outcome = "it needs a worker started with --allow-blend-python"
        elif not lease.needs_python:
            outcome = "given back so the task is marked as needing Python, which this worker allows"
        else:
            outcome = "given back"
        if first:
            log.warning("%s not rendered: %s; %s", lease, reason, outcome)
            self._shipper.add(lease.task_id, f"frame {lease.frame} not rendered on this worker: {reason}; {outcome}")
        self._release(lease, reason, needs_python=True, error=f"{reason}; {outcome}")
        if not first or not self.allow_python:
            # A coordinator that hands the frame straight back to a worker that cannot take it must not make this
            # loop spin.
            self._wait(self.poll_seconds)

    def _release_prefetched(self, reason: str) -> None:
        with self._lock:
            lease, self._prefetched = self._prefetched, None
        if lease is not None:
            self._release(lease, reason)

    def _retry(self, what: str, call: Callable[[], T], *, give_up: Callable[[], bool]) -> T:
        """Call until it succeeds, backing off while the coordinator is unreachable or failing (5xx).

        Refusals (4xx) are raised; `give_up()` is asked after every failure and raises _GaveUp when true.
        """
        delay = min(0.5, self.max_backoff)
        failures = 0
        while True:
            try:
                result = call()
            except CoordinatorError as exc:
                if not _retryable(exc):
                    raise
                failures += 1
                if failures == 1:
                    log.warning("cannot %s: %s; retrying", what, exc)
                else:
                    log.debug("cannot %s (try %d): %s", what, failures, exc)
            else:
                if failures:
                    log.info("managed to %s after %d failed tries", what, failures)
                return result
            if give_up():
                raise _GaveUp()
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if give_up():
                    raise _GaveUp()
                time.sleep(min(0.1, max(0.0, end - time.monotonic())))
            delay = min(delay * 2, self.max_backoff)

    # -- registration and heartbeat -----------------------------------------------------------------------------

    def _register(self) -> bool:
        """Register with the coordinator, retrying while it is unreachable; False when stopped first."""
        try:
            answer = self._retry(
                "register with the coordinator",
                lambda: self.client.register_worker(
                    self.name, self.host, self.blender_version, self.cpu_count, allows_python=self.allow_python
                ),
                give_up=self._stop.is_set,
            )
        except _GaveUp:
            return False
        with self._lock:
            self.worker_id = int(answer["worker_id"])
            self.heartbeat_seconds = float(answer.get("heartbeat_seconds") or self.heartbeat_seconds)
            self.lease_seconds = float(answer.get("lease_seconds") or self.lease_seconds)
            self._enabled = bool(answer.get("enabled", True))
        log.info(
            "registered as worker %s (%s, Blender %s, %d CPUs%s)%s",
            self.worker_id,
            self.name,
            self.blender_version,
            self.cpu_count,
            ", Python in .blend files allowed" if self.allow_python else "",
            "" if self._enabled else "; it is switched OFF",
        )
        return True

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self.heartbeat_seconds):
            try:
                self._heartbeat_once()
            except Exception:
                log.exception("heartbeat failed")

    def _heartbeat_once(self) -> None:
        """Renew the held leases; act on revoked leases and on the ON/OFF switch."""
        leases = self.held_leases()
        try:
            answer = self.client.update_worker(self.worker_id, leases)
        except CoordinatorError as exc:
            if not self._heartbeat_failing:
                log.warning("heartbeat failed: %s", exc)
            self._heartbeat_failing = True
            return
        if self._heartbeat_failing:
            log.info("heartbeat reaches the coordinator again")
            self._heartbeat_failing = False
        self._revoke(answer.get("revoked") or [])
        self._set_enabled(bool(answer.get("enabled", True)))

    def _revoke(self, lease_ids: list[str]) -> None:
        """Drop leases the coordinator took back; abort Blender if it is rendering one of them."""
        abort_session = None
        with self._lock:
            for lease_id in lease_ids:
                lease = self._held.pop(lease_id, None)
                if lease is None:
                    continue
                lease.revoked = True
                log.warning("lease of %s revoked by the coordinator", lease)
                if lease is self._prefetched:
                    self._prefetched = None
                if lease is self._current and self._rendering:
                    abort_session = self._session
        if abort_session is not None:
            log.info("aborting the render")
            threading.Thread(
                target=self._abort_session, args=(abort_session,), name="abort-blender", daemon=True
            ).start()

    def _set_enabled(self, enabled: bool) -> None:
        with self._lock:
            changed = enabled != self._enabled
            self._enabled = enabled
        if not changed:
            return
        log.info("the coordinator switched this worker %s", "ON" if enabled else "OFF")
        self._wake.set()
        if not enabled:
            # The frame being rendered is finished; the one waiting behind it goes back to the queue now.
            self._release_prefetched("the worker was switched OFF")

    def _forget_all_leases(self) -> None:
        with self._lock:
            for lease in self._held.values():
                lease.revoked = True
            self._held.clear()
            self._prefetched = None

    def _send_log(self, task_id: int, text: str) -> None:
        self.client.append_log(task_id, self.worker_id, text)

    # -- shutdown -----------------------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Let the frame being delivered finish, give back every other held frame, close Blender, flush the logs,
        stop the heartbeat."""
        self._stop.set()
        deadline = time.monotonic() + self.shutdown_seconds
        with self._lock:
            helper = self._helper
        if helper is not None:
            helper.join(timeout=max(0.0, deadline - time.monotonic()))
        # A rendered frame on its way is delivered if the coordinator takes it now, else given back by its thread.
        self._wait_for_delivery(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            leases = list(self._held.values())
            self._prefetched = None
        for lease in leases:
            self._release(lease, "the worker is stopping", deadline=deadline)
        self._close_session(remove_task_files=True)
        try:
            self.cache.clear_tasks()
        except OSError as exc:
            log.warning("could not clean the task folders: %s", exc)
        self._shipper.close(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5.0)
        log.info("worker %s stopped", self.name)


@dataclass
class _SessionFailure:
    """Stands in for a FrameResult when the session itself raised while rendering."""

    frame: int
    error: str
    ok: bool = False
    aborted: bool = False
    timed_out: bool = False
    needs_python: bool = False
    output_path: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    render_seconds: float | None = None
    log_tail: str = ""


def _describe_tree(tree: TaskTree) -> str:
    """One line on what building a task's tree cost: files and bytes downloaded vs. found in the cache."""
    return (
        f"{tree.files} file{'' if tree.files == 1 else 's'} ({format_size(tree.total_bytes)}): "
        f"downloaded {tree.downloaded_files} "
        f"({format_size(tree.downloaded_bytes)}), found {tree.cached_files} in the cache "
        f"({format_size(tree.cached_bytes)})"
    )


def _usable_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def default_work_dir(name: str) -> str:
    """The default work folder of worker `name`: renderq/worker-<name> under the user's cache folder."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "renderq", f"worker-{name}")


# -- command line -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `renderq worker` options; defaults come from RENDERQ_* environment variables."""
    env = os.environ
    parser.add_argument(
        "--coordinator",
        default=env.get("RENDERQ_COORDINATOR"),
        metavar="URL",
        help="the coordinator's address, e.g. http://farm:5000 (default: $RENDERQ_COORDINATOR)",
    )
    parser.add_argument(
        "--token",
        default=env.get("RENDERQ_TOKEN"),
        metavar="TOKEN",
        help="the coordinator's worker token (default: $RENDERQ_TOKEN); it is in the coordinator's data dir, file "
        "worker_token. Prefer --token-file: a token on the command line is visible to other users of this machine",
    )
    parser.add_argument(
        "--token-file",
        default=env.get("RENDERQ_TOKEN_FILE"),
        metavar="FILE",
        help="read the worker token from FILE, e.g. a copy of the coordinator's worker_token "
        "(default: $RENDERQ_TOKEN_FILE)",
    )
    parser.add_argument(
        "--name",
        default=env.get("RENDERQ_WORKER_NAME") or socket.gethostname(),
        help="this worker's name, unique on the farm (default: $RENDERQ_WORKER_NAME, else the host name)",
    )
    parser.add_argument(
        "--blender",
        default=env.get("RENDERQ_BLENDER"),
        metavar="PATH",
        help="the Blender executable (default: $RENDERQ_BLENDER, else found on PATH)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=env.get("RENDERQ_THREADS") or "0",
        metavar="N",
        help="render threads per frame; 0 lets the task or Blender decide (default: $RENDERQ_THREADS, else 0)",
    )
    parser.add_argument(
        "--work-dir",
        default=env.get("RENDERQ_WORK_DIR"),
        metavar="DIR",
        help="where to cache the tasks' files and render (default: $RENDERQ_WORK_DIR, else a folder per worker "
        "name in the user's cache folder)",
    )
    parser.add_argument(
        "--cache-size",
        type=_cache_size,
        default=env.get("RENDERQ_CACHE_SIZE") or "20G",
        metavar="SIZE",
        help="the most the cached files may take, e.g. 20G or 500M (K, M, G, T count in 1024s); the least recently "
        "used files are deleted beyond it, never those of a task being rendered (default: $RENDERQ_CACHE_SIZE, "
        "else 20G)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=env.get("RENDERQ_POLL_SECONDS") or str(DEFAULT_POLL_SECONDS),
        metavar="SECONDS",
        help="how often an idle worker asks for work, which is also how long a new task may wait for it; shorter "
        "means more requests to the coordinator (default: $RENDERQ_POLL_SECONDS, else "
        f"{DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument(
        "--allow-blend-python",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env.get("RENDERQ_ALLOW_BLEND_PYTHON")),
        help="RISKY: let Python stored in .blend files (scripts that run when the file opens, scripted drivers, "
        "the handlers they add) run on this machine, for tasks marked as needing it. That code runs as this "
        "worker's user and can read, change, delete or send anything that user can reach; anyone who may submit "
        "tasks to the farm can put it there. Only use it when you trust every submitter. Without it, tasks whose "
        "files hold Python wait for a worker that allows it (default: on when $RENDERQ_ALLOW_BLEND_PYTHON=1, else "
        "off)",
    )


def _env_flag(value: str | None) -> bool:
    """An on/off environment variable: 1, true, yes or on (any case) mean on."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _cache_size(text: str) -> int:
    """Parse --cache-size for argparse."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError("the cache size must be more than 0")
    return size


def main(args: argparse.Namespace) -> int:
    """Run a worker until it is stopped; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if not args.coordinator:
        log.error("no coordinator given: use --coordinator URL or set RENDERQ_COORDINATOR")
        return 2
    name = (args.name or "").strip()
    if not (1 <= len(name) <= 64) or not safe_file_name(name):
        log.error("%r is not a usable worker name (1-64 characters, no '/', '\\', '..' or NUL)", args.name)
        return 2
    if args.threads < 0:
        log.error("--threads must be 0 or more, not %d", args.threads)
        return 2
    if not (math.isfinite(args.poll_seconds) and 0.05 <= args.poll_seconds <= 3600):
        log.error("--poll-seconds must be between 0.05 and 3600, not %g", args.poll_seconds)
        return 2
    token = args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            log.error("cannot read the worker token from %s: %s", args.token_file, exc.strerror or exc)
            return 2
    try:
        client = CoordinatorClient(args.coordinator, token=token or None)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        blender = find_blender(args.blender)
        version = blender_version(blender)
    except SessionError as exc:
        log.error("cannot use Blender: %s", exc)
        return 2
    work_dir = args.work_dir or default_work_dir(name)
    try:
        agent = WorkerAgent(
            client,
            name,
            work_dir,
            blender=blender,
            blender_version=version,
            threads=args.threads,
            cache_size=args.cache_size,
            poll_seconds=args.poll_seconds,
            allow_python=args.allow_blend_python,
        )
    except (OSError, CacheError) as exc:
        log.error("cannot use the work folder %s: %s", work_dir, exc)
        return 2
    if args.allow_blend_python:
        log.warning(
            "Python stored in .blend files will run on this machine for tasks that need it "
            "(--allow-blend-python): only do this when you trust everyone who submits tasks"
        )
    log.info(
        "worker %s: Blender %s at %s, work folder %s, cache limit %s",
        name, version, blender, work_dir, format_size(args.cache_size),
    )
    agent.install_signal_handlers()
    return agent.run()


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m worker.agent", description="Run a RenderQ worker.")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
