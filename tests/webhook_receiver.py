"""A webhook receiver for tests (a small http.server on a loopback port) and a worker speaking the worker API
without Blender, to finish a task's frames at once."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
import urllib.parse

from harness import Farm, free_port

# The coordinator's RENDERQ_NOTIFY_SECRET in the tests that check signatures.
SECRET = "a-webhook-secret-for-tests-0123456789"
PNG = b"\x89PNG\r\n\x1a\n a rendered frame"


class Receiver:
    """A webhook receiver on a loopback port: records every request; answers `status` (200 unless told)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict] = []
        self.status = 200
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "answered": receiver.status})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                return

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, task_id: int, path: str | None = None, answered: int | None = 200) -> list[dict]:
        """The requests about `task_id` (to `path`), answered `answered` (None: any), each with its body parsed."""
        found = []
        for request in list(self.requests):
            body = json.loads(request["body"])
            if body["task_id"] == task_id and (path is None or request["path"] == path) \
                    and (answered is None or request["answered"] == answered):
                found.append({**request, "json": body})
        return found


def verifies(request: dict, secret: str = SECRET) -> bool:
    """The receiver's check, as the README shows it: HMAC-SHA256 of the timestamp, '.', and the exact body."""
    timestamp = request["headers"]["X-RenderQ-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + request["body"],
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request["headers"]["X-RenderQ-Signature"])


class ApiWorker:
    """A worker speaking the worker API over HTTP, as worker/agent.py does (without Blender)."""

    def __init__(self, farm: Farm, name: str) -> None:
        self.api = farm.api
        self.worker_id = self.api.post("/register_worker", {"name": name, "host": "h", "blender_version": "3.4.1",
                                                            "cpu_count": 1})["worker_id"]

    def finish(self, task_id: int, status: str = "done") -> None:
        """Claim the task's next frame and report it done (with its file) or failed."""
        lease = self.api.get(f"/get_task?worker_id={self.worker_id}&prefer_task_id={task_id}")["frame"]
        assert lease is not None and lease["task_id"] == task_id, lease
        report = {"worker_id": self.worker_id, "task_id": task_id, "frame": lease["frame"],
                  "lease_id": lease["lease_id"], "status": status}
        if status == "done":
            query = urllib.parse.urlencode({key: report[key] for key in ("worker_id", "task_id", "frame", "lease_id")})
            status_code, answer = self.api.call("POST", f"/upload_frame?{query}&filename=f_{lease['frame']:04d}.png",
                                                raw=PNG)
            assert status_code == 200, answer
            report["render_seconds"] = 1.0
        else:
            report["error"] = "broken on purpose"
        self.api.post("/update_task", report)


class Trickler:
    """A receiver that never finishes answering: it sends its status line, then a header one byte at a time."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/slow"
        self.connected: list[float] = []
        self.stopped = threading.Event()

    def start(self) -> Trickler:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connected.append(time.monotonic())
            threading.Thread(target=self._trickle, args=(client,), daemon=True).start()

    def _trickle(self, client: socket.socket) -> None:
        with client:
            try:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stopped.wait(0.2):
                    client.sendall(b"x")
            except OSError:
                return
