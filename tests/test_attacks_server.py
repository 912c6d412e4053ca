"""Attacks on the coordinator's HTTP server that need no token (issue 12), each performed with raw sockets against
a real coordinator process: idle and trickling connections, huge unauthenticated bodies, slow bodies, oversized
and chunked bodies, uploads past the disk reserve.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from coordinator.config import Config
from harness import ROOT, Api, Farm

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
# The guarded farm's short limits, so each attack is cut within seconds.
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
IDLE_TIMEOUT = 2.0
UPLOAD_LIMIT = 8 * MIB
# Scheduling on a busy test machine: how late an answer or a cut may come.
MARGIN = 2.5


def start_farm(root: str, *flags: str, env: dict[str, str] | None = None) -> Farm:
    """A coordinator of our own, started with extra flags and environment variables."""
    farm = Farm(root)
    os.makedirs(root, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        farm.start_coordinator(*flags)
    return farm


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A coordinator with short timeouts, an 8 MiB upload limit, one transfer thread, and a temp dir we watch."""
    root = str(tmp_path_factory.mktemp("guarded"))
    temp_dir = os.path.join(root, "tmp")
    os.makedirs(temp_dir)
    farm = start_farm(os.path.join(root, "farm"), "--upload-limit", "8M", "--transfer-threads", "1",
                      env={"TMPDIR": temp_dir, "RENDERQ_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                           "RENDERQ_BODY_TIMEOUT": str(BODY_TIMEOUT),
                           "RENDERQ_TRANSFER_IDLE_TIMEOUT": str(IDLE_TIMEOUT)})
    farm.temp_dir = temp_dir  # type: ignore[attr-defined]  # the TMPDIR the tests check stays empty
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A coordinator with the default timeouts and at most 400 connections."""
    farm = start_farm(str(tmp_path_factory.mktemp("roomy")), "--max-connections", "400")
    yield farm
    farm.stop()


# -- raw HTTP ------------------------------------------------------------------------------------------------------

def connect(farm: Farm, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", farm.port))
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def bearer(farm: Farm, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {farm.token(role)}"}


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP answer with a Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed before a whole answer arrived: {data!r}")
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def error_of(body: bytes) -> str:
    answer = json.loads(body)
    assert isinstance(answer.get("error"), str) and answer["error"], answer
    return answer["error"]


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes the connection (reads return nothing or fail), None if it stays open."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names)


def timed_call(api: Api, method: str, path: str, body: dict | None = None) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = api.call(method, path, body, timeout=10)
    return status, time.monotonic() - started


def register_worker(farm: Farm, name: str) -> tuple[Api, int]:
    worker = Api(farm.url, farm.token("worker"))
    return worker, worker.post("/register_worker", {"name": name})["worker_id"]


# -- idle and trickling connections ---------------------------------------------------------------------------------

def test_300_idle_connections_leave_health_and_heartbeats_answering(roomy):
    worker, worker_id = register_worker(roomy, "busy-node")
    idle = [connect(roomy) for _ in range(300)]
    try:
        # Half of them also start a request and stop half-way, as a slowloris does.
        for sock in idle[::2]:
            sock.sendall(b"POST /update_worker HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            status, seconds = timed_call(roomy.api, "GET", "/health")
            assert status == 200 and seconds < 1.0, (status, seconds)
            status, seconds = timed_call(worker, "POST", "/update_worker", {"worker_id": worker_id, "leases": []})
            assert status == 200 and seconds < 1.0, (status, seconds)
        assert all(still_open(sock) for sock in idle), "the idle connections were meant to be held during the checks"
    finally:
        for sock in idle:
            sock.close()


def test_connections_past_the_limit_get_503_and_the_others_still_work(roomy):
    held = []
    try:
        while len(held) < 400:
            held.append(connect(roomy))
        extra = connect(roomy)
        status, headers, body = read_answer(extra)
        assert status == 503 and "too many open connections" in error_of(body)
        assert closed_within(extra, 5) is not None
        extra.close()
    finally:
        for sock in held:
            sock.close()
    assert roomy.api.call("GET", "/health", timeout=10)[0] == 200


def test_trickled_header_is_cut_after_the_header_timeout(guarded):
    sock = connect(guarded)
    started = time.monotonic()
    request = head("GET", "/health", {"X-Padding": "a" * 40})
    cut_after = None
    for byte in request[:-1]:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            cut_after = time.monotonic() - started
            break
        if closed_within(sock, 0.5) is not None:
            cut_after = time.monotonic() - started
            break
    sock.close()
    assert cut_after is not None, "the server read a trickled header for ever"
    assert HEADER_TIMEOUT - 0.2 < cut_after < HEADER_TIMEOUT + MARGIN, cut_after


def test_a_connection_that_sends_nothing_is_cut_after_the_header_timeout(guarded):
    sock = connect(guarded)
    cut_after = closed_within(sock, HEADER_TIMEOUT + MARGIN)
    sock.close()
    assert cut_after is not None and cut_after > HEADER_TIMEOUT - 0.2, cut_after


def test_an_oversized_head_gets_431(guarded):
    sock = connect(guarded)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: " + b"j" * (100 * 1024))
        status, _, body = read_answer(sock)
        assert status == 431 and "headers are larger" in error_of(body)
    finally:
        sock.close()


# -- bodies ----------------------------------------------------------------------------------------------------------

def test_a_gigabyte_without_a_token_is_refused_before_it_is_read(guarded):
    temp_before = tree_size(guarded.temp_dir)
    data_before = tree_size(guarded.data_dir)
    sock = connect(guarded)
    try:
        sock.sendall(head("POST", "/submit_task", {"Content-Type": "application/json", "Content-Length": str(10**9)}))
        sock.sendall(b"{" + b" " * 4095)
        status, headers, body = read_answer(sock, timeout=5)
        assert status == 401 and "artist token" in error_of(body)
        assert headers.get("connection") == "close"
        assert closed_within(sock, 5) is not None, "the connection stayed open for the rest of the gigabyte"
    finally:
        sock.close()
    assert tree_size(guarded.temp_dir) == temp_before == 0
    assert tree_size(guarded.data_dir) - data_before < 64 * 1024


def test_a_wrong_token_or_role_is_refused_before_the_body_is_read(guarded):
    for headers, expected in (({"Authorization": "Bearer not-a-token-0123456789"}, 401),
                              (bearer(guarded, "worker"), 403)):
        sock = connect(guarded)
        try:
            sock.sendall(head("POST", "/upload_blend", {**headers, "Content-Length": str(2 * UPLOAD_LIMIT)}))
            status, answer_headers, body = read_answer(sock, timeout=5)
            assert status == expected, (status, body)
            error_of(body)
            assert closed_within(sock, 5) is not None
        finally:
            sock.close()


def test_a_100_mb_json_body_gets_413_before_it_is_sent(guarded):
    sock = connect(guarded)
    try:
        sock.sendall(head("POST", "/submit_task", {**bearer(guarded, "artist"), "Content-Type": "application/json",
                                                   "Content-Length": str(100 * MIB)}))
        status, headers, body = read_answer(sock, timeout=5)
        assert status == 413 and "larger than 4194304 bytes" in error_of(body)
        assert headers.get("connection") == "close"
    finally:
        sock.close()


def test_a_chunked_body_past_the_limit_is_cut_with_413(guarded):
    sock = connect(guarded)
    try:
        sock.sendall(head("POST", "/submit_task", {**bearer(guarded, "artist"), "Content-Type": "application/json",
                                                   "Transfer-Encoding": "chunked"}))
        piece = 64 * 1024
        for _ in range(4 * MIB // piece + 1):
            sock.sendall(b"%x\r\n" % piece + b" " * piece + b"\r\n")
        status, _, body = read_answer(sock, timeout=10)
        assert status == 413 and "larger than" in error_of(body)
    finally:
        sock.close()


def test_a_small_chunked_body_still_works(guarded):
    payload = json.dumps({"name": "chunked-node"}).encode()
    sock = connect(guarded)
    try:
        sock.sendall(head("POST", "/register_worker", {**bearer(guarded, "worker"), "Content-Type": "application/json",
                                                       "Transfer-Encoding": "chunked"}))
        sock.sendall(b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n")
        status, _, body = read_answer(sock)
        assert status == 200 and json.loads(body)["name"] == "chunked-node"
    finally:
        sock.close()


def test_a_trickled_small_body_is_cut_after_the_body_timeout(guarded):
    sock = connect(guarded)
    started = time.monotonic()
    try:
        sock.sendall(head("POST", "/update_worker", {**bearer(guarded, "worker"), "Content-Type": "application/json",
                                                     "Content-Length": "200"}))
        answer: list = []
        reader = threading.Thread(target=lambda: answer.append(read_answer(sock, timeout=BODY_TIMEOUT + MARGIN)))
        reader.start()
        for _ in range(40):
            if answer or not reader.is_alive():
                break
            try:
                sock.sendall(b" ")
            except OSError:
                break
            time.sleep(0.25)
        reader.join()
        took = time.monotonic() - started
        assert answer, "no answer to a body trickled past the body timeout"
        status, headers, body = answer[0]
        assert status == 408 and "did not arrive within" in error_of(body)
        assert BODY_TIMEOUT - 0.2 < took < BODY_TIMEOUT + MARGIN, took
        assert headers.get("connection") == "close"
    finally:
        sock.close()


# -- uploads ---------------------------------------------------------------------------------------------------------

def upload_head(farm: Farm, content: bytes, length: int | None = None) -> bytes:
    sha256 = hashlib.sha256(content).hexdigest()
    return head("POST", f"/upload_file?sha256={sha256}", {**bearer(farm, "artist"),
                                                          "Content-Length": str(len(content) if length is None
                                                                                else length)})


def blob_path(farm: Farm, content: bytes) -> str:
    sha256 = hashlib.sha256(content).hexdigest()
    return os.path.join(farm.data_dir, "files", sha256[:2], sha256)


def test_an_upload_over_the_limit_gets_413_before_it_is_read_and_a_normal_one_is_stored(guarded):
    sock = connect(guarded)
    try:
        sock.sendall(upload_head(guarded, b"x", length=UPLOAD_LIMIT + 1))
        status, headers, body = read_answer(sock, timeout=5)
        assert status == 413 and "upload limit" in error_of(body)
        assert headers.get("connection") == "close"
    finally:
        sock.close()
    content = os.urandom(3 * MIB)
    sock = connect(guarded)
    try:
        sock.sendall(upload_head(guarded, content) + content)
        status, _, body = read_answer(sock)
        assert status == 200, body
    finally:
        sock.close()
    with open(blob_path(guarded, content), "rb") as stored:
        assert stored.read() == content
    assert tree_size(guarded.temp_dir) == 0


def test_a_client_that_sends_its_whole_body_before_reading_still_gets_the_refusal(guarded):
    # urllib, like most clients, reads nothing until it has sent the whole body: the coordinator drains a few MB.
    status, answer = Api(guarded.url, guarded.token("artist")).call(
        "POST", "/upload_blend?filename=big.blend", raw=b"BLENDER" + bytes(UPLOAD_LIMIT + MIB))
    assert status == 413 and "upload limit" in answer["error"]
    status, answer = Api(guarded.url).call("POST", "/submit_task", raw=bytes(2 * MIB), token="")
    assert status == 401 and "artist token" in answer["error"]


def test_a_chunked_upload_past_the_limit_is_cut_with_413(guarded):
    sock = connect(guarded)
    try:
        sock.sendall(head("POST", "/upload_blend?filename=big.blend", {**bearer(guarded, "artist"),
                                                                     "Transfer-Encoding": "chunked"}))
        piece = 256 * 1024
        for index in range(UPLOAD_LIMIT // piece + 1):
            data = (b"BLENDER" if index == 0 else b"") + b"\0" * (piece - (7 if index == 0 else 0))
            sock.sendall(b"%x\r\n" % piece + data + b"\r\n")
        status, _, body = read_answer(sock, timeout=10)
        assert status == 413 and "upload limit" in error_of(body)
    finally:
        sock.close()
    assert os.listdir(os.path.join(guarded.data_dir, "files", "incoming")) == []


def test_a_slow_but_moving_upload_is_stored_and_a_stalled_one_is_cut(guarded):
    content = os.urandom(40 * 1024)
    sock = connect(guarded)
    try:
        sock.sendall(upload_head(guarded, content))
        # Past the body timeout and several idle timeouts in all, but never idle for a whole one.
        for start in range(0, len(content), 8 * 1024):
            sock.sendall(content[start:start + 8 * 1024])
            time.sleep(IDLE_TIMEOUT / 2)
        status, _, body = read_answer(sock)
        assert status == 200, body
    finally:
        sock.close()
    assert os.path.exists(blob_path(guarded, content))

    stalled = os.urandom(40 * 1024)
    sock = connect(guarded)
    try:
        sock.sendall(upload_head(guarded, stalled) + stalled[:1024])
        status, _, body = read_answer(sock, timeout=IDLE_TIMEOUT + MARGIN + 2)
        assert status == 408 and "stalled" in error_of(body)
        assert closed_within(sock, 5) is not None
    finally:
        sock.close()
    assert not os.path.exists(blob_path(guarded, stalled))
    assert os.listdir(os.path.join(guarded.data_dir, "files", "incoming")) == []


def test_a_download_nobody_reads_is_cut_and_frees_its_thread(guarded):
    content = os.urandom(UPLOAD_LIMIT - 1024)
    status, _ = Api(guarded.url, guarded.token("artist")).call(
        "POST", f"/upload_file?sha256={hashlib.sha256(content).hexdigest()}", raw=content)
    assert status == 200
    download = head("GET", f"/download_file?sha256={hashlib.sha256(content).hexdigest()}",
                    bearer(guarded, "worker"))
    # The only transfer thread sends this download to a client that reads nothing.
    stuck = connect(guarded, receive_buffer=4096)
    stuck.sendall(download)
    try:
        worker, worker_id = register_worker(guarded, "waiting-node")
        status, seconds = timed_call(worker, "POST", "/update_worker", {"worker_id": worker_id, "leases": []})
        assert status == 200 and seconds < 1.0, "a stuck download held up a heartbeat"
        started = time.monotonic()
        reader = connect(guarded)
        reader.sendall(download)
        status, _, body = read_answer(reader, timeout=IDLE_TIMEOUT + MARGIN + 5)
        reader.close()
        assert status == 200 and body == content
        assert time.monotonic() - started < IDLE_TIMEOUT + MARGIN + 5
    finally:
        stuck.close()


@pytest.fixture(scope="module")
def nearly_full(tmp_path_factory):
    """A coordinator whose disk reserve leaves 2 GiB of the data dir's free space to uploads."""
    root = str(tmp_path_factory.mktemp("nearly-full"))
    free = shutil.disk_usage(root).free
    if free < 8 * 1024 * MIB:
        pytest.skip("needs 8 GiB free on the test disk to set a reserve just below it")
    farm = start_farm(root, "--disk-reserve", str(free - 2 * 1024 * MIB))
    yield farm
    farm.stop()


