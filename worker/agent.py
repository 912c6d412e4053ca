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

import logging
import math
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Protocol, TypeVar

from renderq.http_client import CoordinatorClient, CoordinatorError
from renderq.model import FrameResult
from worker.blender_session import BlenderSession, SessionError
from worker.cache import DEFAULT_CACHE_SIZE, BlendCache, CacheError
from worker.lease import Lease
from worker.log_shipper import LogShipper
from worker.prefetch import PrefetchTimer
from worker.retry import GaveUp, retry
from worker.task_files import TaskFiles

__all__ = ["WorkerAgent", "Lease", "DEFAULT_POLL_SECONDS"]

log = logging.getLogger("renderq.worker")

T = TypeVar("T")

# The coordinator's log_tail is for a human reading why a frame failed; the last lines are the useful ones.
_MAX_LOG_TAIL_CHARS = 16 * 1024
# How long an idle worker waits between claims when neither its owner nor the coordinator says otherwise. The
# coordinator advises a wait that grows with the farm (its answers' poll_seconds): short on a small farm, so a new
# task starts at once, long on a large one, so idle claims do not flood it.
DEFAULT_POLL_SECONDS = 1.0
# Advice outside these bounds is taken for a mistake and clamped.
POLL_ADVICE_LIMITS = (0.05, 300.0)


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
    ) -> FrameResult: ...

    def abort(self, grace: float = 5.0) -> None: ...

    def close(self, grace: float = 5.0) -> None: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def python_found(self) -> list[str]: ...


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
        poll_seconds: float | None = None,
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
        self._task_files = TaskFiles(client, self.cache, max_backoff=max_backoff)
        # None: wait as long as the coordinator advises.
        self.poll_seconds = poll_seconds
        self._advised_poll_seconds = DEFAULT_POLL_SECONDS
        self.max_backoff = max_backoff
        self.abort_grace = abort_grace
        self.shutdown_seconds = shutdown_seconds
        self.allow_python = allow_python
        self._session_factory = session_factory
        self._shipper = LogShipper(self._send_log, f"[{name}] ", interval=log_interval, max_backoff=max_backoff)

        self.worker_id: int | None = None
        self.heartbeat_seconds = 2.0
        self.lease_seconds = 15.0

        # One lock for everything the heartbeat, the prefetch helper and the main loop share. self._task_files calls
        # _task_in_use (which takes this lock) while holding its own: never call it while holding this one.
        self._lock = threading.RLock()
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
        self._rendering = False
        self._helper: threading.Thread | None = None
        # The thread uploading and reporting the last rendered frame while the next one renders.
        self._delivery: threading.Thread | None = None
        self._prefetch_timer = PrefetchTimer()

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

    @property
    def _registered_id(self) -> int:
        """This worker's id, for the calls that only come after registering."""
        if self.worker_id is None:
            raise RuntimeError("the worker called the coordinator before it registered")
        return self.worker_id

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

        previous: dict[int, Any] = {}
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
            self._wait(self.idle_seconds)
            return
        self._work_on(lease)

    @property
    def idle_seconds(self) -> float:
        """How long to wait before asking for work again: the owner's --poll-seconds, else the coordinator's advice."""
        return self.poll_seconds if self.poll_seconds is not None else self._advised_poll_seconds

    def _take_poll_advice(self, answer: dict[str, Any]) -> None:
        advice = answer.get("poll_seconds")
        if isinstance(advice, (int, float)) and not isinstance(advice, bool) and math.isfinite(advice):
            low, high = POLL_ADVICE_LIMITS
            self._advised_poll_seconds = min(high, max(low, float(advice)))

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _wait_while_disabled(self) -> None:
        self._release_prefetched("the worker was switched OFF")
        self._close_session(remove_task_files=True)
        log.info("worker is OFF: claiming no frames until it is switched ON")
        while not self._stop.is_set() and not self.enabled:
            self._wait(self.idle_seconds)
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
                lambda: self.client.claim_frame(self._registered_id, prefer_task_id=self._session_task_id),
                give_up=self._stop.is_set,
            )
        except GaveUp:
            return None
        except CoordinatorError as exc:
            if exc.status == 404:
                log.warning("the coordinator no longer knows this worker (%s); registering again", exc)
                self._forget_all_leases()
                self._register()
            else:
                log.warning("could not claim a frame: %s", exc)
                self._wait(self.idle_seconds)
            return None
        claimed = answer.get("frame")
        if not claimed:
            self._take_poll_advice(answer)
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
            self._release(lease, self._why_not_working())
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
            except GaveUp:
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
                self._release(lease, self._why_not_working())
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
            if result.ok and not lease.revoked and not result.aborted:
                if result.render_seconds:
                    self._prefetch_timer.note(lease.task_id, float(result.render_seconds))
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

    def _deliver_in_background(self, lease: Lease, result: FrameResult) -> None:
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

    def _delivery_thread(self, lease: Lease, result: FrameResult) -> None:
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

        blend_path = self._task_files.prepare(lease, give_up=lambda: lease.revoked or self._stop.is_set())
        threads = self.threads or int(lease.settings.get("threads") or 0)
        session = self._session_factory(
            self.blender,
            blend_path,
            self.cache.output_dir(lease.task_id),
            threads=threads,
            on_log_line=lambda line, task_id=lease.task_id: self._shipper.add(task_id, line),
            allow_python=python,
            stop_grace=self.abort_grace,
            hidden_values=(self.client.token,) if getattr(self.client, "token", None) else (),
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
            raise GaveUp()
        return session

    def _end_task_if_done(self, task_id: int) -> None:
        """Delete the task's tree and forget its manifest once no session is open on it and no frame of it is held."""
        self._task_files.remove_unless(task_id, self._task_in_use)

    def _task_in_use(self, task_id: int) -> bool:
        with self._lock:
            return self._session_task_id == task_id or any(held.task_id == task_id for held in self._held.values())

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

    def _render(self, session: SessionLike, lease: Lease) -> FrameResult | None:
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
        except Exception as exc:  # noqa: BLE001 - a failed session fails this frame only; the agent goes on
            log.error("%s: Blender session failed: %s", lease, exc)
            result = FrameResult.failure(lease.frame, str(exc))
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
                    self._registered_id, lease.task_id, lease.frame, lease.lease_id, "rendering", started_at=wall_time
                ),
                give_up=lambda: lease.finished.is_set() or lease.revoked or self._stop.is_set(),
            )
        except GaveUp:
            pass
        except CoordinatorError as exc:
            if exc.status == 409:
                log.info("%s: lease lost (%s); stopping its render", lease, exc)
                self._revoke([lease.lease_id])
                return
            log.warning("%s: the coordinator refused the rendering report: %s", lease, exc)
        delay = self._prefetch_timer.delay(lease.task_id, wall_time)
        if delay > 0 and lease.finished.wait(delay):
            return  # the frame ended sooner than expected: the main loop claims the next one itself
        self._prefetch(lease)

    def _prefetch(self, current: Lease) -> None:
        """Claim the frame to render after `current`, preferring its task; one try, the main loop claims otherwise."""
        if self._stop.is_set() or not self.enabled or current.revoked:
            return
        with self._lock:
            if self._prefetched is not None:
                return
        try:
            answer = self.client.claim_frame(self._registered_id, prefer_task_id=current.task_id)
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
            self._release(lease, self._why_not_working())

    # -- reporting ----------------------------------------------------------------------------------------------

    def _settle(self, lease: Lease, result: FrameResult) -> None:
        """Report a rendered (or failed, or aborted) frame, then delete its output file."""
        output_path = result.output_path
        try:
            if lease.revoked:
                log.info("%s: lease revoked; result dropped", lease)
            elif result.aborted or (not result.ok and self._stop.is_set()):
                # Aborted by our own stop (or a stray abort): the frame was not rendered, so it is given back.
                self._release(lease, "the worker is stopping" if self._stop.is_set() else "the render was aborted")
            elif result.ok:
                self._deliver(lease, result)
            elif result.needs_python:
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

    def _deliver(self, lease: Lease, result: FrameResult) -> None:
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
                    self._registered_id, lease.task_id, lease.frame, lease.lease_id, path, filename
                ),
                give_up=give_up,
            )
        except CoordinatorError as exc:
            # A 409 is a lost lease or an output name another frame of the task has. Either way the frame is
            # reported failed: with the lease lost, that report is refused in turn and the frame dropped.
            log.error("%s: the coordinator refused the frame's file: %s", lease, exc)
            self._report_failed(lease, f"the coordinator refused the rendered file: {exc}", result.log_tail)
            return
        except GaveUp:
            self._gave_up(lease)
            return
        try:
            self._retry(
                f"report {lease} done",
                lambda: self.client.update_frame(
                    self._registered_id,
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
        except GaveUp:
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
                    self._registered_id, lease.task_id, lease.frame, lease.lease_id, "failed", error=error,
                    log_tail=tail,
                ),
                give_up=lambda: lease.revoked or self._stop.is_set(),
            )
        except CoordinatorError as exc:
            if exc.status == 409:
                log.info("%s: lease lost before the failure report (%s); dropped", lease, exc)
            else:
                log.error("%s: the coordinator refused the failure report: %s", lease, exc)
        except GaveUp:
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
                    self._registered_id, lease.task_id, lease.frame, lease.lease_id, "released", **fields
                ),
                give_up=lambda: lease.revoked or time.monotonic() >= deadline,
            )
            log.info("gave back %s: %s", lease, reason)
        except CoordinatorError as exc:
            log.info("%s: not given back (%s); the coordinator no longer holds it for us", lease, exc)
        except GaveUp:
            if not lease.revoked:
                log.warning("%s: could not give it back; its lease will expire on the coordinator", lease)
        finally:
            with self._lock:
                self._held.pop(lease.lease_id, None)
                if self._prefetched is lease:
                    self._prefetched = None

    def _why_not_working(self) -> str:
        """Why a frame is given back unrendered once the worker stops or is switched OFF."""
        return "the worker is stopping" if self._stop.is_set() else "the worker was switched OFF"

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
            self._wait(self.idle_seconds)

    def _release_prefetched(self, reason: str) -> None:
        with self._lock:
            lease, self._prefetched = self._prefetched, None
        if lease is not None:
            self._release(lease, reason)

    def _retry(self, what: str, call: Callable[[], T], *, give_up: Callable[[], bool]) -> T:
        """worker.retry.retry with this worker's backoff limit."""
        return retry(what, call, give_up=give_up, max_backoff=self.max_backoff)

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
        except GaveUp:
            return False
        with self._lock:
            self.worker_id = int(answer["worker_id"])
            self.heartbeat_seconds = float(answer.get("heartbeat_seconds") or self.heartbeat_seconds)
            self.lease_seconds = float(answer.get("lease_seconds") or self.lease_seconds)
            self._enabled = bool(answer.get("enabled", True))
            self._take_poll_advice(answer)
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
            answer = self.client.update_worker(self._registered_id, leases)
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
        self.client.append_log(task_id, self._registered_id, text)

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
        self.cache.close()  # a stopped worker lets go of its work folder
        log.info("worker %s stopped", self.name)


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


if __name__ == "__main__":
    import argparse
    import sys

    from worker.command_line import add_arguments, main

    _parser = argparse.ArgumentParser(prog="python -m worker.agent", description="Run a RenderQ worker.")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
