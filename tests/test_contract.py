"""The one API contract over real HTTP against a real coordinator process: claiming is a POST, a frame is delivered
in one request fenced by its lease, the seed's routes still answer, refusals arrive as typed errors, and the client
keeps one connection alive between calls."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest
import yaml
from harness import Api, free_port

from coordinator.api.openapi import spec_bytes
from coordinator.scheduler import FRAMES_PAGE, MAX_FRAMES_PAGE, MAX_FRAMES_PER_TASK

from renderq.http_client import (
    Conflict,
    CoordinatorClient,
    CoordinatorUnreachable,
    Forbidden,
    Invalid,
    LeaseLost,
    NotFound,
    Unauthorized,
    Unavailable,
)

# Enough of a .blend for the coordinator (it checks the header); nothing renders it here.
BLEND = b"BLENDER-v304" + bytes(range(256)) * 64
PNG = b"\x89PNG\r\n\x1a\n" + b"frame-bytes" * 100


@pytest.fixture
def running(farm, tmp_path):
    """A real coordinator with one task of three frames, an artist and a registered worker client."""
    farm.start_coordinator()
    artist = CoordinatorClient(farm.url, token=farm.token("admin"))
    worker = CoordinatorClient(farm.url, token=farm.token("worker"))
    blend = tmp_path / "scene.blend"
    blend.write_bytes(BLEND)
    sha = artist.upload_blend(str(blend))["sha256"]
    task = artist.submit_task(blend_sha256=sha, blend_filename="scene.blend", frame_start=1, frame_end=3)
    worker_id = worker.register_worker("contract-w1", "host", "4.2.0", 2)["worker_id"]
    frame_file = tmp_path / "f_0001.png"
    frame_file.write_bytes(PNG)
    return farm, artist, worker, worker_id, task["task_id"], str(frame_file)


def _blob_path(farm, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return os.path.join(farm.data_dir, "files", sha[:2], sha)


def test_claim_is_a_post_and_finish_delivers_file_and_report_in_one_request(running, tmp_path):
    farm, artist, worker, worker_id, task_id, frame_file = running
    assert farm.api.call("GET", "/frames/claim")[0] == 405  # a GET never claims
    claimed = worker.claim_frame(worker_id)["frame"]
    assert claimed["task_id"] == task_id and claimed["lease_id"]
    done = worker.finish_frame(worker_id, task_id, claimed["frame"], claimed["lease_id"], frame_file,
                               "f_0001.png", started_at=1.0, ended_at=3.5, render_seconds=2.5)["frame"]
    assert done["status"] == "done" and done["output_sha256"] == hashlib.sha256(PNG).hexdigest()
    assert os.path.exists(_blob_path(farm, PNG))
    # A repeat after a lost answer changes nothing and answers the done frame.
    again = worker.finish_frame(worker_id, task_id, claimed["frame"], claimed["lease_id"], frame_file, "f_0001.png")
    assert again["frame"]["status"] == "done"
    saved = artist.download_frame(task_id, claimed["frame"], str(tmp_path / "out"))
    with open(saved, "rb") as handle:
        assert handle.read() == PNG


def test_finish_with_a_lost_lease_stores_nothing_and_is_lease_lost(running, tmp_path):
    farm, artist, worker, worker_id, task_id, _ = running
    claimed = worker.claim_frame(worker_id)["frame"]
    # The worker gives the frame back; another worker takes it: the first one's lease is gone.
    worker.update_frame(worker_id, task_id, claimed["frame"], claimed["lease_id"], "released")
    other_id = worker.register_worker("contract-w2", "host", "4.2.0", 2)["worker_id"]
    taken = worker.claim_frame(other_id)["frame"]
    assert taken["frame"] == claimed["frame"]
    late = tmp_path / "late.png"
    late_bytes = PNG + b"late"
    late.write_bytes(late_bytes)
    with pytest.raises(LeaseLost) as caught:
        worker.finish_frame(worker_id, task_id, claimed["frame"], claimed["lease_id"], str(late), "late.png")
    assert caught.value.status == 409 and "lease" in caught.value.message
    assert not os.path.exists(_blob_path(farm, late_bytes))  # refused before a byte was stored
    frame = next(f for f in artist.get_task(task_id)["frames"] if f["frame"] == claimed["frame"])
    assert frame["status"] == "leased" and frame["output_sha256"] is None


def test_the_seed_routes_still_answer_as_documented(running, tmp_path):
    farm, artist, worker, worker_id, task_id, frame_file = running
    beat = worker.request("POST", "/update_worker", json_body={"worker_id": worker_id, "leases": []})
    assert beat["enabled"] is True
    claimed = worker.request("GET", "/get_task", params={"worker_id": worker_id})["frame"]
    worker.request("POST", "/update_task", json_body={"worker_id": worker_id, "task_id": task_id,
                                                      "frame": claimed["frame"], "lease_id": claimed["lease_id"],
                                                      "status": "rendering", "started_at": 1.0})
    stored = worker.upload_frame(worker_id, task_id, claimed["frame"], claimed["lease_id"], frame_file, "a.png")
    assert stored["filename"] == "a.png"
    done = worker.update_frame(worker_id, task_id, claimed["frame"], claimed["lease_id"], "done",
                               render_seconds=1.0)["frame"]
    assert done["status"] == "done"
    posted = worker.request("POST", "/get_task", json_body={"worker_id": worker_id})  # the seed's POST form
    assert posted["frame"]["frame"] != claimed["frame"]
    blend_sha = hashlib.sha256(BLEND).hexdigest()
    worker.download_file(blend_sha, str(tmp_path / "input.blend"))


def test_refusals_arrive_as_typed_errors_keeping_their_status(running):
    farm, artist, worker, worker_id, task_id, _ = running
    with pytest.raises(Unauthorized) as no_token:
        CoordinatorClient(farm.url, token="not-a-token-of-this-farm").list_workers()
    assert no_token.value.status == 401 and not isinstance(no_token.value, Forbidden)
    with pytest.raises(Forbidden) as wrong_role:
        worker.cancel_task(task_id)
    assert wrong_role.value.status == 403
    with pytest.raises(NotFound):
        artist.get_task(999_999, with_frames=False)
    with pytest.raises(Invalid) as invalid:
        worker.request("POST", "/frames/claim", json_body={"worker_id": "three"})
    assert invalid.value.status == 400 and "'worker_id' must be a whole number" in invalid.value.message
    with pytest.raises(Conflict) as conflict:  # a 409 that is not about a lease
        artist.delete_task_files(task_id)
    assert not isinstance(conflict.value, LeaseLost)
    with pytest.raises(Unavailable) as unreachable:
        CoordinatorClient(f"http://127.0.0.1:{free_port()}", timeout=2).health()
    assert isinstance(unreachable.value, CoordinatorUnreachable) and unreachable.value.status == 0


def _local_port(client: CoordinatorClient) -> int:
    """The local port of the client's one idle connection."""
    idle = client._pool._idle  # (address, connection) pairs of the client's pool (renderq/addresses.py)
    assert len(idle) == 1
    sock: socket.socket = idle[0][1].sock
    return sock.getsockname()[1]


