"""One Blender process for one task: start it, ask it for frames one at a time, watch it, stop it.

Blender runs `frame_script.py` (next to this file), which reports each frame's exact start, end and written file
over a local TCP side channel (JSON lines; the protocol is described in that script). Blender's console output is
only passed on as log lines, never parsed for frame times.

A frame is good only when Blender reported it written (`render_write`) and the file exists: Blender's exit code and
the render operator's return say little (a handler error or a failed save does not fail the render).

A frame may be given two limits: how long it may render in all, and how long Blender may stay silent (no console
line, no handler event). Past either, Blender is stopped like an abort (SIGINT, a grace period, SIGKILL) and the
frame fails with a sentence saying which limit it crossed; the session is then over and the next frame needs a new
one.

Python stored in the .blend runs only when the session is started with `allow_python`; otherwise the frame script
lists what Python the file holds (`python_found`) and this session refuses to render it, since the result would
not be what the file's author meant.
"""

from __future__ import annotations

import collections
import functools
import hmac
import json
import logging
import os
import queue
import re
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from renderq import blender_path, platform
from renderq.model import FrameResult
from worker.frame_events import FrameEvents, describe_exit

__all__ = [
    "BlenderNotFoundError",
    "BlenderSession",
    "FrameResult",
    "SessionError",
    "blender_environment",
    "blender_version",
    "find_blender",
]

log = logging.getLogger("renderq.worker.blender")

FRAME_SCRIPT = Path(__file__).with_name("frame_script.py")
PROTOCOL = 1
# Must match frame_script.py: the line Blender prints once a frame's console output is complete.
SYNC_PREFIX = "\x1erenderq-frame-done "
# The token reaches Blender through its environment: a command line is readable by every local user.
TOKEN_ENV = "RENDERQ_SESSION_TOKEN"
# RenderQ's settings that carry a secret or name a file holding one (RENDERQ_TOKEN, RENDERQ_TOKEN_FILE,
# RENDERQ_WORKER_TOKEN...): Blender needs none of them, and a scene's Python could read them.
_SECRET_SETTING = re.compile(r"^RENDERQ_\w*(TOKEN|SECRET|PASSWORD|KEY)", re.IGNORECASE)
# A hidden value shorter than this is no secret (and would match far too much).
_MIN_HIDDEN_LENGTH = 8
LOG_TAIL_LINES = 60
_LOG_LINES_KEPT = 400
_HELLO_READ_SECONDS = 5.0


class SessionError(Exception):
    """Blender could not be found, could not start, or could not open the file; the message says why."""


class BlenderNotFoundError(SessionError, blender_path.BlenderNotFoundError):
    """No Blender executable was found (both a SessionError and the kernel's error)."""


def blender_environment(environ: Mapping[str, str], hidden: Collection[str] = ()) -> dict[str, str]:
    """The environment Blender is started with: the worker's, less every RenderQ setting that carries a secret and
    every variable whose value holds one of the `hidden` values (the worker's token, under whatever name it was
    given). What Blender needs (PATH, HOME, DISPLAY, locale, OCIO...) passes unchanged."""
    secrets_held = [value for value in hidden if value and len(value) >= _MIN_HIDDEN_LENGTH]
    return {
        name: value
        for name, value in environ.items()
        if not _SECRET_SETTING.match(name) and not any(secret in value for secret in secrets_held)
    }


# -- finding Blender ------------------------------------------------------------------------------------------------


def find_blender(explicit: str | None = None) -> str:
    """The Blender executable to use, by the kernel's one rule (renderq.blender_path); raises BlenderNotFoundError,
    which the worker's callers catch as a SessionError."""
    try:
        return blender_path.find_blender(explicit)
    except blender_path.BlenderNotFoundError as exc:
        raise BlenderNotFoundError(str(exc)) from None


