"""The worker's loop: a small state machine with one function per state.

    idle ──> preparing ──> rendering ──> delivering ──> idle
      │  ^      │              │
      v  │      └── (revoked, stopping, failed to start) ──> idle
     off─┘                       stop, from any state ──> stopped

- idle: take the frame claimed ahead, else claim one (preferring the open Blender's task); none: close Blender, wait.
- off: the coordinator switched this worker OFF: give back the frame claimed ahead, close Blender, wait for ON.
- preparing: fetch the task's files, open (or reuse) Blender, refuse a file whose Python may not run here.
- rendering: Blender renders on its own thread while the loop watches: it reports the frame's start, claims the next
  frame shortly before this one should end, and stops Blender when the lease is lost or the worker stops.
- encoding: the task's encode job (a claim of kind "encode"): FFmpeg makes the task's video (worker/encode.py),
  which is then delivered as a frame's file.
- delivering: hand the result to the reporter, which sends it in order while the next frame renders; at most
  `max_undelivered_frames` rendered frames wait for the network before Blender may render another.

The loop alone touches the Blender session, the frame claimed ahead and the task files. Blender never calls back into
it: the loop polls `started_at` and waits on the render's Future.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from renderq.http_client import CoordinatorError
from renderq.model import FRAME_KIND_ENCODE, FRAME_KIND_MERGE
from worker.blender_session import BlenderSession, FrameResult, SessionError
from renderq.local_files import remove_quietly
from worker.cache import BlendCache, CacheError
from worker.encode import EncodeJob, encode_video
from worker.tiles import blender_frame, merge_tiles, tile_request
from worker.lease import Lease
from worker.outbox import FrameDone, FrameFailed, FrameGivenBack
from worker.prefetch import PrefetchTimer
from worker.set_aside import OutputSetAside, SetAsideError
from worker.reporter import Reporter
from worker.retry import GaveUp
from worker.settings import WorkerSettings
from worker.shared import Control, Lane
from worker.task_files import TaskFiles

__all__ = ["SessionLike", "State", "WorkerLoop"]

log = logging.getLogger("renderq.worker")

# How often the loop looks whether Blender began the frame, while it has not (the rendering report waits on it).
_START_POLL_SECONDS = 0.05
# The longest the loop sleeps while it watches Blender work: it looks at the lease and the switches at least this often.
_WATCH_SECONDS = 0.5


class SessionLike(Protocol):
    """What the loop needs of a Blender session (BlenderSession, or a fake in tests)."""

    def start(self) -> None: ...

    def render(
        self, frame: int, *, frame_timeout: float | None = None, no_progress_timeout: float | None = None,
        tile: dict[str, int] | None = None,
    ) -> FrameResult: ...

    def started_at(self, frame: int) -> float | None: ...

    def abort(self, grace: float = 5.0) -> None: ...

    def close(self, grace: float = 5.0) -> None: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def python_found(self) -> list[str]: ...


class State(enum.Enum):
    """Where the loop is."""

    IDLE = "idle"
    OFF = "off"
    PREPARING = "preparing"
    RENDERING = "rendering"
    ENCODING = "encoding"
    DELIVERING = "delivering"
    STOPPED = "stopped"


@dataclass
class Turn:
    """The frame the loop works on, and what it learnt of it so far."""

    lease: Lease
    session: SessionLike | None = None
    result: FrameResult | None = None
    # The "rendering" report, which the reporter sends before the frame's result.
    rendering_report: Future | None = None


Step = tuple[State, "Turn | None"]


class WorkerLoop:
    """Claims frames and renders them until stopped; `run()` returns once the worker stops."""

    def __init__(
        self,
        settings: WorkerSettings,
        reporter: Reporter,
        control: Control,
        cache: BlendCache,
        session_factory: Callable[..., SessionLike] = BlenderSession,
    ) -> None:
        self.settings = settings
        self.reporter = reporter
        self.control = control
        self.cache = cache
        # Blender's start and renders run here, so the loop can watch them.
        self.blender_lane = Lane("blender")
        self.state = State.IDLE
        self._session_factory = session_factory
        self._task_files = TaskFiles(reporter, cache)
        self._session: SessionLike | None = None
        self._session_task_id: int | None = None
        self._session_python = False  # whether the open session lets the file's Python run
        # Tasks whose files hold Python: rendered here only from a claim that marks them so, if this worker allows it.
        self._python_tasks: set[int] = set()
        self._ahead: Future[Lease | None] | None = None
        self._set_aside = OutputSetAside(cache)
        self._prefetch_timer = PrefetchTimer()
        self._steps: dict[State, Callable[[Turn | None], Step]] = {
            State.IDLE: self._idle,
            State.OFF: self._off,
            State.PREPARING: self._preparing,
            State.RENDERING: self._rendering,
            State.ENCODING: self._encoding,
            State.DELIVERING: self._delivering,
        }

    @property
    def blender_pid(self) -> int | None:
        """The open Blender's process id; read without a lock, for a signal handler."""
        session = self._session
        return session.pid if session is not None else None

    @property
    def idle_seconds(self) -> float:
        """How long to wait before asking for work again: the owner's --poll-seconds, else the coordinator's advice."""
        if self.settings.poll_seconds is not None:
            return self.settings.poll_seconds
        return self.reporter.advised_poll_seconds

    def run(self) -> None:
        """Step through the states until stopped; then give back the frame claimed ahead and close Blender."""
        state: State = State.IDLE
        turn: Turn | None = None
        try:
            while state is not State.STOPPED:
                self.state = state
                try:
                    state, turn = self._steps[state](turn)
                except Exception as exc:
                    # The loop must outlive any single bad frame or surprise answer.
                    log.exception("unexpected error in the worker loop; going on")
                    if turn is not None:
                        self.reporter.finish(FrameFailed(turn.lease, f"the worker failed: {exc}"))
                    state, turn = State.IDLE, None
                    self.control.wait(1.0)
        finally:
            self.state = State.STOPPED
            self._give_back_ahead("the worker is stopping")
            self._close_session(remove_task_files=False)
            self.blender_lane.close()

    # -- the states ---------------------------------------------------------------------------------------------

    def _idle(self, _turn: Turn | None) -> Step:
        self._clean_up_settled()
        if self.control.stopping:
            return State.STOPPED, None
        if not self.control.enabled:
            return State.OFF, None
        lease = self._take_ahead() or self.reporter.claim(self._session_task_id)
        if lease is None:
            # Nothing to do: Blender should not hold the scene's memory while idle.
            self._close_session(remove_task_files=True)
            self.control.wait(self.idle_seconds)
            return State.IDLE, None
        if self.control.stopping or not self.control.enabled:
            self._give_back(lease, self._why_not_working())
            return State.IDLE, None
        if lease.kind in (FRAME_KIND_ENCODE, FRAME_KIND_MERGE):
            return State.ENCODING, Turn(lease)
        return State.PREPARING, Turn(lease)

    def _off(self, _turn: Turn | None) -> Step:
        self._give_back_ahead("the worker was switched OFF")
        self._close_session(remove_task_files=True)
        log.info("worker is OFF: claiming no frames until it is switched ON")
        while not self.control.stopping and not self.control.enabled:
            self.control.wait(self.idle_seconds)
            self._clean_up_settled()
        if not self.control.stopping:
            log.info("worker is ON again")
        return State.IDLE, None

    def _preparing(self, turn: Turn | None) -> Step:
        assert turn is not None
        lease = turn.lease
        if lease.revoked:
            return self._drop(lease, "before rendering")
        if lease.task_id in self._python_tasks and not self._python_permitted(lease):
            # Known from an earlier frame: no need to start Blender to find the Python again.
            self._give_back_needs_python(lease, ["found in an earlier frame of this task"])
            return State.IDLE, None
        try:
            session = self._open_session(lease)
        except GaveUp:
            return self._drop(lease, "before rendering") if lease.revoked else self._given_back(lease)
        except (SessionError, CacheError, CoordinatorError, OSError) as exc:
            # Session errors put Blender's last lines after the first line: they belong in the log tail.
            error, _, tail = str(exc).partition("\n")
            log.error("%s: cannot render: %s", lease, error)
            self.reporter.log_line(lease.task_id, f"frame {lease.frame} cannot be rendered here: {error}")
            self.reporter.finish(FrameFailed(lease, error, tail))
            return State.IDLE, None
        if lease.revoked:
            return self._drop(lease, "before rendering")
        if self.control.stopping or not self.control.enabled:
            return self._given_back(lease)
        found = list(session.python_found or [])
        if found and not self._python_permitted(lease):
            # Checked before anything renders: rendered without its Python, the file would come out wrong.
            self._close_session(remove_task_files=False)
            self._give_back_needs_python(lease, found)
            return State.IDLE, None
        turn.session = session
        return State.RENDERING, turn

    def _rendering(self, turn: Turn | None) -> Step:
        assert turn is not None and turn.session is not None
        lease, session = turn.lease, turn.session
        if lease.revoked:
            return self._drop(lease, "before rendering")
        if self.control.stopping:
            return self._given_back(lease)
        log.info("rendering %s", lease)
        render = self._on_blender_lane(lambda: session.render(
            blender_frame(lease), frame_timeout=lease.frame_timeout, no_progress_timeout=lease.no_progress_timeout,
            **tile_request(lease),
        ))
        claim_ahead_at: float | None = None
        aborted = False
        while not render.done():
            self._watch_switch()
            if not aborted and (lease.revoked or self.control.stopping):
                log.info("%s: %s; aborting the render", lease, "lease lost" if lease.revoked else "stopping")
                self._abort(session)
                aborted = True
                continue
            if lease.started_at is None and (started := self._note_start(turn)) is not None:
                claim_ahead_at = time.monotonic() + self._prefetch_timer.delay(lease.task_id, started)
            if claim_ahead_at is not None and time.monotonic() >= claim_ahead_at:
                claim_ahead_at = None
                if self._ahead is None:
                    self._ahead = self.reporter.claim_ahead(lease)
            self.control.wait(self._watch_wait(lease, claim_ahead_at))
        if lease.started_at is None:
            # A frame that began and ended between two looks.
            self._note_start(turn)
        lease.finished.set()
        try:
            turn.result = render.result()
        except Exception as exc:  # noqa: BLE001 - whatever broke the session fails this frame, not the worker
            log.error("%s: Blender session failed: %s", lease, exc)
            turn.result = FrameResult(
                frame=lease.frame, ok=False, output_path=None, started_at=None, ended_at=None, render_seconds=None,
                error=str(exc), log_tail="",
            )
        return State.DELIVERING, turn

    def _delivering(self, turn: Turn | None) -> Step:
        assert turn is not None and turn.result is not None
        lease, result = turn.lease, turn.result
        if result.ok and not result.aborted and not lease.revoked:
            if result.render_seconds:
                self._prefetch_timer.note(lease.task_id, float(result.render_seconds))
            waiting_path = self._checked_output(lease, result, turn.rendering_report)
            if waiting_path is None:
                remove_quietly(result.preview_path)
                return State.IDLE, None
            preview_path = self._set_aside.preview(lease, result.preview_path)
            self._wait_for_room(lease)
            if lease.revoked:
                remove_quietly(waiting_path)
                remove_quietly(preview_path)
                return self._drop(lease, "before delivery")
            self.reporter.finish(FrameDone(
                lease, waiting_path, os.path.basename(str(result.output_path)), result.started_at,
                result.ended_at, result.render_seconds, result.log_tail, after=turn.rendering_report,
                preview_path=preview_path,
            ))
            return State.IDLE, None
        remove_quietly(result.output_path)
        remove_quietly(result.preview_path)
        if lease.revoked:
            return self._drop(lease, "while rendering")
        if result.aborted or self.control.stopping:
            # Aborted by our own stop (or a stray abort): the frame was not rendered, so it is given back.
            reason = "the worker is stopping" if self.control.stopping else "the render was aborted"
            self._give_back(lease, reason, after=turn.rendering_report)
        elif result.needs_python:
            self._close_session(remove_task_files=False)
            self._give_back_needs_python(lease, [])
        else:
            error = result.error or "the render failed"
            log.warning("%s failed: %s", lease, error)
            self.reporter.log_line(lease.task_id, f"frame {lease.frame} failed: {error}")
            self.reporter.finish(FrameFailed(lease, error, result.log_tail or "", after=turn.rendering_report))
        return State.IDLE, None

    def _encoding(self, turn: Turn | None) -> Step:
        """The task's encode job: FFmpeg makes its video from its frames (worker/encode.py), or a tiled still's merge
        job (worker/tiles.py); the result is delivered like a rendered frame, under the job's lease."""
        assert turn is not None
        lease = turn.lease
        if lease.revoked:
            return self._drop(lease, "before encoding")
        if lease.kind == FRAME_KIND_ENCODE and not self.settings.ffmpeg:
            self._give_back(lease, "this worker has no FFmpeg")
            return State.IDLE, None
        # The task has no frame left to render: its Blender need not hold the scene's memory while FFmpeg works.
        self._close_session(remove_task_files=False)
        log.info("%s of task %s", "merging the tiles" if lease.kind == FRAME_KIND_MERGE else "encoding the video",
                 lease.task_id)
        lease.started_at = time.time()
        turn.rendering_report = self.reporter.report_rendering(lease, lease.started_at)

        def give_up() -> bool:
            return lease.revoked or self.control.stopping

        job = EncodeJob(
            lease=lease, ffmpeg=self.settings.ffmpeg or "", blender=self.settings.blender,
            work_dir=self.settings.work_dir,
            output_dir=self.cache.output_dir(lease.task_id),
            download=lambda sha256, path: self.reporter.download_file(sha256, path, give_up),
            list_frames=lambda: self.reporter.video_frames(lease.task_id, give_up),
            blend_path=lambda: self._task_files.prepare(lease, give_up), should_stop=give_up,
            on_log_line=lambda line: self.reporter.log_line(lease.task_id, line),
        )
        try:
            turn.result = (merge_tiles if lease.kind == FRAME_KIND_MERGE else encode_video)(job)
        except GaveUp:
            turn.result = FrameResult(frame=lease.frame, ok=False, aborted=True, error="the encode was stopped")
        except (CacheError, CoordinatorError, OSError) as exc:
            made = "merged still" if lease.kind == FRAME_KIND_MERGE else "video"
            turn.result = FrameResult.failure(lease.frame, f"the {made} could not be made: {exc}")
        lease.finished.set()
        return State.DELIVERING, turn

    # -- watching -----------------------------------------------------------------------------------------------

    def _watch_wait(self, lease: Lease, claim_ahead_at: float | None) -> float:
        """How long the rendering state may sleep before it looks again (a wake-up ends the sleep sooner)."""
        if lease.started_at is None:
            return _START_POLL_SECONDS
        if claim_ahead_at is not None:
            return min(_WATCH_SECONDS, max(0.0, claim_ahead_at - time.monotonic()))
        return _WATCH_SECONDS

    def _note_start(self, turn: Turn) -> float | None:
        """Once Blender began the frame, its start time (wall clock), noted and reported; None before."""
        assert turn.session is not None
        lease = turn.lease
        started = lease.started_at = turn.session.started_at(blender_frame(lease))
        if started is not None:
            turn.rendering_report = self.reporter.report_rendering(lease, started)
        return started

    def _watch_switch(self) -> None:
        """Switched OFF while busy: the frame claimed ahead goes back to the queue now, the current one is finished."""
        if not self.control.enabled and self._ahead is not None and self._ahead.done():
            self._give_back_ahead("the worker was switched OFF")

    def _wait_for_room(self, lease: Lease) -> None:
        """Wait until the rendered frame may join those on their way; a stopping worker hands it over at once."""
        while not self.control.stopping and not lease.revoked and not self.reporter.wait_for_room(0.1):
            self._watch_switch()

    def _on_blender_lane(self, call: Callable[[], object]) -> Future:
        future = self.blender_lane.submit(call)
        future.add_done_callback(lambda _future: self.control.wake())
        return future

    def _abort(self, session: SessionLike) -> None:
        try:
            session.abort(self.settings.abort_grace)
        except Exception:
            log.exception("aborting Blender failed")

    # -- Blender sessions ---------------------------------------------------------------------------------------

    def _open_session(self, lease: Lease) -> SessionLike:
        """A started session for the lease's task: the open one if it fits and lives, else a new one.

        Raises GaveUp when the worker stops or the lease is lost first.
        """
        python = self._python_permitted(lease)
        session = self._session
        if session is not None and (
            self._session_task_id != lease.task_id or not session.alive or self._session_python != python
        ):
            if self._session_task_id == lease.task_id and not session.alive:
                log.warning("Blender of task %s is gone; starting a new one", lease.task_id)
            self._close_session(remove_task_files=self._session_task_id != lease.task_id)
            session = None
        if session is not None:
            return session

        blend_path = self._task_files.prepare(lease, give_up=lambda: lease.revoked or self.control.stopping)
        session = self._session_factory(
            self.settings.blender,
            blend_path,
            self.cache.output_dir(lease.task_id),
            threads=self.settings.threads or int(lease.settings.get("threads") or 0),
            on_log_line=lambda line, task_id=lease.task_id: self.reporter.log_line(task_id, line),
            allow_python=python,
            stop_grace=self.settings.abort_grace,
            hidden_values=self.reporter.hidden_values,
            **scene_and_camera(lease),
            task_device=lease.device,
        )
        self._session, self._session_task_id, self._session_python = session, lease.task_id, python
        log.info(
            "starting Blender for task %s (%s)%s",
            lease.task_id, lease.main_file or lease.blend_filename,
            " with the file's Python allowed" if python else "",
        )
        started = self._on_blender_lane(session.start)
        while not started.done():
            if self.control.stopping or lease.revoked:
                self._abort(session)
                break
            self.control.wait(_WATCH_SECONDS)
        futures.wait([started])
        try:
            started.result()
        except BaseException:
            self._close_session(remove_task_files=False)
            if self.control.stopping or lease.revoked:
                raise GaveUp() from None
            raise
        if self.control.stopping:
            raise GaveUp()
        return session

    def _close_session(self, *, remove_task_files: bool) -> None:
        """Close the open Blender session, if any; optionally delete its task's tree and output folder.

        The tree stays while a frame of the task is still held; it goes once that frame is let go of.
        """
        session, task_id = self._session, self._session_task_id
        self._session, self._session_task_id = None, None
        if session is None:
            return
        try:
            session.close(self.settings.abort_grace)
        except Exception:
            log.exception("closing Blender of task %s failed", task_id)
        log.info("closed Blender of task %s", task_id)
        if remove_task_files and task_id is not None:
            self._end_task_if_done(task_id)

    # -- leases -------------------------------------------------------------------------------------------------

    def _take_ahead(self) -> Lease | None:
        """The frame claimed ahead, once its claim is back; None when there is none or its lease is lost."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        futures.wait([ahead], timeout=self.reporter.request_seconds())
        lease = ahead.result() if ahead.done() and ahead.exception() is None else None
        if lease is not None and lease.revoked:
            self._drop(lease, "before rendering")
            return None
        return lease

    def _give_back_ahead(self, reason: str) -> None:
        lease = self._take_ahead()
        if lease is not None:
            self._give_back(lease, reason)

    def _give_back(self, lease: Lease, reason: str, after: Future | None = None, **fields: object) -> None:
        """Hand a held frame back unrendered (through the reporter, in order); a lost lease is just dropped."""
        if lease.revoked:
            self._drop(lease, "")
        else:
            self.reporter.finish(FrameGivenBack(lease, reason, dict(fields), after=after))

    def _given_back(self, lease: Lease) -> Step:
        self._give_back(lease, self._why_not_working())
        return State.IDLE, None

    def _drop(self, lease: Lease, when: str) -> Step:
        """Forget a frame whose lease was lost, and its task's files if nothing else needs them."""
        if when:
            log.info("%s: lease lost %s; dropped", lease, when)
        self.reporter.held.drop(lease)
        self._end_task_if_done(lease.task_id)
        return State.IDLE, None

    def _give_back_needs_python(self, lease: Lease, found: list[str]) -> None:
        """Give the frame back unrendered as needing Python, and render no more of its task until allowed to."""
        first = lease.task_id not in self._python_tasks
        self._python_tasks.add(lease.task_id)
        reason = "the file holds Python" + (f" ({'; '.join(found)})" if found else "")
        if not self.settings.allow_python:
            outcome = "it needs a worker started with --allow-blend-python"
        elif not lease.needs_python:
            outcome = "given back so the task is marked as needing Python, which this worker allows"
        else:
            outcome = "given back"
        if first:
            log.warning("%s not rendered: %s; %s", lease, reason, outcome)
            self.reporter.log_line(
                lease.task_id, f"frame {lease.frame} not rendered on this worker: {reason}; {outcome}"
            )
        self._give_back(lease, reason, needs_python=True, error=f"{reason}; {outcome}")
        if not first or not self.settings.allow_python:
            # A coordinator that hands the frame straight back to a worker that cannot take it must not make this
            # loop spin.
            self.control.wait(self.idle_seconds)

    def _python_permitted(self, lease: Lease) -> bool:
        """Whether the file's own Python may run for this frame: the task needs it and this worker allows it."""
        return lease.needs_python and self.settings.allow_python

    def _why_not_working(self) -> str:
        """Why a frame is given back unrendered once the worker stops or is switched OFF."""
        return "the worker is stopping" if self.control.stopping else "the worker was switched OFF"

    # -- task files ---------------------------------------------------------------------------------------------

    def _clean_up_settled(self) -> None:
        """Remove the files of tasks whose last held frame the reporter is done with."""
        while True:
            try:
                task_id = self.reporter.settled.get_nowait()
            except queue.Empty:
                return
            self._end_task_if_done(task_id)

    def _end_task_if_done(self, task_id: int) -> None:
        """Delete the task's tree and forget its manifest once no session is open on it and no frame of it is held."""
        try:
            self._task_files.remove_unless(
                task_id, lambda task: self._session_task_id == task or self.reporter.held.task_held(task)
            )
        except OSError as exc:
            log.warning("could not clean the folder of task %s: %s", task_id, exc)

    def _checked_output(self, lease: Lease, result: FrameResult, rendering_report: Future | None) -> str | None:
        """Where the rendered file waits for delivery (worker/set_aside.py), if it may be sent; otherwise the frame
        is reported failed and None returned."""
        try:
            return self._set_aside.output(lease, result.output_path)
        except SetAsideError as exc:
            remove_quietly(result.output_path)
            self.reporter.finish(FrameFailed(lease, str(exc), result.log_tail or "", after=rendering_report))
            return None


def scene_and_camera(lease: Lease) -> dict[str, str]:
    """The session options for the scene and camera the task names; none when it names neither (the file's own)."""
    options = {}
    for name in ("scene", "camera"):
        value = lease.settings.get(name)
        if isinstance(value, str) and value:
            options[name] = value
    return options
