"""The add-on never makes Blender wait for the network: against a coordinator that answers every request only
after several seconds, its network operators return at once and the answers arrive later through the job queue.

The slow coordinator is a stand-in HTTP server in this process (real HTTP on 127.0.0.1). The add-on runs in
Blender 3.4 in background mode and in the bpy 5 module, each where available.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from addon_ui_scripts.addon_testing import (
    blender_env, bpy_python_or_none, build_addon_zip, run_blender_side, script,
)
from harness import find_blender_or_none

BLENDER = find_blender_or_none()
BPY_PYTHON = bpy_python_or_none()
# Longer than the add-on's 5 s connection-test timeout, so that the test's outcome is certain (no answer in time)
# rather than a race between the answer and the timeout; the other calls wait up to 30 s.
DELAY = 6.0
OPERATOR_LIMIT = 1.0
BUSY = "the stand-in coordinator takes no tasks"


class SlowCoordinator(ThreadingHTTPServer):
    """Answers like a coordinator with one worker and no tasks, each answer only after `delay` seconds; refuses
    everything else (uploads, submissions) with 503, also late."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stopped waiting (the connection test's own timeout) closed its end: expected, not news.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _SlowHandler(BaseHTTPRequestHandler):
    server: SlowCoordinator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _read_body(self) -> None:
        # Read what the client sends first, so that it does not see a broken pipe instead of the answer.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        arrived = time.monotonic()
        self._read_body()
        time.sleep(self.server.delay)
        path = self.path.split("?", 1)[0]
        if self.command == "GET" and path == "/health":
            status, body = 200, {"ok": True, "version": "0.1.0", "time": time.time()}
        elif self.command == "GET" and path == "/list_workers":
            status, body = 200, {"workers": [_worker("slow-node")]}
        elif self.command == "GET" and path == "/tasks":
            status, body = 200, {"tasks": []}
        else:
            status, body = 503, {"error": BUSY}
        payload = json.dumps(body).encode()
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": path, "arrived": arrived,
                                         "answered": time.monotonic()})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer


def _worker(name: str) -> dict[str, Any]:
    now = time.time()
    return {"worker_id": 1, "name": name, "host": name, "blender_version": "3.4.1", "cpu_count": 2, "enabled": True,
            "alive": True, "last_seen": now, "registered_at": now - 60, "current": [], "frames_done": 0,
            "frames_failed": 0, "mean_frame_seconds": None}


@pytest.fixture
def slow_coordinator() -> Iterator[SlowCoordinator]:
    server = SlowCoordinator(DELAY)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_addon_zip(str(tmp_path_factory.mktemp("addon")))


def _command(flavour: str) -> list[str]:
    if flavour == "blender34":
        if BLENDER is None:
            pytest.skip("Blender is not installed (scripts/test.sh installs it)")
        return [BLENDER, "-b", "--factory-startup", "--python", script("responsive.py")]
    if BPY_PYTHON is None:
        pytest.skip("no Python with the bpy 5 module (scripts/test.sh makes .venv-bpy; or set RENDERQ_BPY_PYTHON)")
    return [BPY_PYTHON, script("responsive.py")]


@pytest.mark.parametrize("flavour", ["blender34", "bpy5"])
def test_network_operators_return_at_once(flavour: str, tmp_path, addon_zip: str,
                                          slow_coordinator: SlowCoordinator) -> None:
    command = _command(flavour) + ["--", "--zip", addon_zip, "--url", slow_coordinator.url,
                                   "--blend", str(tmp_path / "project" / "scene.blend")]
    result, output = run_blender_side(command, blender_env(str(tmp_path / "home")), f"the {flavour} run",
                                      timeout=180, log_path=str(tmp_path / f"{flavour}.log"))

    calls = {call["operator"]: call for call in result["calls"]}
    assert list(calls) == ["submit", "test_connection", "refresh_workers"]
    for name, call in calls.items():
        assert call["error"] is None and call["result"] == ["FINISHED"], call
        assert call["seconds"] < OPERATOR_LIMIT, f"renderq.{name} blocked Blender for {call['seconds']:.2f} s"
        assert call["jobs_running"], f"renderq.{name} returned after its job had already ended: {call}"
    # The three jobs run side by side, all waiting for the slow answers when the last operator returned.
    assert len(result["running_keys"]) == 3, result["running_keys"]

    # Every connection came from a job's thread; none from Blender's main thread.
    assert result["connects"], "the add-on never connected to the coordinator"
    assert not [c for c in result["connects"] if c["main"]], result["connects"]
    # The operators all returned before the stand-in sent its first answer (one clock: CLOCK_MONOTONIC).
    with slow_coordinator.lock:
        requests = list(slow_coordinator.requests)
    paths = {(r["method"], r["path"]) for r in requests}
    assert ("GET", "/list_workers") in paths and ("GET", "/health") in paths, paths
    assert any(method == "POST" for method, _ in paths), paths
    last_return = max(call["returned_at"] for call in calls.values())
    assert last_return < min(r["answered"] for r in requests)

    assert "Traceback" not in output, output[-3000:]

    # After draining, each outcome was reported: the worker list, the connection test's verdict, the refusal.
    assert result["finished"] is True, result
    assert result["workers"] == ["slow-node"], result
    connection = result["connection"]
    assert connection["running"] is False and connection["text"], connection
    if connection["ok"]:
        assert "Connected" in connection["text"], connection
    else:
        assert "no answer within" in connection["text"], connection
    assert result["last_task_id"] is None
    assert result["last_error"] and BUSY.lower() in result["last_error"].lower(), (result["last_error"],
                                                                                   output[-3000:])
