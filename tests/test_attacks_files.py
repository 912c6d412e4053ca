"""Issue 12, files: other local users read nothing of the farm's files, uploads no task uses do not pile up, and
Blender never sees the worker's token.

Each attack runs against real processes: a coordinator (and a worker with the real Blender) started through the
`renderq` command under a loose umask, driven over HTTP.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import secrets
import stat
import time

import pytest

from coordinator.store import Store
from harness import Farm, find_blender_or_none, wait_for
from renderq.private_files import make_private_tree_top
from test_farm import blender_children
from worker.blender_session import TOKEN_ENV, blender_environment

BLENDER = find_blender_or_none()
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

BLEND = b"BLENDER-v304REND" + b"\0" * 64
FAST = ("--heartbeat", "1", "--alive-timeout", "4")


@pytest.fixture
def loose_umask():
    """Processes started meanwhile inherit umask 022, under which files are made readable by every local user."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def blob_path(farm: Farm, sha256: str) -> str:
    return os.path.join(farm.data_dir, "files", sha256[:2], sha256)


def upload(farm: Farm, data: bytes) -> str:
    sha256 = hashlib.sha256(data).hexdigest()
    status, answer = farm.api.call("POST", f"/upload_file?sha256={sha256}", raw=data)
    assert status == 200, answer
    return sha256