def test_an_upload_past_the_free_space_less_the_reserve_gets_507_before_it_is_read(nearly_full):
    for length in (3 * 1024 * MIB,):
        sock = connect(nearly_full)
        try:
            sock.sendall(upload_head(nearly_full, b"x", length=length))
            status, headers, body = read_answer(sock, timeout=5)
            assert status == 507 and "nearly full" in error_of(body)
            assert headers.get("connection") == "close"
        finally:
            sock.close()


def test_uploads_in_progress_count_against_the_reserve(nearly_full):
    first = connect(nearly_full)
    second = connect(nearly_full)
    try:
        # 1.2 GiB fits on its own; announced by an upload already under way, a second one does not.
        first.sendall(upload_head(nearly_full, b"a", length=1229 * MIB) + b"\0" * 4096)
        time.sleep(0.5)
        assert still_open(first)
        second.sendall(upload_head(nearly_full, b"b", length=1229 * MIB))
        status, _, body = read_answer(second, timeout=5)
        assert status == 507 and "nearly full" in error_of(body)
    finally:
        first.close()
        second.close()


def test_without_auth_the_size_rules_still_hold(tmp_path):
    farm = start_farm(str(tmp_path / "open"), "--no-auth")
    try:
        sock = connect(farm)
        try:
            sock.sendall(head("POST", "/submit_task", {"Content-Type": "application/json",
                                                       "Content-Length": str(100 * MIB)}))
            status, headers, body = read_answer(sock, timeout=5)
            assert status == 413 and "larger than" in error_of(body)
        finally:
            sock.close()
    finally:
        farm.stop()


