"""The HTTP layer in-process (Flask test client): configuration, log offsets and the JSON error shape."""

from __future__ import annotations

import hashlib
import os

import pytest

from coordinator.config import Config
from seaweedfs import BLOB_ENGINES

# The in-process app runs on both store engines where it uses the `app` fixture (conftest.py).
pytestmark = pytest.mark.both_databases

BLEND = b"BLENDER-v304REND" + b"\0" * 64


def test_config_from_environment_and_flags():
    environ = {"RENDERQ_PORT": "6000", "RENDERQ_ALIVE_TIMEOUT": "30",
               "RENDERQ_UPLOAD_LIMIT": "2G", "RENDERQ_FRAME_FAIL_WORKERS": "5", "RENDERQ_BAD_WORKER_FAILURES": "4",
               "RENDERQ_FRAME_TIMEOUT": "3600", "RENDERQ_NO_PROGRESS_TIMEOUT": "120", "RENDERQ_DATA_DIR": "/srv/farm"}
    config = Config.from_env(environ, port=7000, data_dir=None, bad_worker_failures=2)
    assert (config.port, config.alive_timeout, config.upload_limit,
            config.frame_fail_workers, config.bad_worker_failures, config.frame_timeout, config.no_progress_timeout,
            config.data_dir) == (7000, 30.0, 2 * 1024**3, 5, 2, 3600.0, 120.0, "/srv/farm")
    defaults = Config.from_env({})
    assert (defaults.frame_fail_workers, defaults.bad_worker_failures, defaults.frame_timeout,
            defaults.no_progress_timeout) == (3, 3, 0.0, 600.0)


@pytest.mark.parametrize("environ, phrase", [
    ({"RENDERQ_PORT": "lots"}, "RENDERQ_PORT must be a number"),
    ({"RENDERQ_ALIVE_TIMEOUT": "1"}, "alive timeout must be longer"),
    ({"RENDERQ_FRAME_FAIL_WORKERS": "0"}, "frame fail workers must be at least 1"),
    ({"RENDERQ_BAD_WORKER_FAILURES": "0"}, "bad worker failures must be at least 1"),
    ({"RENDERQ_FRAME_TIMEOUT": "0.5"}, "frame timeout must be 0"),
    ({"RENDERQ_NO_PROGRESS_TIMEOUT": "0"}, "no progress timeout must be from 1"),
])
def test_bad_config_is_a_sentence(environ, phrase):
    with pytest.raises(ValueError, match=phrase):
        Config.from_env(environ)


def test_log_is_followed_from_an_offset(client):
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND).json["sha256"]
    task_id = client.post("/submit_task", json={"blend_sha256": sha, "blend_filename": "a.blend",
                                                "frame_start": 1, "frame_end": 1}).json["task_id"]
    assert client.post("/append_log", json={"task_id": task_id, "text": "Fra:1 Sample 1/16\n"}).json == {"size": 18}
    first = client.get(f"/get_log?task_id={task_id}&offset=0").json
    assert first["text"] == "Fra:1 Sample 1/16\n" and first["next_offset"] == 18
    client.post("/append_log", json={"task_id": task_id, "text": "Saved: f_0001.png\n"})
    follow = client.get(f"/get_log?task_id={task_id}&offset={first['next_offset']}").json
    assert follow["text"] == "Saved: f_0001.png\n" and follow["next_offset"] == 36
    idle = client.get(f"/get_log?task_id={task_id}&offset=36").json
    assert idle["text"] == "" and idle["next_offset"] == 36


def test_task_name_defaults_to_the_file_name(client):
    sha = client.post("/upload_blend?filename=shot_010.blend", data=BLEND).json["sha256"]
    task = client.post("/submit_task", json={"blend_sha256": sha, "blend_filename": "shot_010.blend",
                                             "frame_start": 1, "frame_end": 3, "frame_step": 2}).json
    assert task["name"] == "shot_010" and task["progress"]["total"] == 2


