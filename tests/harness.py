"""Real processes for integration tests: a coordinator and workers started through the `renderq` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from renderq.blender_path import find_blender_or_none
from renderq.ports import free_port

__all__ = ["find_blender_or_none", "free_port"]  # re-exported: the tests take both from here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until predicate returns something truthy; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Api:
    """A minimal JSON client on urllib, independent of the code under test.

    With a token, every request carries it as `Authorization: Bearer`, so admin-only endpoints work too.
    """

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.token = token

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             timeout: float = 30.0, token: str | None = None, content_type: str | None = None) -> tuple[int, Any]:
        """One request; `token` overrides the client's own ("" sends none). A `body` goes as JSON; `raw` bytes
        with `content_type` (none when not given)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None and raw is None:
            request.add_header("Content-Type", "application/json")
        elif content_type is not None:
            request.add_header("Content-Type", content_type)
        token = self.token if token is None else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
                status = response.status
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            payload = error.read()
            status = error.code
            content_type = error.headers.get("Content-Type", "")
        if "json" in content_type:
            return status, json.loads(payload)
        return status, payload

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any) -> Any:
        status, answer = self.call("POST", path, body)
        assert status in (200, 201), (path, status, answer)
        return answer

    def task(self, task_id: int) -> dict:
        return self.get(f"/task?task_id={task_id}")

    def workers(self) -> dict[str, dict]:
        return {w["name"]: w for w in self.get("/list_workers")["workers"]}

    def upload_blend(self, path: str) -> str:
        with open(path, "rb") as handle:
            status, answer = self.call("POST", f"/upload_blend?filename={os.path.basename(path)}", raw=handle.read())
        assert status == 200, answer
        return answer["sha256"]

    def submit(self, blend_path: str, frame_start: int, frame_end: int, **fields: Any) -> int:
        sha = self.upload_blend(blend_path)
        body = {"name": fields.pop("name", "test"), "blend_sha256": sha,
                "blend_filename": os.path.basename(blend_path), "frame_start": frame_start,
                "frame_end": frame_end, **fields}
        return self.post("/submit_task", body)["task_id"]

    def wait_task_ended(self, task_id: int, timeout: float) -> dict:
        return wait_for(lambda: (t := self.task(task_id))["status"] in ("done", "failed", "canceled") and t,
                        timeout, f"task {task_id} to end")


class Process:
    """A `renderq` subprocess whose output goes to a log file the test can read."""

    def __init__(self, args: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "renderq", *args], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env or _env(), cwd=ROOT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its own session)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def stop(self, timeout: float = 30.0) -> int | None:
        self.signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill_group()


class Farm:
    """A coordinator plus workers in a temporary folder, all stopped at teardown."""

    def __init__(self, root: str, blender: str | None = None, database: str = "") -> None:
        self.root = root
        self.blender = blender
        # The coordinator's --database (a PostgreSQL URL); empty: SQLite in its data dir.
        self.database = database
        self.data_dir = os.path.join(root, "coordinator-data")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = Api(self.url)
        self.coordinator: Process | None = None
        self.workers: dict[str, Process] = {}

    def start_coordinator(self, *extra: str) -> Process:
        database = ["--database", self.database] if self.database else []
        self.coordinator = Process(
            ["coordinator", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", self.data_dir, *database,
             *extra],
            os.path.join(self.root, "coordinator.log"),
        )
        wait_for(self._healthy, 30, "the coordinator to answer /health")
        self.api.token = self.admin_token()
        return self.coordinator

    def admin_token(self) -> str:
        """The coordinator's admin token: RENDERQ_ADMIN_TOKEN when set, else the file it created in its data dir."""
        return self.token("admin")

    def cli_flags(self, role: str = "artist") -> list[str]:
        """`renderq` flags that reach this farm's coordinator with a role's token."""
        return ["--coordinator", self.url, "--token", self.token(role)]

    def token(self, role: str) -> str:
        """A role's token (admin, artist, worker): RENDERQ_<ROLE>_TOKEN when set, else the coordinator's file."""
        if os.environ.get(f"RENDERQ_{role.upper()}_TOKEN"):
            return os.environ[f"RENDERQ_{role.upper()}_TOKEN"]
        with open(os.path.join(self.data_dir, f"{role}_token"), encoding="utf-8") as handle:
            return handle.read().strip()

    def serving_processes(self) -> list[int]:
        """The coordinator's serving processes under --processes (the children of the process started), in the
        order they were started; the kernel lists a replacement last."""
        pid = self.coordinator.pid
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]

    def _healthy(self) -> bool:
        if self.coordinator is not None and self.coordinator.popen.poll() is not None:
            raise AssertionError("the coordinator exited:\n" + self.coordinator.output())
        try:
            return self.api.call("GET", "/health", timeout=2)[0] == 200
        except OSError:
            return False

    def start_worker(self, name: str, *extra: str, threads: int = 1) -> Process:
        args = ["worker", "--coordinator", self.url, "--name", name, "--threads", str(threads),
                "--work-dir", os.path.join(self.root, f"work-{name}")]
        if self.blender:
            args += ["--blender", self.blender]
        env = _env()
        env["RENDERQ_TOKEN"] = self.token("worker")
        worker = Process([*args, *extra], os.path.join(self.root, f"worker-{name}.log"), env=env)
        self.workers[name] = worker
        wait_for(lambda: self._registered(name, worker), 60, f"worker {name} to register")
        return worker

    def _registered(self, name: str, worker: Process) -> bool:
        if worker.popen.poll() is not None:
            raise AssertionError(f"worker {name} exited:\n" + worker.output())
        return name in self.api.workers()

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=20)
        if self.coordinator is not None:
            self.coordinator.stop(timeout=10)


