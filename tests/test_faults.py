"""The fault matrix: the real farm (coordinator over HTTP, workers running the real Blender) under crashes, hangs,
cut networks, a full disk, a second coordinator and jumping clocks.

Every case ends with the same check: each frame ended once, done with one file or failed with a reason, and every
file the coordinator acknowledged is still served with the SHA-256 it recorded.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from harness import ROOT, Exchange, Farm, TcpProxy, find_blender_or_none, wait_for
from test_farm import FAST, BlenderWatcher, blender_children, frames_by_worker

needs_blender = pytest.mark.skipif(find_blender_or_none() is None,
                                   reason="Blender is not installed (scripts/test.sh installs it)")

MIB = 1024 * 1024
HOUR = 3600.0


# -- the common check -------------------------------------------------------------------------------------------------


def assert_frames_once(farm: Farm, *task_ids: int, all_done: bool = True) -> dict[int, dict]:
    """Each frame of the tasks ended exactly once and no acknowledged file is lost.

    A frame is done (one output, counted once on its task and once across the workers, its file downloadable with
    the SHA-256 the coordinator recorded) or, unless `all_done`, failed with a reason. The workers' counts are
    compared with every task on the farm, so pass the tasks of a test that submits several. Returns the tasks.
    """
    tasks = {}
    for task_id in task_ids:
        task = farm.api.task(task_id)
        assert task["status"] in (("done",) if all_done else ("done", "failed")), task
        done = [f for f in task["frames"] if f["status"] == "done"]
        not_done = [f for f in task["frames"] if f["status"] != "done"]
        assert all(f["status"] == "failed" and f["error"] for f in not_done), not_done
        assert task["progress"]["done"] == len(done) and task["progress"]["failed"] == len(not_done), task["progress"]
        assert all(f["output"] and f["output_sha256"] and f["render_seconds"] > 0 for f in done), done
        assert len({f["output"] for f in done}) == len(done)
        for frame in done:
            status, body = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame={frame['frame']}")
            assert status == 200, (frame, status, body)
            assert len(body) == frame["output_size"], frame
            assert hashlib.sha256(body).hexdigest() == frame["output_sha256"], frame
        tasks[task_id] = task
    done_on_farm = sum(t["progress"]["done"] for t in farm.api.get("/tasks")["tasks"])
    assert sum(w["frames_done"] for w in farm.api.workers().values()) == done_on_farm
    return tasks


def frame_of(task: dict, number: int) -> dict:
    return next(f for f in task["frames"] if f["frame"] == number)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- 1. a worker dies -------------------------------------------------------------------------------------------------


@needs_blender
def test_worker_killed_mid_frame_its_frames_go_to_the_other(farm, scenes):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 8, name="kill-worker")
    wait_for(lambda: any(f["worker"] == "a" and f["status"] == "done" for f in farm.api.task(task_id)["frames"])
             and any(f["worker"] == "a" and f["status"] == "rendering" for f in farm.api.task(task_id)["frames"]),
             180, "worker a to finish one frame and start another")
    farm.workers["a"].kill_group()  # SIGKILL the worker and its Blender mid-frame
    time.sleep(1)  # a request the coordinator had already read is still answered
    snapshot = farm.api.task(task_id)
    done_by_a = set(frames_by_worker(snapshot).get("a", []))
    held_by_a = {f["frame"] for f in snapshot["frames"] if f["worker"] == "a" and f["status"] != "done"}
    assert held_by_a, snapshot["frames"]
    farm.api.wait_task_ended(task_id, 300)
    task = assert_frames_once(farm, task_id)[task_id]
    by_worker = frames_by_worker(task)
    # a's finished frames stayed done; the frames it held went to b.
    assert set(by_worker.get("a", [])) == done_by_a
    assert held_by_a <= set(by_worker["b"])


# -- 2. Blender crashes ------------------------------------------------------------------------------------------------


@needs_blender
def test_blender_segfault_mid_frame_is_retried_and_the_worker_goes_on(farm, scenes):
    # A few seconds a frame, so the signal lands while Blender renders.
    blend = scenes("slow", frames=3, samples=32)
    farm.start_coordinator(*FAST)
    worker = farm.start_worker("a")
    watcher = BlenderWatcher(farm)
    task_id = farm.api.submit(blend, 1, 3, name="segfault")

    def blender_rendering() -> tuple[int, int] | None:
        rendering = [f["frame"] for f in farm.api.task(task_id)["frames"] if f["status"] == "rendering"]
        children = blender_children(worker.pid)
        return (rendering[0], children[0]) if rendering and len(children) == 1 else None

    crashed_frame, blender_pid = wait_for(blender_rendering, 180, "Blender to render a frame", interval=0.05)
    os.kill(blender_pid, signal.SIGSEGV)
    task = farm.api.wait_task_ended(task_id, 300)
    blender_pids = watcher.stop()["a"]
    assert_frames_once(farm, task_id)
    crashed = frame_of(task, crashed_frame)
    assert (crashed["failures"], crashed["attempts"]) == (1, 2), crashed
    assert all(f["attempts"] == 1 for f in task["frames"] if f["frame"] != crashed_frame), task["frames"]
    log = farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert f"frame {crashed_frame} failed" in log and "SIGSEGV" in log, log[-3000:]
    # The same worker rendered every frame, with a new Blender after the crash, and is still working.
    assert frames_by_worker(task) == {"a": [1, 2, 3]}
    assert blender_pid in blender_pids and len(blender_pids) == 2, blender_pids
    assert worker.popen.poll() is None and farm.api.workers()["a"]["alive"]


# -- 3. Blender hangs --------------------------------------------------------------------------------------------------


@needs_blender
def test_hung_blender_is_stopped_and_its_frame_retried(farm, scenes, tmp_path, monkeypatch):
    # The scene's own Python sleeps forever the first time it reaches frame 2, and leaves a file in the marker folder.
    markers = tmp_path / "markers"
    markers.mkdir()
    blend = scenes("hang", frames=3, hang_frames=[2])
    farm.start_coordinator(*FAST)
    monkeypatch.setenv("RENDERQ_TEST_MARKER_DIR", str(markers))
    worker = farm.start_worker("a", "--allow-blend-python")
    monkeypatch.delenv("RENDERQ_TEST_MARKER_DIR")
    task_id = farm.api.submit(blend, 1, 3, name="hang", needs_python=True, frame_timeout=20, no_progress_timeout=15)
    wait_for(lambda: os.listdir(markers), 180, "Blender to hang on frame 2")
    hung_at = time.monotonic()
    hung = blender_children(worker.pid)
    assert len(hung) == 1, hung
    wait_for(lambda: not pid_alive(hung[0]), 60, "the worker to stop the hung Blender")
    # Stopped by the no-progress limit (15 s) or the frame limit (20 s), with room for a slow machine.
    assert time.monotonic() - hung_at < 45
    task = farm.api.wait_task_ended(task_id, 300)
    assert_frames_once(farm, task_id)
    hung_frame = frame_of(task, 2)
    assert (hung_frame["failures"], hung_frame["attempts"]) == (1, 2), hung_frame
    assert len(os.listdir(markers)) == 1  # the retry did not hang again
    assert "frame 2 failed" in farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert worker.popen.poll() is None and farm.api.workers()["a"]["alive"]


# -- 4. a worker cut off from the coordinator ----------------------------------------------------------------------


def claimed_leases(exchanges: list[Exchange]) -> dict[tuple[int, int], str]:
    """(task id, frame) -> the last lease id the coordinator handed out through the proxy."""
    leases = {}
    for exchange in exchanges:
        # The claim: POST /frames/claim, or the seed's GET /get_task.
        if exchange.path.startswith(("/frames/claim", "/get_task")) and exchange.status == 200:
            claimed = json.loads(exchange.response_body).get("frame")
            if claimed:
                leases[(claimed["task_id"], claimed["frame"])] = claimed["lease_id"]
    return leases


@needs_blender
def test_worker_cut_off_for_30_seconds_loses_its_frames_and_goes_on(farm, scenes):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)  # a lease lasts the alive timeout: 4 s without a heartbeat
    proxy = TcpProxy(farm.port)
    try:
        farm.start_worker("a", "--coordinator", proxy.url)
        farm.start_worker("b")
        task_id = farm.api.submit(blend, 1, 12, name="cut")
        wait_for(lambda: any(f["worker"] == "a" and f["status"] == "rendering"
                             for f in farm.api.task(task_id)["frames"]), 180, "worker a to render a frame")
        proxy.cut("blackhole")
        cut_at = time.monotonic()
        held = {f["frame"] for f in farm.api.task(task_id)["frames"]
                if f["worker"] == "a" and f["status"] in ("leased", "rendering")}
        stale = {lease for (_, frame), lease in claimed_leases(proxy.exchanges).items() if frame in held}
        assert held and stale, (held, stale)
        # The coordinator's clock ends a's leases and b takes the frames over while a is still cut off.
        wait_for(lambda: all(frame_of(farm.api.task(task_id), n)["worker"] not in ("a", None) for n in held), 60,
                 "a's frames to be reassigned")
        time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))
        restored_from = len(proxy.exchanges)
        proxy.restore()
        task = farm.api.wait_task_ended(task_id, 300)
        # After the cut, a carries on: a task only a may render is rendered by a.
        second = farm.api.submit(blend, 1, 2, name="after-cut", workers=["a"])
        assert farm.api.wait_task_ended(second, 180)["status"] == "done"
        tasks = assert_frames_once(farm, task_id, second)
        assert frames_by_worker(tasks[second]) == {"a": [1, 2]}
        assert held <= set(frames_by_worker(task)["b"])
        # a's stale reports were refused (409) or its heartbeat was told the leases were revoked; none was taken.
        after = proxy.exchanges[restored_from:]
        reports = [e for e in after if e.path.startswith(("/update_task", "/upload_frame", "/frames/finish"))
                   and any(lease.encode() in e.request for lease in stale)]
        assert all(e.status == 409 for e in reports), [(e.path, e.status, e.response_body) for e in reports]
        revoked = [lease for e in after if e.path.startswith("/update_worker") and e.status == 200
                   for lease in json.loads(e.response_body).get("revoked", []) if lease in stale]
        assert reports or revoked, "a never reported its stale frames after the cut"
        assert farm.api.workers()["a"]["alive"] and farm.workers["a"].popen.poll() is None
    finally:
        proxy.close()


# -- 5. the coordinator killed mid-upload -------------------------------------------------------------------------


def start_upload(farm: Farm, path: str, size: int) -> socket.socket:
    """Send the head of a POST with a declared Content-Length of `size`; the body is the caller's to send."""
    sock = socket.create_connection(("127.0.0.1", farm.port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{farm.port}\r\nAuthorization: Bearer {farm.api.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n")
    sock.sendall(head.encode())
    return sock


def assert_not_stored(farm: Farm, sha256: str) -> None:
    """No trace of the file: not served, reported missing, not under its final name."""
    status, body = farm.api.call("GET", f"/download_file?sha256={sha256}")
    assert status == 404, (status, body[:200])
    assert farm.api.post("/missing_files", {"sha256": [sha256]})["missing"] == [sha256]
    assert not os.path.exists(os.path.join(farm.data_dir, "files", sha256[:2], sha256))


def assert_blob_store_clean(farm: Farm) -> None:
    """No upload left half-written: nothing in incoming/, and every stored file is named by its own SHA-256."""
    files = os.path.join(farm.data_dir, "files")
    assert os.listdir(os.path.join(files, "incoming")) == []
    for folder, _, names in os.walk(files):
        if os.path.basename(folder) == "incoming":
            continue
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == name, os.path.join(folder, name)


@pytest.mark.parametrize("endpoint", ["upload_file", "upload_blend"])
def test_coordinator_killed_mid_upload_keeps_no_partial_file(farm, endpoint):
    farm.start_coordinator("--disk-reserve", "64M")
    payload = b"BLENDER-v304" + os.urandom(48 * MIB)
    sha256 = hashlib.sha256(payload).hexdigest()
    path = f"/upload_file?sha256={sha256}" if endpoint == "upload_file" else "/upload_blend?filename=big.blend"

    # Killed while the body is on its way: half of it sent, slowly.
    upload = start_upload(farm, path, len(payload))
    half = len(payload) // 2
    for offset in range(0, half, MIB):
        upload.sendall(payload[offset:min(offset + MIB, half)])
        time.sleep(0.02)
    assert_not_stored(farm, sha256)
    farm.coordinator.kill_group()
    upload.close()
    farm.start_coordinator("--disk-reserve", "64M")
    assert_not_stored(farm, sha256)
    assert_blob_store_clean(farm)

    # Killed once the whole body is in, while the coordinator hashes and writes it: all of the file or none.
    incoming = os.path.join(farm.data_dir, "files", "incoming")
    upload = start_upload(farm, path, len(payload))
    upload.sendall(payload)
    wait_for(lambda: os.listdir(incoming), 30, "the coordinator to start writing the upload", interval=0.001)
    farm.coordinator.kill_group()
    upload.close()
    farm.start_coordinator("--disk-reserve", "64M")
    assert_blob_store_clean(farm)
    assert_not_stored(farm, sha256)

    # The same upload, whole and uninterrupted, is stored and served as sent.
    status, answer = farm.api.call("POST", path, raw=payload, timeout=120)
    assert status == 200 and answer["sha256"] == sha256, answer
    status, body = farm.api.call("GET", f"/download_file?sha256={sha256}", timeout=120)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha256
    assert farm.api.post("/missing_files", {"sha256": [sha256]})["missing"] == []


@needs_blender
def test_coordinator_killed_while_a_worker_uploads_a_frame(farm, scenes):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    proxy = TcpProxy(farm.port)
    killed: list[Exchange] = []

    def kill_mid_upload(exchange: Exchange) -> None:
        # Called before each chunk goes on: kill once the head and some of a frame's body have reached it.
        if not killed and exchange.path.startswith(("/frames/finish", "/upload_frame")) and exchange.forwarded > 0:
            killed.append(exchange)
            farm.coordinator.kill_group()

    proxy.on_forward = kill_mid_upload
    try:
        farm.start_worker("a", "--coordinator", proxy.url)
        farm.start_worker("b")
        task_id = farm.api.submit(blend, 1, 8, name="kill-mid-frame-upload")
        wait_for(lambda: killed, 180, "worker a to upload a frame")
        interrupted = killed[0]
        head, _, _ = bytes(interrupted.request).partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        # The coordinator died with the upload's head and only part of its body.
        assert len(head) + 4 <= interrupted.forwarded < len(head) + 4 + length, (interrupted.forwarded, length)
        farm.start_coordinator(*FAST)
        farm.api.wait_task_ended(task_id, 300)
        assert_frames_once(farm, task_id)
        assert interrupted.status is None  # it was never answered
    finally:
        proxy.close()


# -- 6. a full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(farm, tmp_path):
    """A 40 MiB tmpfs for the coordinator's data dir, unmounted after the farm stopped."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (it needs root): {mounted.stderr.strip()}")
    farm.data_dir = str(mount_point / "data")
    try:
        yield str(mount_point)
    finally:
        farm.stop()
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill_disk(path: str, leave: int = 0) -> None:
    """Grow the file at `path` until its disk has at most `leave` bytes free (a full disk when 0)."""
    free = os.statvfs(os.path.dirname(path)).f_bavail * os.statvfs(os.path.dirname(path)).f_frsize
    with open(path, "ab", buffering=0) as filler:
        if free > leave:
            os.posix_fallocate(filler.fileno(), filler.tell(), free - leave)
        if leave == 0:
            for size in (MIB, 4096, 1):
                try:
                    while True:
                        filler.write(b"\0" * size)
                        filler.flush()
                except OSError:
                    pass


def submit_stored(farm: Farm, like_task: int, frame_start: int, frame_end: int, name: str) -> int:
    """Submit the .blend of an earlier task again, without uploading it (it is stored already)."""
    task = farm.api.task(like_task)
    return farm.api.post("/submit_task", {"name": name, "blend_sha256": task["blend_sha256"],
                                          "blend_filename": task["blend_filename"], "frame_start": frame_start,
                                          "frame_end": frame_end})["task_id"]


def integrity(farm: Farm) -> str:
    db = sqlite3.connect(f"file:{os.path.join(farm.data_dir, 'renderq.sqlite3')}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


@needs_blender
def test_full_disk_refuses_uploads_with_507_and_damages_nothing(farm, scenes, small_disk):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST, "--disk-reserve", "2M")
    worker = farm.start_worker("a")
    first = farm.api.submit(blend, 1, 2, name="before-full")
    farm.api.wait_task_ended(first, 180)
    assert_frames_once(farm, first)
    filler = os.path.join(small_disk, "filler")

    # Below the reserve: uploads are refused before anything is written, with a sentence saying why.
    fill_disk(filler, leave=MIB)
    other = b"BLENDER-v304" + os.urandom(2 * MIB)
    status, answer = farm.api.call("POST", "/upload_blend?filename=other.blend", raw=other)
    assert status == 507 and "disk" in answer["error"], (status, answer)
    status, answer = farm.api.call("POST", f"/upload_file?sha256={hashlib.sha256(other).hexdigest()}", raw=other)
    assert status == 507 and "disk" in answer["error"], (status, answer)
    # A task whose files are stored is taken; its frames wait for space to upload.
    second = submit_stored(farm, first, 1, 2, name="while-full")
    wait_for(lambda: "disk is nearly full" in worker.output(), 120, "the worker's frame upload to be refused")

    # Completely full: even the database cannot grow. What was stored stays intact and served.
    fill_disk(filler)
    status, answer = farm.api.call("POST", "/upload_blend?filename=other.blend", raw=other)
    assert status == 507 and "disk" in answer["error"], (status, answer)
    time.sleep(5)  # heartbeats and leases meet the full disk for a while
    assert integrity(farm) == "ok"
    assert_frames_once(farm, first)

    os.unlink(filler)
    status, answer = farm.api.call("POST", "/upload_blend?filename=other.blend", raw=other)
    assert status == 200 and answer["sha256"] == hashlib.sha256(other).hexdigest(), answer
    assert farm.api.wait_task_ended(second, 180)["status"] == "done"
    third = submit_stored(farm, first, 3, 4, name="after-full")
    farm.api.wait_task_ended(third, 180)
    assert_frames_once(farm, first, second, third)
    assert integrity(farm) == "ok"
    assert worker.popen.poll() is None


# -- 7. two coordinators on one data dir -----------------------------------------------------------------------------


def test_second_coordinator_on_the_same_data_dir_refuses_to_start(farm, scenes):
    farm.start_coordinator()
    first_pid = farm.coordinator.pid
    second = subprocess.run(
        [sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", farm.data_dir],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, check=False,
    )
    assert second.returncode != 0
    message = second.stderr.strip()
    assert "another coordinator" in message and "Traceback" not in message, message
    assert len(message.splitlines()) == 1, message
    # The first one still serves, reads and writes, and still holds the data dir.
    assert farm.coordinator.popen.poll() is None
    assert farm.api.get("/health")["ok"]
    if find_blender_or_none() is not None:
        task_id = farm.api.submit(scenes("basic", frames=12), 1, 2, name="still-serving")
        assert farm.api.task(task_id)["status"] == "queued"
    with open(os.path.join(farm.data_dir, "coordinator.lock")) as lock:
        assert lock.read().strip() == str(first_pid)


# -- 8. a worker's clock jumps ---------------------------------------------------------------------------------------


# Python 3.11 sleeps with clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which libfaketime 0.9.10 (Debian 12)
# breaks when DONT_FAKE_MONOTONIC is set: time.sleep fails with EINVAL. The faked worker sleeps through select()
# instead, whose relative timeout libfaketime passes on untouched. Loaded as sitecustomize in that worker only.
SLEEP_SHIM = """\
import select
import time


def _sleep(seconds):
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
"""


# Blender's Python wall clock, moved by the offset in the libfaketime timestamp file ("+5h", "-5h", "+0").
BLENDER_CLOCK_SCRIPT = """\
import os
import re
import time

_real_time = time.time
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _offset():
    try:
        with open(os.environ["FAKETIME_TIMESTAMP_FILE"]) as clock:
            match = re.fullmatch(r"([+-]?[0-9.]+)([smhd]?)", clock.read().strip())
    except (KeyError, OSError):
        return 0.0
    return float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0


time.time = lambda: _real_time() + _offset()


def register():
    pass


def unregister():
    pass
"""


def libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/local/lib/faketime/"
                                                                                 "libfaketime.so.1"))
    return found[0] if found else None


@needs_blender
def test_worker_clock_jumps_do_not_break_leases(farm, scenes, tmp_path, monkeypatch):
    library = libfaketime()
    if library is None:
        pytest.skip("libfaketime is not installed (scripts/setup.sh's test tools install the Debian package faketime)")
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    clock = tmp_path / "worker-a-clock"
    clock.write_text("+0\n")
    # Blender is linked with jemalloc, which hangs under libfaketime at start (a known clash of the two), so the
    # worker's Blender runs without it, and a startup script moves its Python's wall clock by the same file.
    scripts = tmp_path / "blender-scripts"
    (scripts / "startup").mkdir(parents=True)
    (scripts / "startup" / "renderq_test_clock.py").write_text(BLENDER_CLOCK_SCRIPT)
    blender = tmp_path / "blender-with-jumping-clock"
    blender.write_text(f"#!/bin/sh\nexec env -u LD_PRELOAD BLENDER_USER_SCRIPTS={scripts} {find_blender_or_none()} "
                       "\"$@\"\n")
    blender.chmod(0o755)
    shim = tmp_path / "sleep-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
    with monkeypatch.context() as env:
        # Only wall-clock time is faked, as when an admin or NTP sets the clock; monotonic time runs on.
        env.setenv("LD_PRELOAD", library)
        env.setenv("PYTHONPATH", str(shim))
        env.setenv("FAKETIME_TIMESTAMP_FILE", str(clock))
        env.setenv("FAKETIME_NO_CACHE", "1")
        env.setenv("DONT_FAKE_MONOTONIC", "1")
        farm.start_worker("a", "--blender", str(blender))
    farm.start_worker("b")
    # The worker's own frame limits must not see the jumps either.
    task_id = farm.api.submit(blend, 1, 12, name="clock-jumps", frame_timeout=300, no_progress_timeout=120)

    def done_by_a() -> int:
        return len(frames_by_worker(farm.api.task(task_id)).get("a", []))

    wait_for(lambda: any(f["worker"] == "a" and f["status"] == "rendering" for f in farm.api.task(task_id)["frames"]),
             180, "worker a to render a frame")
    for jump in ("+5h", "-5h"):  # five hours ahead mid-frame, then ten hours back
        clock.write_text(jump + "\n")
        wanted = done_by_a() + 2
        wait_for(lambda wanted=wanted: done_by_a() >= wanted, 120, f"worker a to render two frames at {jump}")
    task = farm.api.wait_task_ended(task_id, 300)
    assert_frames_once(farm, task_id)
    # No lease broke: no frame was rendered twice, and the coordinator requeued nothing.
    assert all(f["attempts"] == 1 for f in task["frames"]), task["frames"]
    assert "requeued" not in farm.coordinator.output()
    assert len(frames_by_worker(task)["a"]) >= 5
    # a's reports carried its jumping clock (its frames started hours ahead and behind), and a jump fell inside a
    # frame; frame times still come from Blender's monotonic clock.
    now = farm.api.get("/health")["time"]
    of_a = [f for f in task["frames"] if f["worker"] == "a"]
    assert any(f["started_at"] > now + 4 * HOUR for f in of_a) and any(f["started_at"] < now - 4 * HOUR for f in of_a)
    assert any(abs(f["ended_at"] - f["started_at"]) > 4 * HOUR for f in of_a), of_a
    assert all(0 < f["render_seconds"] < 120 for f in task["frames"]), task["frames"]
    assert farm.api.workers()["a"]["alive"]