def test_tasks_filter_and_newest_first(client, admin):
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND).json["sha256"]
    ids = [client.post("/submit_task", json={"blend_sha256": sha, "frame_start": 1, "frame_end": 1}).json["task_id"]
           for _ in range(3)]
    client.post("/cancel_task", json={"task_id": ids[0]}, headers=admin)
    assert [t["task_id"] for t in client.get("/tasks").json["tasks"]] == ids[::-1]
    assert [t["task_id"] for t in client.get("/tasks?status=canceled").json["tasks"]] == [ids[0]]
    assert client.get("/tasks?status=bogus").status_code == 400


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


TEXTURE = b"\x89PNG fake texture bytes"


def _upload_tree(client, files: dict[str, bytes]) -> list[dict]:
    manifest = [{"path": path, "sha256": _sha(data), "size": len(data)} for path, data in files.items()]
    missing = client.post("/missing_files", json={"sha256": [m["sha256"] for m in manifest]}).json["missing"]
    for entry in manifest:
        if entry["sha256"] in missing:
            data = files[entry["path"]]
            assert client.post(f"/upload_file?sha256={entry['sha256']}", data=data).status_code == 200
    return manifest


@pytest.mark.parametrize("app", BLOB_ENGINES, indirect=True)
def test_content_addressed_upload_only_missing_and_verified(client, app):
    manifest = _upload_tree(client, {"project/main.blend": BLEND, "project/textures/wood.png": TEXTURE})
    hashes = [m["sha256"] for m in manifest]
    assert client.post("/missing_files", json={"sha256": hashes}).json == {"missing": []}
    changed = TEXTURE + b"!"
    assert client.post("/missing_files", json={"sha256": hashes + [_sha(changed)]}).json == {
        "missing": [_sha(changed)]}
    # Bytes that do not match their announced hash are refused and nothing is stored.
    files_dir = app.extensions["renderq.blobs"].root
    before = sorted(os.walk(files_dir))
    answer = client.post(f"/upload_file?sha256={_sha(changed)}", data=b"corrupted in transit")
    assert answer.status_code == 400 and "SHA-256" in answer.json["error"]
    assert sorted(os.walk(files_dir)) == before
    assert client.post("/missing_files", json={"sha256": [_sha(changed)]}).json == {"missing": [_sha(changed)]}


@pytest.mark.parametrize("app", BLOB_ENGINES, indirect=True)
def test_submit_a_tree_and_read_its_manifest_and_version(client):
    manifest = _upload_tree(client, {"project/main.blend": BLEND, "project/textures/wood.png": TEXTURE})
    task = client.post("/submit_task", json={"manifest": manifest, "main_file": "project/main.blend",
                                             "frame_start": 1, "frame_end": 2, "missing_assets": ["//lost.png"]})
    assert task.status_code == 201, task.json
    task = task.json
    assert (task["name"], task["main_file"], task["blender_version"], task["files_count"]) == (
        "main", "project/main.blend", "3.4", 2)
    assert task["missing_assets"] == ["//lost.png"]
    tree = client.get(f"/task_manifest?task_id={task['task_id']}").json
    assert tree["main_file"] == "project/main.blend"
    assert {f["path"] for f in tree["files"]} == {"project/main.blend", "project/textures/wood.png"}


@pytest.mark.parametrize("path", ["../x.png", "/etc/passwd", "a/../../x", "a\\b.png", "a//b", "./a", "C:/x", ""])
def test_manifest_paths_must_stay_inside_the_tree(client, path):
    manifest = _upload_tree(client, {"main.blend": BLEND})
    manifest.append({"path": path, "sha256": manifest[0]["sha256"], "size": len(BLEND)})
    answer = client.post("/submit_task", json={"manifest": manifest, "main_file": "main.blend", "frame_start": 1,
                                               "frame_end": 1})
    assert answer.status_code == 400, answer.json
    assert client.get("/tasks").json["tasks"] == []