class Exchange:
    """One connection through a TcpProxy: the first bytes each way (one HTTP request and its answer)."""

    KEPT = 64 * 1024

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.request = bytearray()
        self.response = bytearray()
        # Bytes of the request already passed on to the coordinator.
        self.forwarded = 0

    @property
    def path(self) -> str:
        """The request's path with its query, e.g. '/upload_frame?task_id=1&...'; '' until the head arrived."""
        parts = bytes(self.request.split(b"\r\n", 1)[0]).split(b" ")
        return parts[1].decode("latin-1") if len(parts) == 3 else ""

    @property
    def status(self) -> int | None:
        """The coordinator's HTTP status, None while (or if) it did not answer."""
        parts = bytes(self.response.split(b"\r\n", 1)[0]).split(b" ")
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None

    @property
    def request_body(self) -> bytes:
        return bytes(self.request.partition(b"\r\n\r\n")[2])

    @property
    def response_body(self) -> bytes:
        return bytes(self.response.partition(b"\r\n\r\n")[2])


class TcpProxy:
    """A TCP relay from one client to the coordinator that a test can cut, as a broken network would.

    `cut()` closes every open connection, then refuses new ones (reset at once) or blackholes them (accepted,
    never answered) until `restore()`, which closes the blackholed ones. Every relayed connection is kept in
    `exchanges`; `on_forward(exchange)` runs before each chunk of a request goes on to the coordinator (the chunk is
    already in `exchange.request`), so a fault can be timed to a request.

    Each connection carries one exchange: the proxy adds `Connection: close` to the coordinator's answer, so a
    keep-alive client opens a new connection for its next request and every request is seen in `exchanges`.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.exchanges: list[Exchange] = []
        self.on_forward: Callable[[Exchange], None] | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._blackholed: list[socket.socket] = []
        self._cut_mode: str | None = None
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()

    def cut(self, mode: str = "blackhole") -> None:
        """Break the link: close every open connection; new ones are refused ("refuse") or hang ("blackhole")."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"mode must be 'refuse' or 'blackhole', not {mode!r}")
        with self._lock:
            self._cut_mode = mode
            cut_off, self._open = self._open, set()
        for sock in cut_off:
            _reset(sock)

    def restore(self) -> None:
        """Mend the link: new connections are relayed again; blackholed ones are reset."""
        with self._lock:
            self._cut_mode = None
            held, self._blackholed = self._blackholed, []
        for sock in held:
            _reset(sock)

    def close(self) -> None:
        self.cut("refuse")
        self.restore()
        self._listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._cut_mode
                if mode == "blackhole":
                    self._blackholed.append(client)
            if mode == "refuse":
                _reset(client)
            elif mode is None:
                threading.Thread(target=self._relay, args=(client,), name=f"relay-{self.port}", daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)  # the coordinator is down: the client sees its connection dropped
            return
        exchange = Exchange()
        with self._lock:
            if self._cut_mode is not None:
                cut_meanwhile = True
            else:
                cut_meanwhile = False
                self._open.update((client, upstream))
                self.exchanges.append(exchange)
        if cut_meanwhile:
            _reset(client)
            _reset(upstream)
            return
        answer = threading.Thread(target=self._pump, args=(upstream, client, exchange.response, None, True),
                                  daemon=True)
        answer.start()
        self._pump(client, upstream, exchange.request, exchange)
        answer.join()
        with self._lock:
            self._open.discard(client)
            self._open.discard(upstream)
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, dest: socket.socket, record: bytearray,
              exchange: Exchange | None, answer: bool = False) -> None:
        try:
            while True:
                # Small reads, so a request's body passes in several chunks a fault can fall between.
                chunk = source.recv(16384)
                if not chunk:
                    break
                if answer and not record and chunk.startswith(b"HTTP/1.") and b"\r\n" in chunk:
                    status_line, rest = chunk.split(b"\r\n", 1)
                    dest.sendall(status_line + b"\r\nConnection: close\r\n")
                    record += chunk[:Exchange.KEPT]
                    dest.sendall(rest)
                    continue
                if len(record) < Exchange.KEPT:
                    record += chunk[:Exchange.KEPT - len(record)]
                if exchange is not None and self.on_forward is not None:
                    self.on_forward(exchange)
                dest.sendall(chunk)
                if exchange is not None:
                    exchange.forwarded += len(chunk)
            # The sender is done: pass its end of stream on, as TCP would.
            dest.shutdown(socket.SHUT_WR)
        except OSError:
            # One side broke: break the other too, and wake the pump that reads it.
            for sock in (source, dest):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _reset(sock: socket.socket) -> None:
    """Drop a connection at once with a TCP reset, as a failed link or a dead host would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