def test_two_calls_share_one_connection_and_a_closed_one_is_replaced(running):
    farm, artist, worker, worker_id, task_id, _ = running
    worker.update_worker(worker_id, [])
    first = _local_port(worker)
    worker.claim_frame(worker_id)
    worker.update_worker(worker_id, [])
    assert _local_port(worker) == first  # one TCP connection for all three calls
    farm.coordinator.stop()  # the coordinator goes away and comes back: the idle connection is dead
    farm.start_coordinator()
    assert worker.update_worker(worker_id, [])["enabled"] is True
    assert _local_port(worker) != first


def test_threads_that_call_in_turn_share_one_connection(running):
    """A worker's threads (heartbeat, log, claims, deliveries) calling now and then hold one connection, not one
    each: a farm of thousands of workers would otherwise hold five times as many on the coordinator."""
    _, _, worker, worker_id, _, _ = running
    worker.update_worker(worker_id, [])
    first = _local_port(worker)
    for _ in range(4):
        thread = threading.Thread(target=worker.update_worker, args=(worker_id, []))
        thread.start()
        thread.join()
    assert _local_port(worker) == first


def _query_parameters() -> list[tuple[str, str, str, str]]:
    """(path, method, name, type) of every typed query parameter the shipped openapi.yaml documents."""
    spec = yaml.safe_load(spec_bytes())
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if "$ref" in parameter:
                    parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[-1]]
                schema = parameter["schema"]
                if "$ref" in schema:
                    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
                if parameter["in"] == "query" and schema.get("type") in ("integer", "boolean"):
                    found.append((path, method, parameter["name"], schema["type"]))
    return found