@pytest.mark.parametrize("app", BLOB_ENGINES, indirect=True)
def test_manifest_must_be_uploaded_and_main_file_a_blend(client):
    manifest = _upload_tree(client, {"main.blend": BLEND, "tex.png": TEXTURE})
    lacking = manifest + [{"path": "other.png", "sha256": "e" * 64, "size": 3}]
    assert client.post("/submit_task", json={"manifest": lacking, "main_file": "main.blend", "frame_start": 1,
                                             "frame_end": 1}).status_code == 400
    assert client.post("/submit_task", json={"manifest": manifest, "main_file": "tex.png", "frame_start": 1,
                                             "frame_end": 1}).status_code == 400
    wrong_size = [dict(manifest[0], size=1), manifest[1]]
    assert client.post("/submit_task", json={"manifest": wrong_size, "main_file": "main.blend", "frame_start": 1,
                                             "frame_end": 1}).status_code == 400


@pytest.mark.parametrize("app", BLOB_ENGINES, indirect=True)
def test_disk_usage_zip_and_delete(client, app, admin):
    import io
    import zipfile

    manifest = _upload_tree(client, {"main.blend": BLEND})
    task_id = client.post("/submit_task", json={"manifest": manifest, "main_file": "main.blend", "frame_start": 1,
                                                "frame_end": 1}).json["task_id"]
    worker_id = client.post("/register_worker", json={"name": "w", "blender_version": "3.4.1"}).json["worker_id"]
    lease = client.get(f"/get_task?worker_id={worker_id}").json["frame"]
    assert lease["main_file"] == "main.blend" and lease["files_count"] == 1
    client.post(f"/upload_frame?worker_id={worker_id}&task_id={task_id}&frame=1&lease_id={lease['lease_id']}"
                f"&filename=f_0001.png", data=b"rendered pixels")
    client.post("/update_task", json={"worker_id": worker_id, "task_id": task_id, "frame": 1,
                                      "lease_id": lease["lease_id"], "status": "done", "render_seconds": 1.0})
    usage = client.get("/disk_usage").json
    assert usage["tasks"] == [{"task_id": task_id, "name": "main", "status": "done",
                               "bytes": len(BLEND) + len(b"rendered pixels")}]
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/download_frames_zip?task_id={task_id}").data))
    assert archive.namelist() == ["f_0001.png"] and archive.read("f_0001.png") == b"rendered pixels"
    deleted = client.post("/delete_task_files", json={"task_id": task_id}, headers=admin).json
    assert deleted == {"task_id": task_id, "files_deleted": 2, "bytes_freed": len(BLEND) + 15}
    assert client.get(f"/download_frame?task_id={task_id}&frame=1").status_code == 404
    assert client.post("/missing_files", json={"sha256": [manifest[0]["sha256"]]}).json["missing"]


def test_uploads_refused_with_507_before_the_disk_is_full(tmp_path):
    from coordinator.app import create_app

    app = create_app(Config(data_dir=str(tmp_path / "data"), disk_reserve=2**60, auth=False))
    client = app.test_client()
    answer = client.post(f"/upload_file?sha256={_sha(TEXTURE)}", data=TEXTURE)
    assert answer.status_code == 507 and "disk" in answer.json["error"]
    assert client.post("/upload_blend?filename=a.blend", data=BLEND).status_code == 507
    assert not any(files for _, _, files in os.walk(tmp_path / "data" / "files"))


# -- scheduling rules over HTTP: timeouts, Python, bad workers, fencing ----------------------------------------------


def _submit(client, **fields) -> dict:
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND).json["sha256"]
    answer = client.post("/submit_task", json={"blend_sha256": sha, "frame_start": 1, "frame_end": 2, **fields})
    assert answer.status_code == 201, answer.json
    return answer.json


def _register(client, name: str, **fields) -> int:
    return client.post("/register_worker", json={"name": name, "blender_version": "3.4.1", **fields}).json["worker_id"]