def test_http_settings_are_read_and_checked():
    config = Config.from_env({"RENDERQ_BODY_LIMIT": "8M", "RENDERQ_MAX_CONNECTIONS": "2000",
                              "RENDERQ_HEADER_TIMEOUT": "2.5"})
    assert (config.body_limit, config.max_connections, config.header_timeout) == (8 * MIB, 2000, 2.5)
    with pytest.raises(ValueError, match="longer than the worker heartbeat"):
        Config.from_env({"RENDERQ_KEEP_ALIVE_TIMEOUT": "1"})
    with pytest.raises(ValueError, match="header timeout must be more than 0"):
        Config.from_env({"RENDERQ_HEADER_TIMEOUT": "0"})


def test_requests_on_a_kept_alive_connection_answer_at_once(guarded):
    # Nagle's algorithm left on made every answer after the first wait for the client's delayed ACK (40 ms).
    sock = connect(guarded)
    try:
        took = []
        for _ in range(10):
            started = time.monotonic()
            sock.sendall(head("GET", "/health", {}))
            status, headers, _ = read_answer(sock)
            took.append(time.monotonic() - started)
            assert status == 200 and headers.get("connection") != "close"
        assert sorted(took)[5] < 0.03, took
    finally:
        sock.close()


def test_the_open_file_limit_is_raised_to_fit_the_connections():
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096 + 256:
        pytest.skip(f"the hard open-file limit ({hard}) is below what 4096 connections need")
    code = ("import resource; from coordinator.server import _fit_connections; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            "print(_fit_connections(4096), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    fitting, raised = map(int, result.stdout.split())
    assert fitting == 4096 and raised >= 4096 + 256, result.stdout