@functools.lru_cache(maxsize=16)
def _version_of(path: str, _mtime: float) -> str:
    try:
        completed = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SessionError(f"Could not run {path} --version: {exc}") from exc
    output = completed.stdout.decode("utf-8", "replace")
    match = re.search(r"^Blender\s+(\d+\.\d+(?:\.\d+)?)", output, re.MULTILINE)
    if match is None:
        raise SessionError(f"{path} --version did not print a Blender version (exit code {completed.returncode})")
    return match.group(1)


def blender_version(blender: str) -> str:
    """Blender's version, e.g. "3.4.1", from `blender --version`; cached per executable."""
    path = os.path.realpath(blender)
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise SessionError(f"Cannot run Blender at {blender!r}: {exc}") from exc
    return _version_of(path, mtime)


# -- starting Blender -----------------------------------------------------------------------------------------------

class BlenderSession:
    """One Blender process rendering frames of one .blend, one frame at a time, into `output_dir`.

    `start()` launches Blender and waits until the file is open; `render()` renders one frame and blocks until it
    is written or failed; `abort()` (from any thread) stops Blender at once; `close()` asks it to quit.
    Every line Blender prints goes to `on_log_line`, called from a reader thread. Blender gets the worker's
    environment without its secrets: no RenderQ token setting, and no variable holding one of `hidden_values`.
    """

    def __init__(
        self,
        blender: str,
        blend_path: str,
        output_dir: str,
        *,
        threads: int = 0,
        on_log_line: Callable[[str], None] | None = None,
        start_timeout: float = 120.0,
        allow_python: bool = False,
        stop_grace: float = 5.0,
        hidden_values: Collection[str] = (),
        scene: str = "",
        camera: str = "",
        device_args: Collection[str] = (),
        task_device: str = "",
    ) -> None:
        self.blender = blender
        self.blend_path = os.path.abspath(blend_path)
        self.output_dir = os.path.abspath(output_dir)
        self.threads = threads
        self.on_log_line = on_log_line
        self.start_timeout = start_timeout
        self.allow_python = allow_python
        self.stop_grace = stop_grace
        # Secrets of the worker (its token) that must not reach Blender's environment under any name.
        self.hidden_values = tuple(hidden_values)
        # The scene and camera object the task names ("": the file's own).
        self.scene, self.camera = scene, camera
        # The frame script's device arguments: the worker's devices (--device, --gpu) and the task's (--task-device).
        self.script_args = [*device_args, *(["--task-device", task_device] if task_device else [])]
        self.extra_env: dict[str, str] = {}  # e.g. DISPLAY, from a session on a virtual display
        self.hello: dict[str, Any] | None = None  # what the script reported once the file was open
        # (frame, wall time) of the last frame Blender began; replaced whole, so other threads read it safely.
        self._started: tuple[int, float] | None = None

        self._proc: subprocess.Popen | None = None
        self._conn: socket.socket | None = None
        self._channel_open = False
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._send_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._aborted = threading.Event()
        self._halted = threading.Event()  # stopped by abort() or by a frame's limit
        self._threads: list[threading.Thread] = []

        self._log_cond = threading.Condition()
        self._log_lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=_LOG_LINES_KEPT)
        self._log_count = 0
        self._sync_count = 0
        self._log_eof = False
        self._last_output = time.monotonic()  # when Blender last printed a line

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Blender's process id, once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """True while Blender runs, is connected and can take frames."""
        return (
            self._proc is not None
            and self._proc.poll() is None
            and self._channel_open
            and not self._halted.is_set()
        )

    @property
    def python_found(self) -> list[str]:
        """Sentences naming the Python the opened file holds (scripts run on load, scripted drivers); [] if none."""
        found = (self.hello or {}).get("python_found") or []
        return [str(item) for item in found] if isinstance(found, list) else []

    def start(self) -> None:
        """Launch Blender and wait until it has opened the file. Raises SessionError saying why it could not."""
        if self._proc is not None:
            raise SessionError("This Blender session was already started")
        if not os.path.isfile(self.blend_path):
            raise SessionError(f"The .blend file {self.blend_path} does not exist")
        if not FRAME_SCRIPT.is_file():
            raise SessionError(f"The frame script {FRAME_SCRIPT} is missing from the installation")
        os.makedirs(self.output_dir, exist_ok=True)

        token = secrets.token_hex(16)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            command = self._command(listener.getsockname()[1])
            env = blender_environment(os.environ, self.hidden_values)
            env["PYTHONUNBUFFERED"] = "1"
            env[TOKEN_ENV] = token
            env.update(self.extra_env)
            try:
                # In its own process group (a Ctrl-C in the worker's terminal must not reach Blender directly),
                # and killed with the worker where the system can do that.
                self._proc = platform.spawn_tied(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            except OSError as exc:
                raise SessionError(f"Could not start Blender ({self.blender}): {exc}") from exc
            self._start_thread(self._read_log, "blender-log", self._proc.stdout)
            try:
                conn, reader, hello = self._accept_hello(listener, token)
            except BaseException:
                self._kill_now()
                raise
        finally:
            listener.close()

        opened = hello.get("blend_file") or ""
        if not opened or os.path.realpath(opened) != os.path.realpath(self.blend_path):
            conn.close()
            self._kill_now()
            raise SessionError(
                f"Blender opened {opened or 'no file'} instead of {self.blend_path}{self._log_tail_for_error()}"
            )
        self._conn, self.hello, self._channel_open = conn, hello, True
        self._start_thread(self._read_channel, "blender-channel", reader)
        log.info(
            "Blender %s (pid %s) opened %s, scene %r",
            hello.get("blender_version"), self.pid, self.blend_path, hello.get("scene"),
        )

    def started_at(self, frame: int) -> float | None:
        """When Blender began `frame` (its wall clock at render_pre), once it has; None before.

        Whoever waits on render() in another thread polls this, so the session never calls back into its caller.
        """
        started = self._started
        return started[1] if started is not None and started[0] == frame else None

    def render(
        self,
        frame: int,
        *,
        frame_timeout: float | None = None,
        no_progress_timeout: float | None = None,
        tile: dict[str, int] | None = None,
    ) -> FrameResult:
        """Render one frame; blocks until it is written, failed, Blender died, a limit was crossed, or abort() was
        called.

        `started_at(frame)` tells other threads once Blender began the frame. `frame_timeout` limits the seconds
        from asking for the frame to its end; `no_progress_timeout` the seconds without a line of Blender output or
        a handler event. Crossing either stops Blender (SIGINT, `stop_grace`, SIGKILL) and fails the frame with
        `timed_out` set. `tile` ({columns, rows, number}) renders only that tile of the frame (frame_script.py).
        """
        frame = int(frame)
        with self._render_lock:
            with self._log_cond:
                log_start, sync_start = self._log_count, self._sync_count
            if not self.alive:
                reason = "the session was aborted" if self._aborted.is_set() else self._not_running_reason()
                return self._result(frame, log_start, error=f"Cannot render frame {frame}: {reason}")
            if self.python_found and not self.allow_python:
                return self._result(
                    frame, log_start, needs_python=True,
                    error=f"Frame {frame} was not rendered: the file holds Python this session may not run "
                    f"({'; '.join(self.python_found)})",
                )
            events = FrameEvents(frame)
            self._started = None  # a tile renders the same frame number as the tile before it
            if not self._send({"type": "render", "frame": frame, **({"tile": tile} if tile else {})}):
                self._wait_exit(5.0)
            self._follow(events, frame_timeout, no_progress_timeout)
            if events.finished is not None:
                self._wait_log(lambda: self._sync_count > sync_start, 2.0)
            else:
                # The channel closed mid-frame: Blender died or was stopped; let it finish dying for the tail.
                if not self._wait_exit(10.0):
                    self._kill_now()
                self._channel_open = False
                self._wait_log(lambda: self._log_eof, 3.0)
            aborted = self._aborted.is_set()
            ok = events.ok
            return self._result(
                frame, log_start,
                ok=ok, output_path=events.written_path if ok else None, started_at=events.started_at,
                preview_path=events.preview_path if ok else None,
                ended_at=events.ended_at, render_seconds=events.render_seconds,
                error=events.failure(aborted, self._exit_code()), aborted=aborted,
                timed_out=events.timed_out is not None and not aborted,
            )

    def _follow(self, events: FrameEvents, frame_timeout: float | None, no_progress_timeout: float | None) -> None:
        """Take the frame script's events for `events.frame` until it says the frame is finished or the channel
        closes; stop Blender (SIGINT, `stop_grace`, SIGKILL) once the frame crosses a limit."""
        frame = events.frame
        requested = last_event = time.monotonic()
        while True:
            if events.timed_out is None:
                events.timed_out = self._limit_crossed(frame, requested, last_event, frame_timeout,
                                                       no_progress_timeout)
                if events.timed_out is not None:
                    log.warning("Blender (pid %s): %s", self.pid, events.timed_out)
                    # Blocks for the grace period at most; what Blender still sends waits in the queue.
                    self._halt(self.stop_grace)
            try:
                message = self._events.get(timeout=0.25)
            except queue.Empty:
                if self._exit_code() is None:
                    continue
                return  # Blender is gone
            last_event = time.monotonic()
            if message.get("type") == "_closed":
                return
            if message.get("frame") != frame:
                continue  # left over from an earlier frame
            finished = events.take(message)
            if message.get("type") == "started" and events.started_at is not None:
                self._started = (frame, events.started_at)
            if finished:
                return

    def _limit_crossed(
        self,
        frame: int,
        requested: float,
        last_event: float,
        frame_timeout: float | None,
        no_progress_timeout: float | None,
    ) -> str | None:
        """The sentence saying which limit of the frame was crossed, or None while both hold."""
        now = time.monotonic()
        if frame_timeout and now - requested > frame_timeout:
            return f"timed out: frame {frame} rendered longer than the task's limit of {frame_timeout:g} s"
        if no_progress_timeout:
            with self._log_cond:
                last_output = self._last_output
            if now - max(requested, last_event, last_output) > no_progress_timeout:
                return f"Blender made no progress for {no_progress_timeout:g} s (no output) and was stopped"
        return None

    def abort(self, grace: float = 5.0) -> None:
        """Stop Blender now, from any thread: SIGINT (Blender cancels the render), then SIGKILL after `grace`
        seconds. A render() blocked in another thread returns with aborted=True."""
        self._aborted.set()
        self._halt(grace)

    def _halt(self, grace: float) -> None:
        """Stop Blender: quit, SIGINT, then SIGKILL after `grace` seconds. The session cannot render afterwards."""
        self._halted.set()
        with self._stop_lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            # Once the render breaks, the script reads this and returns, and Blender exits by itself.
            self._send({"type": "quit"})
            platform.interrupt_child(proc)
            if not self._wait_exit(grace):
                log.warning("Blender (pid %s) did not stop within %.1f s of an interrupt; killing it", proc.pid, grace)
                self._kill_now()

    def close(self, grace: float = 5.0) -> None:
        """Ask Blender to quit; abort() it if it has not exited within `grace` seconds. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._send({"type": "quit"})
            if not self._wait_exit(grace):
                self.abort(grace)
        self._channel_open = False
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)

    def __enter__(self) -> "BlenderSession":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        # -Y always: the file's own Python may only run through the frame script's --allow-python.
        command = [self.blender, "-b", "-Y", self.blend_path]
        if self.threads > 0:
            command += ["-t", str(self.threads)]  # render options only count after the .blend
        command += [
            "--python-exit-code", "1",
            "--python", str(FRAME_SCRIPT),
            "--", "--port", str(port), "--output-dir", self.output_dir,
        ]
        if self.allow_python:
            command.append("--allow-python")
        # One word each: a name may begin with "-".
        if self.scene:
            command.append(f"--scene={self.scene}")
        if self.camera:
            command.append(f"--camera={self.camera}")
        return command + self.script_args

    def _start_thread(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"{name}-{self.pid}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_hello(self, listener: socket.socket, token: str) -> tuple[socket.socket, Any, dict[str, Any]]:
        """Wait for the script to connect and prove itself with the token; other connections are dropped."""
        deadline = time.monotonic() + self.start_timeout
        listener.settimeout(0.2)
        while True:
            if self._aborted.is_set():
                raise SessionError("Blender's start was aborted")
            code = self._exit_code()
            if code is not None:
                self._wait_log(lambda: self._log_eof, 3.0)
                raise SessionError(
                    f"Blender {describe_exit(code)} before it was ready to render {self.blend_path}"
                    f"{self._log_tail_for_error()}"
                )
            if time.monotonic() > deadline:
                raise SessionError(
                    f"Blender did not get ready to render {self.blend_path} within {self.start_timeout:g} s"
                    f"{self._log_tail_for_error()}"
                )
            try:
                conn, _address = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(_HELLO_READ_SECONDS)
            reader = conn.makefile("rb")
            try:
                hello = json.loads(reader.readline(64 * 1024) or b"null")
            except (OSError, ValueError):
                hello = None
            if (
                isinstance(hello, dict)
                and hello.get("type") == "hello"
                and hmac.compare_digest(str(hello.get("token", "")).encode(), token.encode())
            ):
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn, reader, hello
            log.warning("dropped a connection to the Blender side channel that did not present the token")
            reader.close()
            conn.close()

    def _read_channel(self, reader: Any) -> None:
        try:
            for line in reader:
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("unreadable message from Blender: %r", line[:200])
                    continue
                if isinstance(message, dict):
                    self._events.put(message)
        except (OSError, ValueError):
            pass
        finally:
            self._channel_open = False
            self._events.put({"type": "_closed"})

    def _read_log(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith(SYNC_PREFIX):
                    with self._log_cond:
                        self._last_output = time.monotonic()
                        self._sync_count += 1
                        self._log_cond.notify_all()
                    continue
                with self._log_cond:
                    self._last_output = time.monotonic()
                    self._log_lines.append((self._log_count, line))
                    self._log_count += 1
                if self.on_log_line is not None:
                    try:
                        self.on_log_line(line)
                    except Exception:
                        log.exception("on_log_line callback failed")
        except (OSError, ValueError):
            pass
        finally:
            with self._log_cond:
                self._log_eof = True
                self._log_cond.notify_all()
            try:
                stream.close()
            except OSError:
                pass

    def _wait_log(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self._log_cond:
            return self._log_cond.wait_for(condition, timeout)

    def _log_tail(self, since: int = 0) -> str:
        with self._log_cond:
            lines = [text for index, text in self._log_lines if index >= since]
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def _log_tail_for_error(self) -> str:
        tail = self._log_tail()
        errors = [line.strip() for line in tail.splitlines() if line.lstrip().startswith("Error")]
        summary = f": {errors[-1]}" if errors else ""
        return f"{summary}\n--- last lines of Blender's output ---\n{tail}" if tail else summary

    def _result(self, frame: int, log_start: int, **fields: Any) -> FrameResult:
        values: dict[str, Any] = dict(
            ok=False, output_path=None, started_at=None, ended_at=None, render_seconds=None, error=None,
            aborted=self._aborted.is_set(),
        )
        values.update(fields)
        return FrameResult(frame=frame, log_tail=self._log_tail(log_start), **values)

    def _exit_code(self) -> int | None:
        """Blender's exit status; None while it runs (or before it was started)."""
        return self._proc.poll() if self._proc is not None else None

    def _not_running_reason(self) -> str:
        if self._proc is None:
            return "Blender was not started"
        code = self._proc.poll()
        if code is not None:
            return f"Blender {describe_exit(code)}"
        return "Blender's side channel is closed"

    def _send(self, message: dict[str, Any]) -> bool:
        conn = self._conn
        if conn is None or not self._channel_open:
            return False
        data = (json.dumps(message) + "\n").encode("utf-8")
        try:
            with self._send_lock:
                conn.sendall(data)
            return True
        except OSError:
            return False

    def _wait_exit(self, timeout: float) -> bool:
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def _kill_now(self) -> None:
        if self._proc is not None:
            platform.kill_child(self._proc)
        self._wait_exit(10.0)