def _report(client, worker_id: int, lease: dict, status: str, **fields):
    return client.post("/update_task", json={"worker_id": worker_id, "task_id": lease["task_id"],
                                             "frame": lease["frame"], "lease_id": lease["lease_id"],
                                             "status": status, **fields})


def _frame_row(app, task_id: int, frame: int) -> tuple:
    return tuple(app.extensions["renderq.store"].read().execute(
        "SELECT * FROM frames WHERE task_id = ? AND frame = ?", (task_id, frame)).fetchone())


def test_submit_takes_timeouts_and_python_and_the_claim_passes_them_on(client):
    task = _submit(client, frame_timeout=900, no_progress_timeout=120.5, needs_python=True)
    assert (task["frame_timeout"], task["no_progress_timeout"], task["needs_python"]) == (900, 120.5, True)
    assert task["blocked_workers"] == [] and "owner" in task
    plain = _submit(client)
    assert (plain["frame_timeout"], plain["no_progress_timeout"], plain["needs_python"]) == (None, 600, False)
    worker_id = _register(client, "trusting", allows_python=True)
    assert client.get("/list_workers").json["workers"][0]["allows_python"] is True
    lease = client.get(f"/get_task?worker_id={worker_id}").json["frame"]
    assert (lease["task_id"], lease["frame_timeout"], lease["no_progress_timeout"], lease["needs_python"]) == (
        task["task_id"], 900, 120.5, True)


@pytest.mark.parametrize("fields, phrase", [
    ({"frame_timeout": 0}, "'frame_timeout' must be a number of seconds from 1 to 604800"),
    ({"frame_timeout": 8 * 86400}, "'frame_timeout' must be a number of seconds from 1 to 604800"),
    ({"no_progress_timeout": "600"}, "'no_progress_timeout' must be a number"),
    ({"no_progress_timeout": -1}, "'no_progress_timeout' must be a number of seconds"),
    ({"needs_python": "maybe"}, "'needs_python' must be true or false"),
])
def test_bad_timeouts_and_python_flags_are_refused_with_a_sentence(client, fields, phrase):
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND).json["sha256"]
    answer = client.post("/submit_task", json={"blend_sha256": sha, "frame_start": 1, "frame_end": 1, **fields})
    assert answer.status_code == 400 and phrase in answer.json["error"]
    assert client.get("/tasks").json["tasks"] == []
    refused = client.post("/register_worker", json={"name": "w", "allows_python": "sometimes"})
    assert refused.status_code == 400 and "allows_python" in refused.json["error"]


def test_a_worker_that_finds_python_releases_the_frame_to_one_that_allows_it(client):
    task = _submit(client)
    safe = _register(client, "safe")
    lease = client.get(f"/get_task?worker_id={safe}").json["frame"]
    assert lease["needs_python"] is False
    wrong = _report(client, safe, lease, "failed", needs_python=True)
    assert wrong.status_code == 400 and "needs_python" in wrong.json["error"]
    answer = _report(client, safe, lease, "released", needs_python=True)
    assert answer.status_code == 200 and answer.json["frame"]["failures"] == 0
    detail = client.get(f"/task?task_id={task['task_id']}").json
    assert detail["needs_python"] is True and "--allow-blend-python" in detail["waiting_reason"]
    assert client.get(f"/get_task?worker_id={safe}").json["frame"] is None
    trusting = _register(client, "trusting", allows_python=True)
    assert client.get(f"/get_task?worker_id={trusting}").json["frame"]["task_id"] == task["task_id"]


