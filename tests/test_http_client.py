"""The HTTP client against a tiny standard-library server on 127.0.0.1: real HTTP, no coordinator."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest
from harness import free_port

from renderq.http_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnreachable,
    Unavailable,
)
from renderq.paths import is_safe_file_name

FILE_BYTES = b"BLENDER-v304" + bytes(range(256)) * 1000
FILE_SHA = hashlib.sha256(FILE_BYTES).hexdigest()

Route = Callable[[BaseHTTPRequestHandler, dict, bytes], None]


def send_json(handler: BaseHTTPRequestHandler, status: int, answer: dict) -> None:
    body = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def send_bytes(handler: BaseHTTPRequestHandler, data: bytes, disposition: str | None = None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(data)))
    if disposition:
        handler.send_header("Content-Disposition", disposition)
    handler.end_headers()
    handler.wfile.write(data)


class StubServer:
    """Serves `routes[(method, path)]`; records every request as (method, path, query, body)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[tuple[str, str, dict, bytes]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def handle_any(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append((self.command, parts.path, query, body))
                route = stub.routes.get((self.command, parts.path))
                if route is None:
                    send_json(self, 404, {"error": f"no such path {parts.path}"})
                else:
                    route(self, query, body)

            do_GET = handle_any
            do_POST = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def test_json_call_sends_body_and_returns_answer(stub: StubServer) -> None:
    stub.routes[("POST", "/register_worker")] = lambda h, q, b: send_json(h, 200, {"worker_id": 3, **json.loads(b)})
    answer = CoordinatorClient(stub.url).register_worker("node-01", "node-01.lan", "3.4.1", 8)
    assert answer["worker_id"] == 3
    assert answer["cpu_count"] == 8
    assert stub.requests[0][:2] == ("POST", "/register_worker")


def test_query_parameters_skip_none(stub: StubServer) -> None:
    stub.routes[("GET", "/get_task")] = lambda h, q, b: send_json(h, 200, {"frame": None, "wait_reason": "idle"})
    client = CoordinatorClient(stub.url + "/")
    # claim_frame now POSTs /frames/claim: the seed's query-string route shows the rule for parameters.
    assert client.request("GET", "/get_task", params={"worker_id": 3, "prefer_task_id": None}) == {
        "frame": None, "wait_reason": "idle"}
    client.request("GET", "/get_task", params={"worker_id": 3, "prefer_task_id": 7})
    assert stub.requests[0][2] == {"worker_id": "3"}
    assert stub.requests[1][2] == {"worker_id": "3", "prefer_task_id": "7"}


def test_error_sentence_surfaces_with_status(stub: StubServer) -> None:
    stub.routes[("POST", "/update_task")] = lambda h, q, b: send_json(
        h, 409, {"error": "frame 12 of task 7 is no longer held by this lease"}
    )
    with pytest.raises(CoordinatorError) as caught:
        CoordinatorClient(stub.url).update_frame(3, 7, 12, "abc", "done", render_seconds=1.5, error=None)
    assert caught.value.status == 409
    assert caught.value.message == "frame 12 of task 7 is no longer held by this lease"
    assert str(caught.value) == caught.value.message
    assert not isinstance(caught.value, CoordinatorUnreachable)
    sent = json.loads(stub.requests[0][3])
    assert sent["render_seconds"] == 1.5 and "error" not in sent


def test_error_without_json_body_still_says_what_happened(stub: StubServer) -> None:
    def html_error(handler: BaseHTTPRequestHandler, query: dict, body: bytes) -> None:
        handler.send_response(502)
        handler.send_header("Content-Length", "6")
        handler.end_headers()
        handler.wfile.write(b"<html>")

    stub.routes[("GET", "/health")] = html_error
    with pytest.raises(CoordinatorError) as caught:
        CoordinatorClient(stub.url).health()
    assert caught.value.status == 502
    assert "502" in caught.value.message


def test_unreachable_coordinator() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CoordinatorUnreachable) as caught:
        CoordinatorClient(url, timeout=5).list_tasks()
    assert caught.value.status == 0
    assert caught.value.message.startswith(f"cannot reach the coordinator at {url} (")


def test_connection_reset_while_connecting_is_unreachable(monkeypatch) -> None:
    """A reset while the connection is being made (a dropped network) leaves no socket: unreachable, not a crash."""
    import http.client

    class ResetWhileConnecting(http.client.HTTPConnection):
        def connect(self) -> None:
            raise ConnectionResetError(104, "Connection reset by peer")

    client = CoordinatorClient("http://127.0.0.1:9", timeout=2)
    monkeypatch.setattr(client, "_connection", lambda address: ResetWhileConnecting("127.0.0.1", 9))
    with pytest.raises(CoordinatorUnreachable) as caught:
        client.health()
    assert "connection was cut" in caught.value.message


def test_upload_streams_with_content_length_and_progress(stub: StubServer, tmp_path) -> None:
    def store(handler: BaseHTTPRequestHandler, query: dict, body: bytes) -> None:
        assert handler.headers["Content-Length"] == str(len(FILE_BYTES))
        digest = hashlib.sha256(body).hexdigest()
        send_json(handler, 200, {"sha256": digest, "size": len(body), "filename": query["filename"]})

    stub.routes[("POST", "/upload_blend")] = store
    path = tmp_path / "scene.blend"
    path.write_bytes(FILE_BYTES)
    seen: list[tuple[int, int]] = []
    answer = CoordinatorClient(stub.url).upload_blend(str(path), progress=lambda *sent_total: seen.append(sent_total))
    assert answer == {"sha256": FILE_SHA, "size": len(FILE_BYTES), "filename": "scene.blend"}
    assert seen[0] == (0, len(FILE_BYTES))
    assert seen[-1] == (len(FILE_BYTES), len(FILE_BYTES))


def test_download_file_verifies_hash(stub: StubServer, tmp_path) -> None:
    stub.routes[("GET", "/download_file")] = lambda h, q, b: send_bytes(h, FILE_BYTES)
    client = CoordinatorClient(stub.url)
    good = tmp_path / "good.blend"
    client.download_file(FILE_SHA, str(good))
    assert good.read_bytes() == FILE_BYTES

    bad = tmp_path / "bad.blend"
    with pytest.raises(CoordinatorError) as caught:
        client.download_file("0" * 64, str(bad))
    assert "SHA-256" in caught.value.message
    assert sorted(os.listdir(tmp_path)) == ["good.blend"]


def test_download_file_missing_is_an_error(stub: StubServer, tmp_path) -> None:
    stub.routes[("GET", "/download_file")] = lambda h, q, b: send_json(h, 404, {"error": "no file with that SHA-256"})
    with pytest.raises(CoordinatorError) as caught:
        CoordinatorClient(stub.url).download_file(FILE_SHA, str(tmp_path / "x.blend"))
    assert caught.value.status == 404
    assert os.listdir(tmp_path) == []


def test_download_frame_uses_blender_name(stub: StubServer, tmp_path) -> None:
    stub.routes[("GET", "/download_frame")] = lambda h, q, b: send_bytes(h, b"png", 'attachment; filename="f_0012.png"')
    digest = hashlib.sha256(b"png").hexdigest()
    path = CoordinatorClient(stub.url).download_frame(7, 12, str(tmp_path / "out"), expected_sha256=digest)
    assert path == str(tmp_path / "out" / "f_0012.png")
    assert os.listdir(tmp_path / "out") == ["f_0012.png"]


@pytest.mark.parametrize(
    "disposition",
    [
        'attachment; filename="../evil.png"',
        'attachment; filename="/etc/evil"',
        'attachment; filename="..\\\\evil.png"',
        "attachment; filename*=UTF-8''%2E%2E%2Fevil.png",
        "attachment; filename*=UTF-8''evil%00.png",
        "attachment",
    ],
)
def test_download_frame_refuses_hostile_names(stub: StubServer, tmp_path, disposition: str) -> None:
    stub.routes[("GET", "/download_frame")] = lambda h, q, b: send_bytes(h, b"png", disposition)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CoordinatorError):
        CoordinatorClient(stub.url).download_frame(7, 12, str(dest))
    assert os.listdir(dest) == []
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_download_frame_hash_mismatch_leaves_nothing(stub: StubServer, tmp_path) -> None:
    stub.routes[("GET", "/download_frame")] = lambda h, q, b: send_bytes(h, b"png", 'attachment; filename="f_0001.png"')
    with pytest.raises(CoordinatorError):
        CoordinatorClient(stub.url).download_frame(7, 1, str(tmp_path), expected_sha256="0" * 64)
    assert os.listdir(tmp_path) == []