def test_every_documented_query_parameter_is_checked_by_the_contract(running):
    farm, *_, task_id, _ = running
    api = Api(farm.url, farm.token("admin"))
    parameters = _query_parameters()
    assert len(parameters) >= 20  # the seed's routes and the new ones, read from the document
    for path, method, name, kind in parameters:
        # Every other integer a valid one, so that the refusal can only be about `name`.
        others = "&".join(f"{other}=1" for p, m, other, k in parameters
                          if (p, m) == (path, method) and other != name and k == "integer")
        status, answer = api.call(method.upper(), f"{path}?{others}&{name}=not-{kind}")
        noun = "a whole number" if kind == "integer" else "true or false"
        assert (status, answer) == (400, {"error": f"'{name}' must be {noun}, not 'not-{kind}'"}), (path, name)
    assert api.call("GET", f"/task?task_id={task_id}")[1]["progress"]["queued"] == 3  # nothing was claimed


@pytest.mark.parametrize(("query", "error"), [
    ("/download_file?sha256=abc", "'sha256' must be a SHA-256 in lowercase hex, not 'abc'"),
    ("/tasks?status=lost",
     "'status' must be one of queued, running, paused, awaiting_approval, done, failed, canceled, not 'lost'"),
    ("/task?task_id=1&frames_limit=10001", "'frames_limit' must be a whole number from 0 to 10000, not 10001"),
    ("/get_log?task_id=1&max_bytes=-1", "'max_bytes' must be a whole number from 0 to 1048576, not -1"),
    ("/task_manifest?task_id=0", "'task_id' must be a whole number at least 1, not 0"),
])
def test_query_strings_are_refused_with_the_contracts_sentence(running, query, error):
    farm = running[0]
    assert Api(farm.url, farm.token("admin")).call("GET", query) == (400, {"error": error})


@pytest.mark.parametrize(("path", "error"), [
    ("/upload_blend?filename=notes.txt",
     "'filename' must be a file name ending in .blend, without '/', '\\' or '..', not 'notes.txt'"),
    ("/upload_file?sha256=ABC", "'sha256' must be a SHA-256 in lowercase hex, not 'ABC'"),
])
def test_upload_query_strings_are_checked_before_a_byte_is_stored(running, path, error):
    farm = running[0]
    files = os.path.join(farm.data_dir, "files")
    before = sorted(os.listdir(files))
    status, answer = Api(farm.url, farm.token("admin")).call("POST", path, raw=BLEND + b"new bytes")
    assert (status, answer) == (400, {"error": error})
    assert sorted(os.listdir(files)) == before


def test_the_documents_bounds_are_the_ones_the_scheduler_pages_by():
    """The routes take these bounds from openapi.yaml alone; the scheduler's own defaults must say the same."""
    spec = yaml.safe_load(spec_bytes())

    def schema(path: str, name: str) -> dict:
        return next(p["schema"] for p in spec["paths"][path]["get"]["parameters"] if p.get("name") == name)

    assert (schema("/task", "frames_limit")["default"], schema("/task", "frames_limit")["maximum"]) == (
        FRAMES_PAGE, MAX_FRAMES_PAGE)
    assert schema("/status/task_updates", "page")["maximum"] == MAX_FRAMES_PER_TASK