def test_blocked_workers_are_listed_and_a_retry_unblocks_them(client):
    task_id = _submit(client, frame_end=4)["task_id"]
    worker_id = _register(client, "flaky")
    for _ in range(3):
        lease = client.get(f"/get_task?worker_id={worker_id}").json["frame"]
        assert _report(client, worker_id, lease, "failed", error="boom").status_code == 200
    detail = client.get(f"/task?task_id={task_id}").json
    assert detail["blocked_workers"] == [{"worker": "flaky", "worker_id": worker_id, "failures": 3}]
    assert detail["waiting_reason"] == ("waiting: every worker that could render it has failed it 3 times and is "
                                        "blocked; retry its failed frames to unblock them")
    assert client.get("/tasks").json["tasks"][0]["blocked_workers"] == detail["blocked_workers"]
    assert client.get(f"/get_task?worker_id={worker_id}").json["frame"] is None
    retried = client.post("/retry_failed_frames", json={"task_id": task_id})
    assert retried.status_code == 200 and retried.json["blocked_workers"] == []
    assert client.get(f"/get_task?worker_id={worker_id}").json["frame"]["task_id"] == task_id


def test_reports_and_uploads_under_a_lost_lease_get_409_and_change_nothing(app, client):
    scheduler = app.extensions["renderq.scheduler"]
    now = [scheduler.clock()]
    scheduler.clock = lambda: now[0]
    task_id = _submit(client, frame_end=1)["task_id"]
    late, other = _register(client, "late"), _register(client, "other")
    lease = client.get(f"/get_task?worker_id={late}").json["frame"]
    assert _report(client, late, lease, "rendering").status_code == 200
    now[0] += 60  # late went silent; its frame goes to other
    taken = client.get(f"/get_task?worker_id={other}").json["frame"]
    assert (taken["task_id"], taken["frame"]) == (task_id, 1)
    before = _frame_row(app, task_id, 1)
    for status in ("rendering", "done", "failed", "released"):
        answer = _report(client, late, lease, status, error="late", render_seconds=1.0)
        assert answer.status_code == 409 and "lease" in answer.json["error"], status
    upload = client.post(f"/upload_frame?worker_id={late}&task_id={task_id}&frame=1&lease_id={lease['lease_id']}"
                         "&filename=f_0001.png", data=b"stale pixels")
    assert upload.status_code == 409
    assert _frame_row(app, task_id, 1) == before


def test_the_same_done_report_twice_is_counted_once(client):
    task_id = _submit(client, frame_end=1)["task_id"]
    worker_id = _register(client, "w")
    lease = client.get(f"/get_task?worker_id={worker_id}").json["frame"]
    client.post(f"/upload_frame?worker_id={worker_id}&task_id={task_id}&frame=1&lease_id={lease['lease_id']}"
                "&filename=f_0001.png", data=b"pixels")
    first = _report(client, worker_id, lease, "done", render_seconds=2.0)
    second = _report(client, worker_id, lease, "done", render_seconds=5.0)
    assert first.status_code == second.status_code == 200 and first.json == second.json
    assert client.get(f"/task?task_id={task_id}").json["progress"]["done"] == 1
    assert client.get("/list_workers").json["workers"][0]["frames_done"] == 1


def test_a_full_disk_under_the_database_is_a_507_sentence(app, client, monkeypatch, db_engine):
    def full(*args, **kwargs):
        # What each database engine's driver raises when the database's disk is full.
        if db_engine == "postgresql":
            import psycopg

            raise psycopg.errors.DiskFull('could not extend file "base/16384/16385": No space left on device')
        import sqlite3

        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(app.extensions["renderq.scheduler"], "register_worker", full)
    answer = client.post("/register_worker", json={"name": "w", "blender_version": "3.4.1"})
    assert answer.status_code == 507 and "disk is full" in answer.json["error"]


def test_an_already_stored_file_is_accepted_on_a_nearly_full_disk(app, client):
    body = b"texture bytes"
    sha = hashlib.sha256(body).hexdigest()
    assert client.post(f"/upload_file?sha256={sha}", data=body).status_code == 200
    app.extensions["renderq.blobs"].reserve_bytes = 2**60  # no room for anything new
    again = client.post(f"/upload_file?sha256={sha}", data=body)
    assert again.status_code == 200 and again.json == {"sha256": sha, "size": len(body)}
    other = b"new bytes"
    assert client.post(f"/upload_file?sha256={hashlib.sha256(other).hexdigest()}", data=other).status_code == 507