def test_safe_file_name() -> None:
    assert is_safe_file_name("f_0001.png") and is_safe_file_name("x..y")
    for name in ("", ".", "..", "a/b", "a\\b", "a\x00b", None, "CON", "nul.png", "a.png:ads", "trailing. "):
        assert not is_safe_file_name(name)


def test_set_worker_enabled_needs_one_name() -> None:
    client = CoordinatorClient("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        client.set_worker_enabled(True)
    with pytest.raises(ValueError):
        client.set_worker_enabled(True, worker_id=1, name="a")


def test_token_goes_with_every_request_when_given() -> None:
    seen: list[str | None] = []

    def answer(handler, query, body) -> None:
        seen.append(handler.headers.get("Authorization"))
        send_json(handler, 200, {"task_id": 7, "status": "paused", "priority": 3})

    with StubServer() as stub:
        for path in ("/pause_task", "/resume_task", "/retry_failed_frames", "/set_task_priority", "/tasks"):
            stub.routes[("POST" if path != "/tasks" else "GET", path)] = answer
        client = CoordinatorClient(stub.url, token=" the-admin-token ")
        client.pause_task(7)
        client.resume_task(7)
        client.retry_failed_frames(7)
        assert client.set_task_priority(7, 3)["priority"] == 3
        client.list_tasks()
        CoordinatorClient(stub.url).list_tasks()
        bodies = {request[1]: json.loads(request[3]) for request in stub.requests if request[3]}
    assert seen == ["Bearer the-admin-token"] * 5 + [None]
    assert bodies["/set_task_priority"] == {"task_id": 7, "priority": 3}
    assert bodies["/pause_task"] == {"task_id": 7}


def test_a_keep_alive_connection_closed_as_the_request_arrives_is_replaced_once() -> None:
    """The coordinator closes an idle connection just as the next request goes out: it never saw that request, so
    the client sends it again on a new connection (and only then)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[int] = []
    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'

    def read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def serve() -> None:
        first, _ = listener.accept()
        accepted.append(1)
        read_request(first)
        first.sendall(answer)
        read_request(first)  # the second request arrives ... and the connection is closed unanswered
        first.close()
        second, _ = listener.accept()
        accepted.append(2)
        read_request(second)
        second.sendall(answer)
        second.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = CoordinatorClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
    assert client.health() == {"ok": True}
    assert client.health() == {"ok": True}
    server.join(5)
    listener.close()
    assert accepted == [1, 2]


def test_each_refusal_status_has_its_error_type_and_keeps_the_status() -> None:
    from renderq.http_client import (Conflict, DiskFull, Forbidden, Invalid, LeaseLost, NotFound, TooLarge,
                                     Unauthorized, Unavailable, error_for)

    expected = {400: Invalid, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: TooLarge,
                415: Invalid, 500: Unavailable, 503: Unavailable, 507: DiskFull}
    for status, kind in expected.items():
        error = error_for(status, "a sentence")
        assert type(error) is kind and error.status == status and str(error) == "a sentence"
    assert type(error_for(409, "lost", lease_fenced=True)) is LeaseLost
    assert isinstance(error_for(409, "lost", lease_fenced=True), Conflict)
    assert type(error_for(418, "odd")) is CoordinatorError


def test_a_list_of_coordinators_moves_on_from_one_that_does_not_answer(stub: StubServer) -> None:
    with StubServer() as second:
        for server, name in ((stub, "first"), (second, "second")):
            server.routes[("GET", "/health")] = lambda h, q, b, name=name: send_json(h, 200, {"ok": True, "by": name})
        dead = f"http://127.0.0.1:{free_port()}"
        client = CoordinatorClient(f"{dead}, {stub.url}/,{second.url}", timeout=5)
        assert [a.url for a in client.addresses.all] == [dead, stub.url, second.url]
        assert client.health()["by"] == "first" and client.base_url == stub.url
        assert client.health()["by"] == "first"  # it stays with the one that answered
        # A coordinator that answers 503 (its database is away, say) is passed over too, for the next one.
        stub.routes[("GET", "/health")] = lambda h, q, b: send_json(h, 503, {"error": "the database is down"})
        assert client.health()["by"] == "second" and client.base_url == second.url
        # When none answers, the last refusal is the error.
        second.routes[("GET", "/health")] = lambda h, q, b: send_json(h, 503, {"error": "the database is down"})
        with pytest.raises(Unavailable, match="the database is down"):
            client.health()


def test_a_bad_address_in_the_list_is_named() -> None:
    with pytest.raises(ValueError, match="'ftp://farm' is not an http"):
        CoordinatorClient("http://farm-a:5000,ftp://farm")
    with pytest.raises(ValueError, match="no coordinator address"):
        CoordinatorClient(" , ")


def test_the_client_imports_in_a_process_without_ssl() -> None:
    """The simulated workers of the benchmarks leave ssl out to save memory: the client must not need it to load."""
    import subprocess
    import sys

    from harness import ROOT

    code = "import sys; sys.modules['ssl'] = None; import renderq.http_client; print('loaded')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr
