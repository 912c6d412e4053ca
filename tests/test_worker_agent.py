"""Unit tests of the worker loop, with a fake coordinator client and a fake Blender session."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Collection

import pytest

from renderq.http_client import CoordinatorUnreachable, Invalid, LeaseLost, NotFound, TooLarge, Unavailable
from worker import agent as agent_module
from worker.agent import WorkerAgent
from worker.command_line import add_arguments, default_work_dir
from worker.blender_session import FrameResult, SessionError
from worker.lease import Lease
from worker.log_shipper import LogShipper
from worker.reporter import POLL_ADVICE_LIMITS
from worker.settings import DEFAULT_POLL_SECONDS, WorkerSettings

from harness import wait_for

BLEND_BYTES = b"BLENDER-v304" + b"\x01" * 100
BLEND_SHA = hashlib.sha256(BLEND_BYTES).hexdigest()
TEXTURE_BYTES = b"PNG texture"
TEXTURE_SHA = hashlib.sha256(TEXTURE_BYTES).hexdigest()
HDRI_BYTES = b"EXR light" * 10
HDRI_SHA = hashlib.sha256(HDRI_BYTES).hexdigest()
# A packed project: the main file, a texture next to it, and a file from outside the project's folder.
TREE = {
    "project/main.blend": BLEND_BYTES,
    "project/textures/wood.png": TEXTURE_BYTES,
    "_outside_project/home/anna/sky.exr": HDRI_BYTES,
}


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    return wait_for(predicate, timeout, what, interval=0.01)


def frame_info(task_id: int, frame: int, lease_id: str) -> dict:
    return {
        "task_id": task_id,
        "frame": frame,
        "lease_id": lease_id,
        "lease_seconds": 15.0,
        "attempt": 1,
        "task_name": f"task-{task_id}",
        "blend_sha256": BLEND_SHA,
        "blend_filename": f"scene{task_id}.blend",
        "settings": {"threads": 0},
    }


def tree_frame_info(task_id: int, frame: int, lease_id: str) -> dict:
    """A claimed frame of a task that is a tree of files with project/main.blend inside."""
    info = frame_info(task_id, frame, lease_id)
    info.update(blend_filename="main.blend", main_file="project/main.blend", files_count=len(TREE))
    return info


def tree_manifest(tree: dict[str, bytes]) -> dict:
    files = [{"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
             for path, data in tree.items()]
    return {"main_file": "project/main.blend", "files": files}


class FakeClient:
    """Answers like the coordinator; `failures[(call, frame)]` lists exceptions to raise before succeeding."""

    timeout = 2.0

    def __init__(self, frames: list[dict] | None = None) -> None:
        self.poll_advice: dict = {}
        self.lock = threading.Lock()
        self.frames = list(frames or [])
        self.calls: list[tuple] = []
        self.reports: list[tuple[int, str, str, dict]] = []  # (frame, lease, status, fields)
        self.uploads: list[tuple[int, str, bytes]] = []
        self.logs: list[tuple[int, str]] = []
        self.claims: list[int | None] = []
        self.heartbeats: list[list[str]] = []
        # Reports and log lines that rode on heartbeats and claims (a large farm's batch_reports).
        self.riders: list[tuple[str, dict]] = []
        # Added to the answers of registration and heartbeats (e.g. a large farm's batch_reports).
        self.advice: dict = {}
        self.revoke: set[str] = set()
        self.enabled = True
        self.failures: dict[tuple[str, int | None], list[Exception]] = {}
        self.blobs: dict[str, bytes] = {BLEND_SHA: BLEND_BYTES}
        self.manifests: dict[int, dict] = {}
        # frame -> event: that frame's upload waits until the event is set (a slow network).
        self.upload_gates: dict[int, threading.Event] = {}
        # When each claim was made (time.monotonic()), in order.
        self.claim_times: list[float] = []

    def _maybe_fail(self, call: str, frame: int | None = None) -> None:
        with self.lock:
            pending = self.failures.get((call, frame))
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error

    def register_worker(self, name: str, host: str, blender_version: str, cpu_count: int, *,
                        allows_python: bool = False, offered: dict | None = None) -> dict:
        self._maybe_fail("register_worker")
        self.calls.append(("register_worker", name))
        self.allows_python = allows_python
        return {"worker_id": 4, "name": name, "enabled": self.enabled, "heartbeat_seconds": 0.05,
                "lease_seconds": 15.0, **self.advice}

    def update_worker(self, worker_id: int, leases: list[str], *, rendering: tuple = (), logs: tuple = ()) -> dict:
        self._maybe_fail("update_worker")
        with self.lock:
            self.heartbeats.append(list(leases))
            self.riders.extend(("heartbeat", rider) for rider in (*rendering, *logs))
            return {"enabled": self.enabled, "revoked": [lease for lease in leases if lease in self.revoke],
                    **self.advice}

    def download_file(self, sha256: str, dest_path: str) -> None:
        self._maybe_fail("download_file")
        self.calls.append(("download_file", sha256))
        if sha256 not in self.blobs:
            raise NotFound(404, "no such file")
        with open(dest_path, "wb") as out:
            out.write(self.blobs[sha256])

    def add_tree(self, task_id: int, tree: dict[str, bytes]) -> None:
        self.manifests[task_id] = tree_manifest(tree)
        self.blobs.update({hashlib.sha256(data).hexdigest(): data for data in tree.values()})

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: dict | None = None) -> dict:
        # Only what the worker asks through the generic call: the manifest, until the client has its own method.
        assert (method, path) == ("GET", "/task_manifest"), (method, path)
        self._maybe_fail("task_manifest")
        task_id = int(params["task_id"])
        self.calls.append(("task_manifest", task_id))
        if task_id not in self.manifests:
            raise NotFound(404, "no such task")
        return self.manifests[task_id]

    def calls_of(self, name: str) -> list[tuple]:
        return [call for call in self.calls if call[0] == name]

    def claim_frame(self, worker_id: int, prefer_task_id: int | None = None, *, rendering: tuple = (),
                    ahead: bool = False) -> dict:
        self._maybe_fail("claim_frame")
        with self.lock:
            self.riders.extend(("claim", rider) for rider in rendering)
            if not self.enabled:
                return {"frame": None, "wait_reason": "this worker is switched OFF"}
            self.claims.append(prefer_task_id)
            self.claim_times.append(time.monotonic())
            if not self.frames:
                return {"frame": None, "wait_reason": "no frames waiting", **self.poll_advice}
            return {"frame": self.frames.pop(0), "wait_reason": None}

    def update_frame(self, worker_id: int, task_id: int, frame: int, lease_id: str, status: str, **fields) -> dict:
        self._maybe_fail(f"update_frame:{status}", frame)
        with self.lock:
            self.reports.append((frame, lease_id, status, fields))
        return {"frame": {"frame": frame, "status": status}}

    def finish_frame(self, worker_id: int, task_id: int, frame: int, lease_id: str, path: str, filename: str,
                     **fields) -> dict:
        """The one-request delivery: the file, then the done report, as the coordinator stores them together."""
        self.upload_frame(worker_id, task_id, frame, lease_id, path, filename)
        with self.lock:
            self.reports.append((frame, lease_id, "done", {k: v for k, v in fields.items() if v is not None}))
        return {"frame": {"frame": frame, "status": "done"}}

    def upload_frame(self, worker_id: int, task_id: int, frame: int, lease_id: str, path: str, filename: str) -> dict:
        self._maybe_fail("finish_frame", frame)
        gate = self.upload_gates.get(frame)
        if gate is not None:
            assert gate.wait(30), f"the upload of frame {frame} was never let through"
        with open(path, "rb") as stream:
            content = stream.read()
        with self.lock:
            self.uploads.append((frame, filename, content))
        return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "filename": filename}

    def append_log(self, task_id: int, worker_id: int, text: str) -> dict:
        self._maybe_fail("append_log")
        with self.lock:
            self.logs.append((task_id, text))
        return {"size": len(text)}

    def statuses(self, frame: int) -> list[str]:
        with self.lock:
            return [status for number, _, status, _ in self.reports if number == frame]

    def log_text(self) -> str:
        with self.lock:
            return "".join(text for _, text in self.logs)


class FakeSession:
    """Pretends to be Blender and writes f_NNNN.png per frame.

    Class-wide plan, reset per test: `holds[frame]` keeps that frame rendering until the event is set (or the
    render is aborted); a frame in `fail_once` fails the first time it is rendered and takes Blender down with it.
    """

    instances: list["FakeSession"] = []
    holds: dict[int, threading.Event] = {}
    fail_once: set[int] = set()
    start_error: str | None = None
    # What the frame script would find in the file: sentences naming its Python.
    python_in_file: list[str] = []
    # Frames that hang until their limit: they come back as Blender stopped for crossing it.
    hang: set[int] = set()
    # frame -> the exact render time to report for it, instead of the time it really took.
    seconds: dict[int, float] = {}

    def __init__(self, blender: str, blend_path: str, output_dir: str, *, threads: int = 0,
                 on_log_line: Callable[[str], None] | None = None, start_timeout: float = 120.0,
                 allow_python: bool = False, stop_grace: float = 5.0, hidden_values: Collection[str] = (),
                 task_device: str = "") -> None:
        self.blend_path = blend_path
        self.hidden_values = tuple(hidden_values)
        self.output_dir = output_dir
        self.threads = threads
        self.allow_python = allow_python
        self.stop_grace = stop_grace
        self.limits: list[tuple[int, float | None, float | None]] = []
        self.on_log_line = on_log_line or (lambda line: None)
        self.rendering: int | None = None
        self.started: tuple[int, float] | None = None
        self.rendered: list[int] = []
        self.aborts = 0
        self.closed = False
        self._alive = False
        self._abort = threading.Event()
        FakeSession.instances.append(self)

    @property
    def pid(self) -> int | None:
        return 424242 if self._alive else None

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def python_found(self) -> list[str]:
        return list(FakeSession.python_in_file)

    def start(self) -> None:
        assert os.path.isfile(self.blend_path)
        if FakeSession.start_error:
            raise SessionError(FakeSession.start_error)
        self._alive = True
        self.on_log_line("Blender 3.4.1 (fake)")

    def started_at(self, frame: int) -> float | None:
        return self.started[1] if self.started and self.started[0] == frame else None

    def render(self, frame: int, *, frame_timeout: float | None = None,
               no_progress_timeout: float | None = None) -> FrameResult:
        self.limits.append((frame, frame_timeout, no_progress_timeout))
        if frame in FakeSession.hang:
            FakeSession.hang.discard(frame)
            self._alive = False
            error = f"timed out: frame {frame} rendered longer than the task's limit of {frame_timeout:g} s"
            return FrameResult(frame, False, None, None, None, None, error, "hanging\n", timed_out=True)
        self._abort.clear()
        self.rendering = frame
        started = time.time()
        self.on_log_line(f"Fra:{frame} Mem:10M | Rendering")
        self.started = (frame, started)
        hold = FakeSession.holds.get(frame)
        while hold is not None and not hold.wait(0.01) and not self._abort.is_set():
            pass
        self.rendering = None
        ended = time.time()
        if self._abort.is_set():
            return FrameResult(frame, False, None, started, ended, None, "aborted", "tail", aborted=True)
        if frame in FakeSession.fail_once:
            FakeSession.fail_once.discard(frame)
            self._alive = False
            return FrameResult(frame, False, None, started, ended, None, "Blender crashed", "last lines\n")
        self.rendered.append(frame)
        path = os.path.join(self.output_dir, f"f_{frame:04d}.png")
        with open(path, "wb") as out:
            out.write(b"PNG frame %d" % frame)
        return FrameResult(frame, True, path, started, ended, FakeSession.seconds.get(frame, ended - started), None, "")

    def abort(self, grace: float = 5.0) -> None:
        self.aborts += 1
        self._abort.set()

    def close(self, grace: float = 5.0) -> None:
        self.closed = True
        self._alive = False


@pytest.fixture
def sessions():
    return reset_fake_blender()


def reset_fake_blender() -> list[FakeSession]:
    """Forget the fake Blender's plan and sessions of earlier tests; returns the list its sessions are kept in."""
    FakeSession.instances = []
    FakeSession.holds = {}
    FakeSession.fail_once = set()
    FakeSession.start_error = None
    FakeSession.python_in_file = []
    FakeSession.hang = set()
    FakeSession.seconds = {}
    return FakeSession.instances


def make_agent(client: FakeClient, tmp_path, session_factory=FakeSession, **options) -> WorkerAgent:
    settings = dict(poll_seconds=0.05, max_backoff=0.05, log_interval=0.05, abort_grace=0.1, shutdown_seconds=2.0,
                    host="test-host", cpu_count=2)
    settings.update(options)
    return WorkerAgent(client, WorkerSettings("node-01", str(tmp_path / "work"), **settings),
                       session_factory=session_factory)


class Running:
    """An agent's run() in a thread."""

    def __init__(self, agent: WorkerAgent) -> None:
        self.agent = agent
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.agent.run()

    def stop(self, timeout: float = 10.0) -> int | None:
        self.agent.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        return self.exit_code


def test_frames_of_one_task_share_one_session_and_are_reported(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: client.statuses(2) == ["rendering", "done"], "frame 2 done")
    wait_until(lambda: sessions and sessions[0].closed, "the idle session to close")
    assert running.stop() == 0

    assert len(sessions) == 1 and sessions[0].rendered == [1, 2]
    assert client.statuses(1) == ["rendering", "done"]
    done = [fields for number, _, status, fields in client.reports if status == "done"]
    assert all(f["render_seconds"] is not None and f["started_at"] <= f["ended_at"] for f in done)
    assert [(frame, name) for frame, name, _ in client.uploads] == [(1, "f_0001.png"), (2, "f_0002.png")]
    # The next frame was claimed while frame 1 rendered, preferring its task.
    assert client.claims[:2] == [None, 7]
    assert [call for call in client.calls if call[0] == "download_file"] == [("download_file", BLEND_SHA)]
    # Uploaded frames and the finished task's folder are gone; the cached .blend stays.
    work = tmp_path / "work"
    assert not os.listdir(work / "output") and not os.listdir(work / "tasks")
    assert os.path.isfile(work / "files" / BLEND_SHA)
    log = client.log_text()
    assert "[node-01] Fra:1 Mem:10M | Rendering\n" in log and "[node-01] Fra:2" in log


def test_on_a_large_farm_starts_and_log_lines_ride_on_claims_and_heartbeats(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    client.advice = {"batch_reports": True}
    FakeSession.holds[2] = gate = threading.Event()
    running = Running(make_agent(client, tmp_path, log_interval=60.0))
    wait_until(lambda: client.statuses(1) == ["done"], "frame 1 done")
    wait_until(lambda: any(rider.get("lease_id") == "L2" for _, rider in client.riders), "frame 2's start to ride")
    gate.set()
    wait_until(lambda: client.statuses(2) == ["done"], "frame 2 done")
    wait_until(lambda: any("frame 2 done" in rider.get("text", "") for _, rider in client.riders),
               "frame 2's log line to ride on a heartbeat")
    posted_while_running = list(client.logs)  # at stop, what is left is posted: the heartbeats have ended
    assert running.stop() == 0
    # No report of its own for a frame's start, no log post of its own while the heartbeats carry them.
    assert all(status == "done" for _, _, status, _ in client.reports)
    starts = [rider for _, rider in client.riders if "lease_id" in rider]
    assert {rider["lease_id"] for rider in starts} <= {"L1", "L2"} and all(r["started_at"] for r in starts)
    assert posted_while_running == []
    ridden = "".join(rider["text"] for _, rider in client.riders if "text" in rider)
    assert "[node-01] Fra:2" in ridden and "[node-01] frame 1 done" in ridden


def test_tree_task_fetches_its_manifest_once_and_opens_the_main_file_inside_the_tree(tmp_path, sessions):
    client = FakeClient([tree_frame_info(9, 1, "L1"), tree_frame_info(9, 2, "L2")])
    client.add_tree(9, TREE)
    FakeSession.holds[1] = gate = threading.Event()
    FakeSession.fail_once.add(1)  # Blender dies on frame 1: frame 2 needs a new session on the same tree
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "rendering" in client.statuses(1), "frame 1 rendering")

    work = tmp_path / "work"
    main = sessions[0].blend_path
    assert main == str(work / "tasks" / "9" / "project" / "main.blend")
    # `//textures/wood.png` and the packed outside file resolve inside the tree.
    with open(os.path.join(os.path.dirname(main), "textures", "wood.png"), "rb") as stream:
        assert stream.read() == TEXTURE_BYTES
    assert os.path.isfile(work / "tasks" / "9" / "_outside_project" / "home" / "anna" / "sky.exr")
    gate.set()
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    wait_until(lambda: not os.listdir(work / "tasks"), "the finished task's tree to be removed")
    running.stop()

    assert client.statuses(1) == ["rendering", "failed"]
    assert len(sessions) == 2 and sessions[1].blend_path == main
    assert client.calls_of("task_manifest") == [("task_manifest", 9)]
    assert sorted(sha for _, sha in client.calls_of("download_file")) == sorted([BLEND_SHA, TEXTURE_SHA, HDRI_SHA])
    assert sorted(os.listdir(work / "files")) == sorted([BLEND_SHA, TEXTURE_SHA, HDRI_SHA])


def test_tree_downloads_and_cache_hits_are_logged_per_task(tmp_path, sessions, caplog):
    client = FakeClient([tree_frame_info(9, 1, "L1"), tree_frame_info(10, 1, "M1")])
    client.add_tree(9, TREE)
    client.add_tree(10, {**TREE, "project/textures/new.png": b"another texture"})
    caplog.set_level(logging.INFO, logger="renderq.worker")
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: len(client.uploads) == 2, "both frames uploaded")
    running.stop()
    assert client.calls_of("task_manifest") == [("task_manifest", 9), ("task_manifest", 10)]
    assert len(client.calls_of("download_file")) == 4  # task 10 only lacked its new texture
    assert "task 9: 3 files (" in caplog.text and "downloaded 3 (" in caplog.text
    assert "task 10: 4 files (" in caplog.text and "downloaded 1 (15 B), found 3 in the cache" in caplog.text


def test_the_client_manifest_method_is_used_when_there_is_one(tmp_path, sessions):
    class NewerClient(FakeClient):
        def task_manifest(self, task_id: int) -> dict:
            self.calls.append(("task_manifest method", task_id))
            return self.manifests[task_id]

    client = NewerClient([tree_frame_info(9, 1, "L1")])
    client.add_tree(9, TREE)
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    running.stop()
    assert client.calls_of("task_manifest method") == [("task_manifest method", 9)]
    assert client.calls_of("task_manifest") == []


def test_old_style_claim_without_main_file_is_a_one_file_tree(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    running.stop()
    assert sessions[0].blend_path == str(tmp_path / "work" / "tasks" / "7" / "scene7.blend")
    assert client.calls_of("task_manifest") == []
    assert client.calls_of("download_file") == [("download_file", BLEND_SHA)]


def test_a_download_that_fails_its_hash_check_fails_the_frame(tmp_path, sessions):
    client = FakeClient([tree_frame_info(9, 1, "L1")])
    client.add_tree(9, TREE)
    client.blobs[TEXTURE_SHA] = b"not the texture"
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "failed" in client.statuses(1), "frame 1 failed")
    wait_until(lambda: not os.listdir(tmp_path / "work" / "tasks"), "the half-built tree to be removed")
    running.stop()
    failed = next(fields for _, _, status, fields in client.reports if status == "failed")
    assert "SHA-256" in failed["error"] and TEXTURE_SHA in failed["error"]
    assert sessions == []  # Blender was never started on an incomplete tree
    assert TEXTURE_SHA not in os.listdir(tmp_path / "work" / "files")


def test_a_hostile_manifest_fails_the_frame(tmp_path, sessions):
    client = FakeClient([tree_frame_info(9, 1, "L1")])
    client.add_tree(9, {**TREE, "../escape.py": b"import os"})
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "failed" in client.statuses(1), "frame 1 failed")
    running.stop()
    failed = next(fields for _, _, status, fields in client.reports if status == "failed")
    assert "'../escape.py'" in failed["error"]
    assert not os.path.exists(tmp_path / "work" / "escape.py") and sessions == []


def test_unreachable_manifest_is_retried(tmp_path, sessions):
    client = FakeClient([tree_frame_info(9, 1, "L1")])
    client.add_tree(9, TREE)
    client.failures[("task_manifest", None)] = [CoordinatorUnreachable("http://farm", "connection refused")] * 2
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    running.stop()
    assert client.calls_of("task_manifest") == [("task_manifest", 9)]


def test_blend_is_placed_under_its_name_and_threads_are_passed(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    agent = make_agent(client, tmp_path, threads=3)
    running = Running(agent)
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    running.stop()
    assert os.path.basename(sessions[0].blend_path) == "scene7.blend"
    assert sessions[0].threads == 3


def test_next_frame_of_another_task_gets_its_own_session(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(8, 1, "M1")])
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: len(client.uploads) == 2, "both frames uploaded")
    running.stop()
    assert len(sessions) == 2
    assert sessions[0].closed and sessions[0].rendered == [1]
    assert os.path.basename(sessions[1].blend_path) == "scene8.blend"


def test_revoked_lease_aborts_the_current_render_and_drops_it(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    agent = make_agent(client, tmp_path)
    FakeSession.holds[1] = threading.Event()
    running = Running(agent)
    wait_until(lambda: "rendering" in client.statuses(1), "the rendering report")
    client.revoke.add("L1")
    wait_until(lambda: sessions[0].aborts >= 1, "the session to be aborted")
    wait_until(lambda: not agent.held_leases(), "the lease to be dropped")
    client.frames.append(frame_info(7, 2, "L2"))
    wait_until(lambda: "done" in client.statuses(2), "the worker to go on with frame 2")
    assert running.stop() == 0
    assert client.statuses(1) == ["rendering"]
    assert [frame for frame, _, _ in client.uploads] == [2]


def test_conflict_on_done_drops_the_frame_quietly(tmp_path, sessions, caplog):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    # The delivery is refused, and so is the failure report that follows it: the lease is gone.
    client.failures[("finish_frame", 1)] = [LeaseLost(409, "the lease is no longer current")]
    client.failures[("update_frame:failed", 1)] = [LeaseLost(409, "the lease is no longer current")]
    caplog.set_level(logging.INFO, logger="renderq.worker")
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    assert running.stop() == 0
    assert client.statuses(1) == ["rendering"]
    assert "lease lost" in caplog.text


def test_unreachable_coordinator_is_retried_until_the_frame_is_uploaded(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    client.failures[("finish_frame", 1)] = ([CoordinatorUnreachable("http://farm", "connection refused")] * 3
                                            + [Unavailable(503, "busy"), CoordinatorUnreachable("x", "y")])
    client.failures[("claim_frame", None)] = [CoordinatorUnreachable("http://farm", "connection refused")]
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    assert running.stop() == 0
    assert client.uploads == [(1, "f_0001.png", b"PNG frame 1")]
    assert client.statuses(1) == ["rendering", "done"]


def test_refused_upload_reports_the_frame_failed(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    client.failures[("finish_frame", 1)] = [TooLarge(413, "the file is too large")]
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "failed" in client.statuses(1), "frame 1 failed")
    running.stop()
    failed = [fields for _, _, status, fields in client.reports if status == "failed"]
    assert "too large" in failed[0]["error"]


def test_output_name_taken_by_another_frame_reports_the_frame_failed(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    client.failures[("finish_frame", 1)] = [LeaseLost(409, "frame 1 of task 7 cannot have the output "
                                                                  "'f_0001.png': frame 3 has 'F_0001.PNG' already")]
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    assert running.stop() == 0
    assert client.statuses(1) == ["rendering", "failed"]
    failed = [fields for _, _, status, fields in client.reports if status == "failed"]
    assert "frame 3 has 'F_0001.PNG' already" in failed[0]["error"]


def test_failed_render_is_reported_with_its_log_tail_and_blender_restarted(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    FakeSession.fail_once.add(1)
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    running.stop()
    assert client.statuses(1) == ["rendering", "failed"]
    failed = next(fields for number, _, status, fields in client.reports if status == "failed")
    assert failed == {"error": "Blender crashed", "log_tail": "last lines\n"}
    assert len(sessions) == 2  # the dead Blender was replaced for frame 2 of the same task


def test_blender_that_cannot_open_the_file_fails_the_frame(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    FakeSession.start_error = "Blender exited with code 1 before it was ready\n--- last lines ---\nError: bad file"
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "failed" in client.statuses(1), "frame 1 failed")
    running.stop()
    failed = next(fields for _, _, status, fields in client.reports if status == "failed")
    assert failed["error"] == "Blender exited with code 1 before it was ready"
    assert "Error: bad file" in failed["log_tail"]
    assert "cannot be rendered here" in client.log_text()


def test_switched_off_worker_releases_its_prefetched_frame_and_claims_nothing(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2"), frame_info(7, 3, "L3")])
    agent = make_agent(client, tmp_path)
    FakeSession.holds[1] = gate = threading.Event()
    running = Running(agent)
    wait_until(lambda: set(agent.held_leases()) == {"L1", "L2"}, "frame 2 to be prefetched")
    client.enabled = False
    wait_until(lambda: client.statuses(2) == ["released"], "frame 2 given back")
    gate.set()  # the frame being rendered is finished
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    claims = len(client.claims)
    # Several heartbeats (each a chance to claim while OFF) pass before we look again.
    beats = len(client.heartbeats)
    wait_until(lambda: len(client.heartbeats) >= beats + 5, "five more heartbeats")
    assert len(client.claims) == claims and client.statuses(3) == []
    assert not agent.enabled and not agent.held_leases()
    client.enabled = True
    wait_until(lambda: "done" in client.statuses(3), "frame 3 once switched ON again")
    assert running.stop() == 0


def test_first_signal_releases_every_lease_and_exits_zero(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    agent = make_agent(client, tmp_path)
    previous = agent.install_signal_handlers()

    def send_signal_when_busy() -> None:
        wait_until(lambda: set(agent.held_leases()) == {"L1", "L2"}, "frame 2 to be prefetched")
        os.kill(os.getpid(), signal.SIGTERM)

    FakeSession.holds[1] = threading.Event()
    sender = threading.Thread(target=send_signal_when_busy, daemon=True)
    try:
        sender.start()
        exit_code = agent.run()  # in the main thread, where signal handlers run
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sender.join(5)
    assert exit_code == 0
    assert sessions[0].aborts >= 1 and sessions[0].closed
    assert client.statuses(1) == ["rendering", "released"]
    assert client.statuses(2) == ["released"]
    assert client.uploads == []


def test_second_signal_kills_blender_and_exits_at_once(tmp_path, sessions, monkeypatch):
    client = FakeClient()
    agent = make_agent(client, tmp_path)
    session = FakeSession("blender", __file__, str(tmp_path))
    session._alive = True
    agent.loop._session = session
    killed: list[tuple[int, int]] = []
    exits: list[int] = []

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited()

    monkeypatch.setattr(agent_module.os, "killpg", lambda pid, signum: killed.append((pid, signum)))
    monkeypatch.setattr(agent_module.os, "_exit", fake_exit)
    previous = agent.install_signal_handlers()
    try:
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)
        wait_until(lambda: agent.stopping, "the stop to be requested")
        with pytest.raises(Exited):
            handler(signal.SIGINT, None)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    assert killed == [(424242, signal.SIGKILL)]
    assert exits == [1]


# -- Blender does not wait on the network between frames -------------------------------------------------------------


def test_the_next_frame_renders_while_the_last_one_is_uploaded_and_its_lease_stays_held(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    client.upload_gates[1] = upload = threading.Event()
    FakeSession.holds[2] = frame_2 = threading.Event()
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: "rendering" in client.statuses(2), "frame 2 to render while frame 1 is being uploaded")
    assert client.statuses(1) == ["rendering"] and client.uploads == []
    # Frame 1 is still this worker's: its lease is renewed until it is delivered.
    beats = len(client.heartbeats)
    wait_until(lambda: len(client.heartbeats) > beats and "L1" in client.heartbeats[-1], "a heartbeat renewing L1")
    upload.set()
    wait_until(lambda: client.statuses(1) == ["rendering", "done"], "frame 1 done")
    assert sessions[0].rendering == 2 and "L1" not in agent.held_leases()
    frame_2.set()
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    wait_until(lambda: not os.listdir(tmp_path / "work" / "tasks"), "the finished task's tree to be removed")
    assert running.stop() == 0
    assert [frame for frame, _, _ in client.uploads] == [1, 2] and len(sessions) == 1
    assert not os.listdir(tmp_path / "work" / "output")


def test_only_one_rendered_frame_waits_for_the_network_at_a_time(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2"), frame_info(7, 3, "L3")])
    client.upload_gates[1] = upload = threading.Event()
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: sessions and sessions[0].rendered == [1, 2], "frame 2 rendered while frame 1 uploads")
    time.sleep(0.3)
    # Frame 2 is rendered, but frame 3 waits until frame 1 is delivered: the worker renders no further ahead.
    assert sessions[0].rendered == [1, 2] and client.statuses(3) == []
    upload.set()
    wait_until(lambda: all("done" in client.statuses(frame) for frame in (1, 2, 3)), "every frame done")
    assert running.stop() == 0
    assert [frame for frame, _, _ in client.uploads] == [1, 2, 3]


def test_a_stop_lets_the_frame_on_its_way_be_delivered_and_gives_back_the_one_rendering(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    client.upload_gates[1] = upload = threading.Event()
    FakeSession.holds[2] = threading.Event()
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: "rendering" in client.statuses(2), "frame 2 rendering while frame 1 uploads")
    agent.request_stop()
    wait_until(lambda: sessions[0].aborts >= 1, "the render of frame 2 to be aborted")
    upload.set()
    running.thread.join(10)
    assert running.exit_code == 0
    assert client.statuses(1) == ["rendering", "done"]
    assert client.statuses(2) == ["rendering", "released"]
    assert not agent.held_leases()


def test_the_next_frame_is_claimed_shortly_before_the_current_one_should_end(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2"), frame_info(7, 3, "L3")])
    # Frame 1 "took" 3 s here, so frame 2 is expected to end 3 s after it started: frame 3 is claimed then, less
    # the lead (0.5 s + a tenth of the frame), not as soon as frame 2 starts.
    FakeSession.seconds[1] = 3.0
    FakeSession.holds[2] = frame_2 = threading.Event()
    agent = make_agent(client, tmp_path)
    running = Running(agent)
    wait_until(lambda: "rendering" in client.statuses(2), "frame 2 rendering")
    started = time.monotonic()
    wait_until(lambda: "L3" in agent.held_leases(), "frame 3 to be claimed ahead", timeout=15)
    claimed_after = client.claim_times[-1] - started
    assert 1.2 < claimed_after < 5.0, claimed_after
    frame_2.set()
    wait_until(lambda: "done" in client.statuses(3), "frame 3 done")
    assert running.stop() == 0
    # One claim at the start, frame 2 ahead of frame 1's end (nothing to expect it from), frame 3 ahead of frame 2's.
    assert client.claims[:3] == [None, 7, 7]


def test_a_frame_that_ends_before_its_claim_time_leaves_the_claim_to_the_main_loop(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2"), frame_info(7, 3, "L3")])
    FakeSession.seconds[1] = 30.0  # frame 2 is expected to take long, and ends at once
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(3), "frame 3 done", timeout=10)
    assert running.stop() == 0
    assert sessions[0].rendered == [1, 2, 3]


def test_registration_waits_for_the_coordinator(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    client.failures[("register_worker", None)] = [CoordinatorUnreachable("http://farm", "connection refused")] * 3
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(1), "frame 1 done")
    assert running.stop() == 0


def test_refused_registration_exits_with_an_error(tmp_path, sessions):
    client = FakeClient()
    client.failures[("register_worker", None)] = [Invalid(400, "bad name")]
    assert make_agent(client, tmp_path).run() == 1


def test_log_shipper_keeps_lines_in_order_while_the_coordinator_is_away():
    sent: list[tuple[int, str]] = []
    failures = [CoordinatorUnreachable("http://farm", "connection refused")] * 2

    def send(task_id: int, text: str) -> None:
        if failures:
            raise failures.pop(0)
        sent.append((task_id, text))

    shipper = LogShipper(send, "[w] ", interval=0.02, max_backoff=0.05)
    shipper.start()
    shipper.add(1, "one\n")
    shipper.add(1, "two")
    shipper.add(2, "other task")
    assert shipper.flush(timeout=5)
    shipper.add(1, "three")
    shipper.close(timeout=5)
    assert sent == [(1, "[w] one\n[w] two\n"), (2, "[w] other task\n"), (1, "[w] three\n")]


def test_log_shipper_drops_the_oldest_lines_beyond_its_cap():
    sent: list[str] = []
    shipper = LogShipper(lambda task_id, text: sent.append(text), "", interval=10, max_buffer_chars=20)
    for number in range(10):
        shipper.add(1, f"line {number}")
    shipper.start()
    shipper.close(timeout=5)
    text = "".join(sent)
    assert "line 9\n" in text and "line 0\n" not in text and "lost" in text


def test_arguments_take_their_defaults_from_the_environment(monkeypatch):
    import argparse

    monkeypatch.setenv("RENDERQ_COORDINATOR", "http://farm:5000")
    monkeypatch.setenv("RENDERQ_WORKER_NAME", "node-07")
    monkeypatch.setenv("RENDERQ_THREADS", "4")
    monkeypatch.delenv("RENDERQ_WORK_DIR", raising=False)
    monkeypatch.setenv("RENDERQ_CACHE_SIZE", "500M")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.coordinator, args.name, args.threads, args.work_dir) == ("http://farm:5000", "node-07", 4, None)
    assert args.cache_size == 500 * 1024**2
    assert parser.parse_args(["--cache-size", "2G"]).cache_size == 2 * 1024**3
    monkeypatch.delenv("RENDERQ_CACHE_SIZE")
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    assert defaults.parse_args([]).cache_size == 20 * 1024**3
    for bad in ("lots", "0", "-5G"):
        with pytest.raises(SystemExit):
            defaults.parse_args(["--cache-size", bad])
    assert default_work_dir("node-07").endswith(os.path.join("renderq", "worker-node-07"))
    assert parser.parse_args(["--threads", "2", "--name", "x"]).threads == 2
    # No setting: the worker waits as long as the coordinator advises.
    assert defaults.parse_args([]).poll_seconds is None
    monkeypatch.setenv("RENDERQ_POLL_SECONDS", "0.25")
    polling = argparse.ArgumentParser()
    add_arguments(polling)
    assert polling.parse_args([]).poll_seconds == 0.25
    assert polling.parse_args(["--poll-seconds", "3"]).poll_seconds == 3.0


def test_an_idle_worker_asks_again_as_often_as_the_coordinator_advises(tmp_path):
    client = FakeClient([])
    agent = make_agent(client, tmp_path, poll_seconds=None)
    assert agent.idle_seconds == DEFAULT_POLL_SECONDS
    client.poll_advice = {"poll_seconds": 0.05}
    running = Running(agent)
    wait_until(lambda: len(client.claims) >= 6, "claims every 0.05 s")
    client.poll_advice = {"poll_seconds": 1e9}  # nonsense is clamped, not obeyed
    wait_until(lambda: agent.idle_seconds == POLL_ADVICE_LIMITS[1], "advice taken")
    claims = len(client.claims)
    time.sleep(0.5)
    assert len(client.claims) == claims
    assert running.stop() == 0
    # The owner's own setting wins over any advice.
    fixed = make_agent(FakeClient([]), tmp_path, poll_seconds=0.5)
    fixed.reporter.take_poll_advice({"poll_seconds": 5.0})
    assert fixed.idle_seconds == 0.5


# -- limits and Python in .blend files ------------------------------------------------------------------------------


def test_a_frame_past_its_limit_fails_with_the_reason_and_the_next_frame_gets_a_new_blender(tmp_path, sessions):
    limits = {"frame_timeout": 20, "no_progress_timeout": 30}
    client = FakeClient([{**frame_info(7, 1, "L1"), **limits}, {**frame_info(7, 2, "L2"), **limits}])
    FakeSession.hang.add(1)
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    assert running.stop() == 0
    assert client.statuses(1) == ["failed"]
    failed = next(fields for number, _, status, fields in client.reports if status == "failed")
    assert failed == {"error": "timed out: frame 1 rendered longer than the task's limit of 20 s",
                      "log_tail": "hanging\n"}
    assert sessions[0].limits == [(1, 20.0, 30.0)]
    assert len(sessions) == 2 and sessions[1].rendered == [2]
    assert "frame 1 failed: timed out" in client.log_text()


def test_claims_without_limits_render_without_them():
    lease = Lease.from_claim(frame_info(7, 1, "L1"))
    assert (lease.frame_timeout, lease.no_progress_timeout, lease.needs_python) == (None, None, False)
    for bad in (None, "soon", -5, 0, True, float("inf"), float("nan"), [3]):
        odd = Lease.from_claim({**frame_info(7, 1, "L1"), "frame_timeout": bad,
                                             "no_progress_timeout": bad, "needs_python": "yes"})
        assert (odd.frame_timeout, odd.no_progress_timeout, odd.needs_python) == (None, None, False), bad
    given = Lease.from_claim({**frame_info(7, 1, "L1"), "frame_timeout": "90.5",
                                           "no_progress_timeout": 30, "needs_python": True})
    assert (given.frame_timeout, given.no_progress_timeout, given.needs_python) == (90.5, 30.0, True)


def test_a_file_with_python_is_given_back_as_needing_it_and_its_task_is_not_opened_again(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    FakeSession.python_in_file = ["the text block 'rig.py' is registered to run when the file is opened"]
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: client.statuses(2) == ["released"], "frame 2 given back")
    assert running.stop() == 0
    assert client.allows_python is False
    assert client.statuses(1) == ["released"]
    released = [fields for _, _, status, fields in client.reports if status == "released"]
    assert all(fields["needs_python"] is True for fields in released)
    assert "'rig.py'" in released[0]["error"] and "--allow-blend-python" in released[0]["error"]
    # Blender opened the file once, with scripts off, and rendered nothing; frame 2 never started Blender.
    assert len(sessions) == 1 and not sessions[0].allow_python and sessions[0].rendered == []
    assert sessions[0].closed and client.uploads == []
    assert "frame 1 not rendered on this worker: the file holds Python" in client.log_text()


def test_a_worker_that_allows_python_runs_it_only_for_tasks_marked_as_needing_it(tmp_path, sessions):
    client = FakeClient([frame_info(7, 1, "L1")])
    FakeSession.python_in_file = ["1 scripted driver needs Python (e.g. 'wiggle(frame)' on Object 'Cube')"]
    running = Running(make_agent(client, tmp_path, allow_python=True))
    wait_until(lambda: client.statuses(1) == ["released"], "frame 1 given back")
    assert client.allows_python is True
    released = next(fields for _, _, status, fields in client.reports if status == "released")
    assert released["needs_python"] is True and "marked as needing Python" in released["error"]
    assert not sessions[0].allow_python
    # The coordinator marked the task: its frames now come with needs_python.
    client.frames.append({**frame_info(7, 1, "L3"), "needs_python": True})
    wait_until(lambda: "done" in client.statuses(1), "frame 1 rendered with Python")
    assert running.stop() == 0
    assert len(sessions) == 2 and sessions[1].allow_python and sessions[1].rendered == [1]


def test_a_needs_python_claim_on_a_worker_without_the_flag_is_given_back(tmp_path, sessions):
    client = FakeClient([{**frame_info(7, 1, "L1"), "needs_python": True}])
    FakeSession.python_in_file = ["the text block 'rig.py' is registered to run when the file is opened"]
    running = Running(make_agent(client, tmp_path))
    wait_until(lambda: client.statuses(1) == ["released"], "frame 1 given back")
    assert running.stop() == 0
    assert not sessions[0].allow_python and sessions[0].rendered == []


def test_a_file_without_python_renders_on_either_kind_of_worker(tmp_path, sessions):
    client = FakeClient([{**frame_info(7, 1, "L1"), "needs_python": True}, frame_info(7, 2, "L2")])
    running = Running(make_agent(client, tmp_path, allow_python=True))
    wait_until(lambda: "done" in client.statuses(2), "frame 2 done")
    assert running.stop() == 0
    # Frame 2's claim no longer said needs_python: its Blender runs with scripts off, so it is a new one.
    assert [(s.allow_python, s.rendered) for s in sessions] == [(True, [1]), (False, [2])]


def test_a_render_the_session_refuses_for_its_python_is_given_back_too(tmp_path, sessions):
    class RefusingSession(FakeSession):
        def render(self, frame, **limits):
            return FrameResult(frame, False, None, None, None, None, "Frame 1 was not rendered: the file holds "
                               "Python this session may not run", "", needs_python=True)

    client = FakeClient([frame_info(7, 1, "L1"), frame_info(7, 2, "L2")])
    running = Running(make_agent(client, tmp_path, session_factory=RefusingSession))
    wait_until(lambda: client.statuses(2) == ["released"], "frame 2 given back")
    assert running.stop() == 0
    assert client.statuses(1) == ["released"]
    assert all(fields["needs_python"] for _, _, status, fields in client.reports if status == "released")
    assert len(sessions) == 1 and sessions[0].closed


def test_a_rendered_file_that_is_a_link_is_not_uploaded(tmp_path, sessions):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for the farm")

    class LinkingSession(FakeSession):
        def render(self, frame, **limits):
            result = super().render(frame, **limits)
            os.remove(result.output_path)
            os.symlink(secret, result.output_path)
            return result

    client = FakeClient([frame_info(7, 1, "L1")])
    running = Running(make_agent(client, tmp_path, session_factory=LinkingSession))
    wait_until(lambda: "failed" in client.statuses(1), "frame 1 failed")
    running.stop()
    failed = next(fields for _, _, status, fields in client.reports if status == "failed")
    assert "symbolic link" in failed["error"] and client.uploads == []
    assert secret.read_bytes() == b"not for the farm"


def test_allow_blend_python_flag_and_its_environment_variable(monkeypatch):
    import argparse

    monkeypatch.delenv("RENDERQ_ALLOW_BLEND_PYTHON", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).allow_blend_python is False
    assert parser.parse_args(["--allow-blend-python"]).allow_blend_python is True
    help_text = " ".join(parser.format_help().split())
    assert "RISKY" in help_text and "trust every submitter" in help_text
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("RENDERQ_ALLOW_BLEND_PYTHON", value)
        env_parser = argparse.ArgumentParser()
        add_arguments(env_parser)
        assert env_parser.parse_args([]).allow_blend_python is expected, value
    # The variable can be overruled for one run.
    monkeypatch.setenv("RENDERQ_ALLOW_BLEND_PYTHON", "1")
    overruled = argparse.ArgumentParser()
    add_arguments(overruled)
    assert overruled.parse_args(["--no-allow-blend-python"]).allow_blend_python is False


def test_nothing_in_the_worker_imports_its_command_line():
    """command_line.py sits on top of the worker: it builds the settings and starts the agent, never the reverse."""
    import ast
    import glob

    folder = os.path.dirname(agent_module.__file__)
    importers = []
    for path in glob.glob(os.path.join(folder, "*.py")):
        if os.path.basename(path) in ("command_line.py", "__main__.py"):
            continue
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        if any(name == "worker.command_line" for name in names):
            importers.append(os.path.basename(path))
    assert importers == []
