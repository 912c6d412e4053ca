"""Every kind of bad input gets a 4xx JSON error from the live coordinator and changes nothing stored."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest

from harness import Farm

BLEND = b"BLENDER-v304REND" + b"\0" * 512


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = Farm(str(tmp_path_factory.mktemp("bad-input")))
    farm.start_coordinator("--upload-limit", "64K")
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def state(farm):
    """A task with one frame leased to worker 'holder', so reports and lost leases can be tried."""
    api = farm.api
    status, blend = api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200
    holder = api.post("/register_worker", {"name": "holder", "host": "h", "blender_version": "3.4.1",
                                           "cpu_count": 2})["worker_id"]
    other = api.post("/register_worker", {"name": "other", "host": "h", "blender_version": "3.4.1",
                                          "cpu_count": 2})["worker_id"]
    task_id = api.post("/submit_task", {"name": "shot", "blend_sha256": blend["sha256"],
                                        "blend_filename": "shot.blend", "frame_start": 1,
                                        "frame_end": 2})["task_id"]
    lease = api.get(f"/get_task?worker_id={holder}")["frame"]
    return {"sha": blend["sha256"], "holder": holder, "other": other, "task_id": task_id, "lease": lease}


def snapshot(farm: Farm) -> tuple[list[str], list[str]]:
    """Every row in the database and every stored file, to compare before and after a bad request."""
    db = sqlite3.connect(os.path.join(farm.data_dir, "renderq.sqlite3"))
    try:
        rows = [line for line in db.iterdump() if "last_seen" not in line]
    finally:
        db.close()
    files = []
    for folder, _, names in os.walk(os.path.join(farm.data_dir, "files")):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files.append(f"{os.path.relpath(path, farm.data_dir)} {hashlib.sha256(handle.read()).hexdigest()}")
    return rows, sorted(files)


def submit_body(state: dict, **changes) -> dict:
    body = {"name": "ok", "blend_sha256": state["sha"], "blend_filename": "shot.blend", "frame_start": 1,
            "frame_end": 10, "frame_step": 1}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


CASES = {
    # (method, path, JSON body, raw body, expected status[, the raw body's Content-Type])
    "malformed json": lambda s: ("POST", "/submit_task", None, b"{not json", 400, "application/json"),
    "json sent as text/plain": lambda s: ("POST", "/submit_task", None, json.dumps(submit_body(s)).encode(), 415,
                                          "text/plain"),
    "json sent without a type": lambda s: ("POST", "/cancel_task", None, b'{"task_id": 1}', 415),
    "json not an object": lambda s: ("POST", "/submit_task", [1, 2], None, 400),
    "missing frame_start": lambda s: ("POST", "/submit_task", submit_body(s, frame_start=...), None, 400),
    "frame_end a string": lambda s: ("POST", "/submit_task", submit_body(s, frame_end="ten"), None, 400),
    "frame_start a float": lambda s: ("POST", "/submit_task", submit_body(s, frame_start=1.5), None, 400),
    "priority a bool": lambda s: ("POST", "/submit_task", submit_body(s, priority=True), None, 400),
    "inverted range": lambda s: ("POST", "/submit_task", submit_body(s, frame_start=10, frame_end=1), None, 400),
    "step zero": lambda s: ("POST", "/submit_task", submit_body(s, frame_step=0), None, 400),
    "step negative": lambda s: ("POST", "/submit_task", submit_body(s, frame_step=-2), None, 400),
    "unknown blend": lambda s: ("POST", "/submit_task", submit_body(s, blend_sha256="f" * 64), None, 400),
    "task name with slash": lambda s: ("POST", "/submit_task", submit_body(s, name="a/b"), None, 400),
    "task name with dotdot": lambda s: ("POST", "/submit_task", submit_body(s, name="..x"), None, 400),
    "task name with NUL": lambda s: ("POST", "/submit_task", submit_body(s, name="a\0b"), None, 400),
    "task name with a bidi override":
        lambda s: ("POST", "/submit_task", submit_body(s, name="gnp.\u202eexe"), None, 400),
    "task name with an escape": lambda s: ("POST", "/submit_task", submit_body(s, name="a\x1b[2Jb"), None, 400),
    "worker name with DEL": lambda s: ("POST", "/register_worker", {"name": "a\x7f"}, None, 400),
    "worker list not names": lambda s: ("POST", "/submit_task", submit_body(s, workers="node"), None, 400),
    "worker name with slash": lambda s: ("POST", "/register_worker", {"name": "a/b"}, None, 400),
    "worker name with NUL": lambda s: ("POST", "/register_worker", {"name": "a\0"}, None, 400),
    "worker name missing": lambda s: ("POST", "/register_worker", {"host": "h"}, None, 400),
    "cpu_count a string": lambda s: ("POST", "/register_worker", {"name": "x", "cpu_count": "many"}, None, 400),
    "unknown worker heartbeat": lambda s: ("POST", "/update_worker", {"worker_id": 999, "leases": []}, None, 404),
    "leases not a list": lambda s: ("POST", "/update_worker", {"worker_id": s["holder"], "leases": "x"}, None, 400),
    "unknown worker claims": lambda s: ("GET", "/get_task?worker_id=999", None, None, 404),
    "claim without worker": lambda s: ("GET", "/get_task", None, None, 400),
    "unknown task": lambda s: ("GET", "/task?task_id=999", None, None, 404),
    "task id not a number": lambda s: ("GET", "/task?task_id=abc", None, None, 400),
    "cancel unknown task": lambda s: ("POST", "/cancel_task", {"task_id": 999}, None, 404),
    "log of unknown task": lambda s: ("GET", "/get_log?task_id=999", None, None, 404),
    "negative log offset": lambda s: ("GET", f"/get_log?task_id={s['task_id']}&offset=-1", None, None, 400),
    "enable unknown worker": lambda s: ("POST", "/set_worker_enabled", {"name": "ghost", "enabled": False}, None, 404),
    "enabled not a bool": lambda s: ("POST", "/set_worker_enabled", {"name": "holder", "enabled": "maybe"}, None,
                                     400),
    "not a blend": lambda s: ("POST", "/upload_blend?filename=x.blend", None, b"PK\x03\x04 a zip file", 400),
    "empty upload": lambda s: ("POST", "/upload_blend?filename=x.blend", None, b"", 400),
    "blend name with dotdot": lambda s: ("POST", "/upload_blend?filename=../x.blend", None, BLEND, 400),
    "blend name not .blend": lambda s: ("POST", "/upload_blend?filename=x.png", None, BLEND, 400),
    "upload over the limit": lambda s: ("POST", "/upload_blend?filename=big.blend", None,
                                        BLEND + b"\0" * 70_000, 413),
    "bad sha": lambda s: ("GET", "/download_file?sha256=../../etc/passwd", None, None, 400),
    "missing file": lambda s: ("GET", "/download_file?sha256=" + "0" * 64, None, None, 404),
    "frame not rendered": lambda s: ("GET", f"/download_frame?task_id={s['task_id']}&frame=1", None, None, 404),
    "frame report without lease": lambda s: ("POST", "/update_task", {
        "worker_id": s["other"], "task_id": s["task_id"], "frame": s["lease"]["frame"],
        "lease_id": s["lease"]["lease_id"], "status": "rendering"}, None, 409),
    "frame report with wrong lease": lambda s: ("POST", "/update_task", {
        "worker_id": s["holder"], "task_id": s["task_id"], "frame": s["lease"]["frame"], "lease_id": "0" * 32,
        "status": "failed"}, None, 409),
    "frame report unknown status": lambda s: ("POST", "/update_task", {
        "worker_id": s["holder"], "task_id": s["task_id"], "frame": s["lease"]["frame"],
        "lease_id": s["lease"]["lease_id"], "status": "exploded"}, None, 400),
    "frame report unknown frame": lambda s: ("POST", "/update_task", {
        "worker_id": s["holder"], "task_id": s["task_id"], "frame": 77, "lease_id": "x", "status": "done"},
        None, 404),
    "frame upload without lease": lambda s: ("POST", f"/upload_frame?worker_id={s['other']}&task_id={s['task_id']}"
                                             f"&frame=1&lease_id={s['lease']['lease_id']}&filename=f_0001.png",
                                             None, b"png", 409),
    "frame upload hostile name": lambda s: ("POST", f"/upload_frame?worker_id={s['holder']}&task_id={s['task_id']}"
                                            f"&frame={s['lease']['frame']}&lease_id={s['lease']['lease_id']}"
                                            f"&filename=../../x.png", None, b"png", 400),
    "done before upload": lambda s: ("POST", "/update_task", {
        "worker_id": s["holder"], "task_id": s["task_id"], "frame": s["lease"]["frame"],
        "lease_id": s["lease"]["lease_id"], "status": "done"}, None, 409),
    "unknown path": lambda s: ("GET", "/no_such_endpoint", None, None, 404),
    "wrong method": lambda s: ("GET", "/submit_task", None, None, 405),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_and_changes_nothing(farm, state, case):
    method, path, body, raw, expected, *content_type = CASES[case](state)
    before = snapshot(farm)
    status, answer = farm.api.call(method, path, body=body, raw=raw, content_type=(content_type or [None])[0])
    assert status == expected, answer
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"], answer
    assert snapshot(farm) == before
