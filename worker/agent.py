"""The RenderQ worker: claims frames from the coordinator, renders them with Blender and reports back.

One Blender process per task stays open while this worker keeps getting frames of that task. Blender should never
wait on the network between two frames, so:

- the next frame is claimed in the background (preferring the same task) shortly before the current one is expected
  to end (from the exact time of the task's previous frame here; at once when there is none), so it is ready when
  the current one ends but not taken from another worker that could start it sooner;
- a rendered frame is uploaded and reported done by the reporter while Blender renders the next one. At most
  one frame is on its way at a time (`max_undelivered_frames`): the frame after that waits for it, so an
  unreachable coordinator cannot make this worker render ahead of what it can deliver. Its lease stays held (and
  renewed) until it is delivered.

Every network call that fails because the coordinator is away is retried with backoff, and results wait, in order,
until it is back; a frame whose lease was lost (409, or `revoked` by the heartbeat) is dropped.

A task may limit how long a frame renders and how long Blender may stay silent; Blender is stopped past either
limit, the frame is reported failed with the reason, and the next frame gets a new Blender.

Python stored in a .blend runs only for a task marked as needing it, on a worker started with
--allow-blend-python. A file found to hold Python otherwise is not rendered: its frame is given back with
`needs_python`, which marks the task on the coordinator, and this worker renders no more of that task unless a
claim says the task needs Python and this worker allows it.

The parts: worker/loop.py (the states, and the only user of Blender), worker/reporter.py (every call to the
coordinator, and the ordered buffer of results), worker/shared.py (what their threads share). This module builds
them, starts every thread, and handles signals and shutdown. Run it as `renderq worker ...`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from renderq.http_client import CoordinatorClient
from worker.blender_session import BlenderSession
from worker.cache import BlendCache
from worker.loop import SessionLike, State, WorkerLoop
from worker.reporter import RegistrationRefused, Reporter
from worker.settings import WorkerSettings
from worker.shared import Control

__all__ = ["WorkerAgent"]

log = logging.getLogger("renderq.worker")


class WorkerAgent:
    """A worker: `run()` blocks until `request_stop()` (or a signal) and returns the exit code.

    `client` is a CoordinatorClient (or a fake with the same methods); `session_factory` builds a Blender session
    with BlenderSession's signature, which lets tests run without Blender.
    """

    def __init__(
        self,
        client: CoordinatorClient,
        settings: WorkerSettings,
        *,
        session_factory: Callable[..., SessionLike] = BlenderSession,
    ) -> None:
        self.settings = settings
        self.cache = BlendCache(settings.work_dir, settings.cache_size)
        self.control = Control()
        self.reporter = Reporter(client, settings, self.control)
        self.loop = WorkerLoop(settings, self.reporter, self.control, self.cache, session_factory)
        self._threads: list[threading.Thread] = []
        self._signals_received = 0

    # -- public control -----------------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self.control.stopping

    @property
    def enabled(self) -> bool:
        """Whether the coordinator last said this worker is ON."""
        return self.control.enabled

    @property
    def state(self) -> State:
        """Where the worker's loop is."""
        return self.loop.state

    @property
    def idle_seconds(self) -> float:
        """How long an idle worker waits before asking for work again."""
        return self.loop.idle_seconds

    def held_leases(self) -> list[str]:
        """The lease ids this worker holds right now (what the heartbeat renews)."""
        return self.reporter.held.ids()

    def request_stop(self) -> None:
        """Stop gracefully: abort Blender, deliver what is rendered, give back the rest, let `run()` return 0.

        Safe in a signal handler: it only sets flags, which the loop watches.
        """
        if self.control.request_stop():
            log.info("stopping: giving back unfinished frames")

    def force_exit(self, code: int = 1) -> None:
        """Kill Blender and leave the process at once, without reporting anything."""
        pid = self.loop.blender_pid
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
            if self._signals_received > 1 or self.control.stopping:
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                self.force_exit(1)
            log.info("%s received (send it again to exit at once)", signal.Signals(signum).name)
            self.request_stop()

        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    # -- running ------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Register, then claim and render frames until stopped; returns the process exit code."""
        self.cache.clear_tasks()
        try:
            if not self.reporter.register():
                return 0 if self.control.stopping else 1
        except RegistrationRefused as exc:
            log.error("%s", exc)
            return 1
        self._start_threads()
        try:
            self.loop.run()
        finally:
            self._shutdown()
        return 0

    def _start_threads(self) -> None:
        """Start every thread of the worker (all daemons, so a stuck one cannot keep the process alive)."""
        bodies = {**self.reporter.threads(), "blender": self.loop.blender_lane.run}
        for name, body in bodies.items():
            thread = threading.Thread(target=body, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _shutdown(self) -> None:
        """Warm shutdown: the loop has given back its frames and closed Blender; deliver what is buffered until the
        deadline, clean the task folders, flush the logs, stop the heartbeat."""
        self.control.request_stop()
        deadline = time.monotonic() + self.settings.shutdown_seconds
        self.reporter.close(deadline)
        try:
            self.cache.clear_tasks()
        except OSError as exc:
            log.warning("could not clean the task folders: %s", exc)
        self.cache.close()  # a stopped worker lets go of its work folder
        log.info("worker %s stopped", self.settings.name)