def submit(farm: Farm, files: dict[str, bytes], name: str = "task") -> tuple[int, dict]:
    """Submit a task of these files (uploaded already or not); (HTTP status, answer)."""
    manifest = [{"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                for path, data in files.items()]
    return farm.api.call("POST", "/submit_task", {"name": name, "manifest": manifest, "main_file": "main.blend",
                                                  "frame_start": 1, "frame_end": 1})


def stored(farm: Farm, sha256: str) -> bool:
    """Whether the coordinator still serves the file (asked as a worker would, which does not refresh it)."""
    status, _ = farm.api.call("GET", f"/download_file?sha256={sha256}")
    assert status in (200, 404), status
    return status == 200


# -- permissions ------------------------------------------------------------------------------------------------------


def test_the_data_dir_and_all_it_holds_are_private_under_umask_022(farm: Farm, loose_umask):
    farm.start_coordinator()
    sha256 = upload(farm, b"a texture only the studio may see")
    upload(farm, BLEND)
    assert submit(farm, {"main.blend": BLEND})[0] == 201  # a write: the database's -wal file exists now

    data = farm.data_dir
    assert mode(data) == 0o700
    for name in ("renderq.sqlite3", "renderq.sqlite3-wal", "renderq.sqlite3-shm", "admin_token", "artist_token",
                 "worker_token", "coordinator.lock"):
        assert os.path.exists(os.path.join(data, name)), name
        assert mode(os.path.join(data, name)) == 0o600, name
    for folder in ("files", "files/incoming", f"files/{sha256[:2]}"):
        assert mode(os.path.join(data, folder)) == 0o700, folder
    assert mode(blob_path(farm, sha256)) == 0o600


def test_a_data_dir_left_open_by_an_older_version_is_closed_at_start(farm: Farm, loose_umask):
    farm.start_coordinator()
    sha256 = upload(farm, b"an upload from before the fix")
    farm.coordinator.stop()
    # What an older coordinator left under umask 022: everything readable by every local user.
    for folder, _, files in os.walk(farm.data_dir):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)

    farm.start_coordinator()
    data = farm.data_dir
    assert mode(data) == 0o700
    for name in os.listdir(data):
        expected = 0o700 if os.path.isdir(os.path.join(data, name)) else 0o600
        assert mode(os.path.join(data, name)) == expected, name
    # The stored files themselves are not each visited; their folders shut them away.
    for folder in ("files", "files/incoming", f"files/{sha256[:2]}"):
        assert mode(os.path.join(data, folder)) == 0o700, folder
    assert stored(farm, sha256)


def test_a_data_dir_that_is_a_link_to_another_disk_is_made_private_where_it_points(tmp_path, loose_umask):
    target = tmp_path / "big-disk" / "renderq-data"
    target.mkdir(parents=True, mode=0o755)
    (target / "renderq.sqlite3").write_bytes(b"")
    link = tmp_path / "renderq-data"
    link.symlink_to(target)
    make_private_tree_top(str(link))
    assert mode(str(target)) == 0o700 and mode(str(target / "renderq.sqlite3")) == 0o600


# -- orphan files -----------------------------------------------------------------------------------------------------


def test_files_no_task_uses_are_deleted_after_the_grace_period_and_used_ones_stay(farm: Farm):
    farm.start_coordinator("--orphan-grace", "1")
    never_used = b"uploaded, never submitted " + secrets.token_bytes(8)
    orphan = upload(farm, never_used)
    texture = b"a texture of a task " + secrets.token_bytes(8)
    upload(farm, BLEND)
    upload(farm, texture)
    status, task = submit(farm, {"main.blend": BLEND, "tex/wood.png": texture})
    assert status == 201, task
    # A frame rendered and then failed leaves its output used by nothing; a done frame's output is used.
    worker = farm.api.post("/register_worker", {"name": "w", "blender_version": "3.4.1"})
    lease = farm.api.get(f"/get_task?worker_id={worker['worker_id']}")["frame"]
    base = f"worker_id={worker['worker_id']}&task_id={lease['task_id']}&frame=1&lease_id={lease['lease_id']}"
    status, failed_output = farm.api.call("POST", f"/upload_frame?{base}&filename=f_0001.png", raw=b"bad frame")
    assert status == 200, failed_output
    farm.api.post("/update_task", {"worker_id": worker["worker_id"], "task_id": lease["task_id"], "frame": 1,
                                   "lease_id": lease["lease_id"], "status": "failed", "error": "broken"})
    lease = farm.api.get(f"/get_task?worker_id={worker['worker_id']}")["frame"]
    base = f"worker_id={worker['worker_id']}&task_id={lease['task_id']}&frame=1&lease_id={lease['lease_id']}"
    status, done_output = farm.api.call("POST", f"/upload_frame?{base}&filename=f_0001.png", raw=b"good frame")
    assert status == 200, done_output
    farm.api.post("/update_task", {"worker_id": worker["worker_id"], "task_id": lease["task_id"], "frame": 1,
                                   "lease_id": lease["lease_id"], "status": "done", "render_seconds": 1.0})

    wait_for(lambda: not stored(farm, orphan) and not stored(farm, failed_output["sha256"]), 20,
             "the unused upload and the failed frame's output to be deleted")
    time.sleep(2.5)  # more sweeps, each long past the grace period of everything uploaded above
    for used in (hashlib.sha256(BLEND).hexdigest(), hashlib.sha256(texture).hexdigest(), done_output["sha256"]):
        assert stored(farm, used), used
    assert farm.api.call("GET", f"/download_frame?task_id={task['task_id']}&frame=1")[1] == b"good frame"
    assert re.search(r"deleted [12] stored file\(s\) that no task used for over 1 s", farm.coordinator.output())

    # A submit naming the deleted file is refused with a sentence; uploading it again mends that.
    status, answer = submit(farm, {"main.blend": BLEND, "old.bin": never_used}, "late")
    assert status == 400 and "not uploaded yet" in answer["error"], answer
    upload(farm, never_used)
    assert submit(farm, {"main.blend": BLEND, "old.bin": never_used}, "late")[0] == 201


def test_a_file_answered_as_stored_gets_a_new_grace_period(farm: Farm):
    farm.start_coordinator("--orphan-grace", "3600")
    sha256 = upload(farm, b"uploaded for an earlier task " + secrets.token_bytes(8))
    path = blob_path(farm, sha256)
    # Nearly an hour old: the next sweep after the grace period would take it.
    os.utime(path, (time.time() - 3500, time.time() - 3500))
    assert farm.api.post("/missing_files", {"sha256": [sha256]})["missing"] == []
    assert time.time() - os.stat(path).st_mtime < 60
    os.utime(path, (time.time() - 3500, time.time() - 3500))
    upload(farm, open(path, "rb").read())  # answered as already stored, nothing written
    assert time.time() - os.stat(path).st_mtime < 60


def test_submits_racing_the_sweep_never_store_a_task_without_its_files(farm: Farm):
    """Files past their grace period are submitted while the sweep (every second) deletes them: each submit either
    fails with a sentence, or its task keeps every file."""
    farm.start_coordinator("--orphan-grace", "1")
    deadline = time.monotonic() + 5

    def submit_old_files() -> list[str]:
        accepted = []
        while time.monotonic() < deadline:
            # Again each round: on a busy machine the first task may come later than the sweep of an unused .blend.
            upload(farm, BLEND)
            data = secrets.token_bytes(32)
            sha256 = upload(farm, data)
            old = time.time() - 60
            os.utime(blob_path(farm, sha256), (old, old))
            status, answer = submit(farm, {"main.blend": BLEND, "tex.bin": data})
            if status == 201:
                accepted.append(sha256)
            else:
                assert status == 400 and "not uploaded yet" in answer["error"], answer
        return accepted

    # Two submitters, so that nearly always one of them is between its check and its stored task when a sweep runs.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        accepted = [sha256 for done in [pool.submit(submit_old_files) for _ in range(2)] for sha256 in done.result()]
    time.sleep(2.5)
    assert accepted, "no submit got in before the sweep"
    assert [sha256 for sha256 in accepted if not stored(farm, sha256)] == []


def test_a_reserved_file_is_never_swept(tmp_path, blob_store):
    """The guard itself: a file reserved by a submit stays, whatever its age, until the task is stored (on each
    blob engine)."""
    store = Store(str(tmp_path / "db.sqlite3"))
    blobs = blob_store
    sha256, _ = blobs.put_stream(io.BytesIO(BLEND), limit=10**7)
    later = time.time() + 10
    with blobs.reserved([sha256]):
        assert blobs.sweep_orphans(later, store.referenced_blobs) == (0, 0)
        store.insert_task({"name": "t", "frame_start": 1, "frame_end": 1, "frame_step": 1, "priority": 0,
                           "submitted_by": "", "blend_sha256": sha256, "blend_filename": "a.blend",
                           "created_at": time.time(), "main_file": "a.blend", "blender_version": "",
                           "blender_version_key": 0}, [1], [], [("a.blend", sha256, len(BLEND))])
    assert blobs.sweep_orphans(later, store.referenced_blobs) == (0, 0)
    assert blobs.exists(sha256)
    unused, _ = blobs.put_stream(io.BytesIO(b"used by no task"), limit=10**7)
    assert blobs.sweep_orphans(later, store.referenced_blobs)[0] == 1 and not blobs.exists(unused)



def test_a_file_asked_for_again_is_kept_a_new_grace_period(tmp_path, blob_store):
    """touch (a /missing_files answer "stored") starts the grace period over on each blob engine: on S3, where an
    object's time cannot be set, through its marker object, which goes with it."""
    store = Store(str(tmp_path / "db.sqlite3"))
    sha256, _ = blob_store.put_stream(io.BytesIO(b"uploaded for an earlier task " + secrets.token_bytes(8)),
                                      limit=10**7)
    time.sleep(2.1)
    asked_at = time.time()
    assert blob_store.touch_many([sha256, "f" * 64]) == {sha256}
    assert blob_store.sweep_orphans(asked_at - 1, store.referenced_blobs) == (0, 0)
    assert blob_store.exists(sha256)
    assert blob_store.sweep_orphans(time.time() + 5, store.referenced_blobs)[0] == 1
    assert not blob_store.exists(sha256) and not blob_store.touch(sha256)

# -- Blender's environment --------------------------------------------------------------------------------------------


def test_blender_environment_drops_secrets_and_keeps_what_blender_needs():
    token = "worker-token-" + secrets.token_hex(16)
    environ = {"PATH": "/usr/bin", "HOME": "/home/artist", "DISPLAY": ":0", "LANG": "en_US.UTF-8",
               "OCIO": "/studio/config.ocio", "RENDERQ_BLENDER": "/opt/blender/blender",
               "RENDERQ_TEST_MARKER_DIR": "/tmp/markers", "RENDERQ_TOKEN": token, "RENDERQ_TOKEN_FILE": "/etc/tok",
               "RENDERQ_ADMIN_TOKEN": "another-secret-token", "FARM_PASS": token, "AUTH_HEADER": f"Bearer {token}"}
    env = blender_environment(environ, [token])
    assert sorted(env) == ["DISPLAY", "HOME", "LANG", "OCIO", "PATH", "RENDERQ_BLENDER", "RENDERQ_TEST_MARKER_DIR"]
    assert blender_environment({"EMPTY": ""}, [""]) == {"EMPTY": ""}


@needs_blender
def test_blender_runs_without_the_workers_token_and_the_work_dir_is_private(farm: Farm, scenes, loose_umask,
                                                                             monkeypatch):
    blend = scenes("heavy", frames=2, heavy=True, resolution=(64, 36), samples=4)
    farm.start_coordinator(*FAST)
    token = farm.token("worker")
    # The worker gets its token as RENDERQ_TOKEN (the harness) and, as a careless setup might, under another name.
    monkeypatch.setenv("STUDIO_FARM_KEY_COPY", token)
    worker = farm.start_worker("w1")
    task_id = farm.api.submit(blend, 1, 2, name="heavy")
    wait_for(lambda: any(f["status"] == "rendering" for f in farm.api.task(task_id)["frames"]), 120,
             "Blender to start rendering")
    children = wait_for(lambda: blender_children(worker.pid), 30, "the worker's Blender process")
    with open(f"/proc/{children[0]}/environ", "rb") as handle:
        raw = handle.read()
    names = {item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item}
    assert token.encode() not in raw
    assert "RENDERQ_TOKEN" not in names and "STUDIO_FARM_KEY_COPY" not in names
    assert {"PATH", "HOME", TOKEN_ENV} <= names

    work = os.path.join(farm.root, "work-w1")
    for folder in ("", "files", "tasks", "output", f"output/{task_id}", f"tasks/{task_id}"):
        assert mode(os.path.join(work, folder)) == 0o700, folder or "the work dir"
    farm.api.post("/cancel_task", {"task_id": task_id})
