"""The whole farm, for real: coordinator over HTTP, workers launching the real Blender, scenes made by Blender."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from harness import ROOT, Farm, find_blender_or_none, wait_for

BLENDER = find_blender_or_none()
# Each test with a farm runs twice: its coordinator on SQLite, then on PostgreSQL (conftest.py).
pytestmark = [pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)"),
              pytest.mark.both_databases]

FAST = ("--heartbeat", "1", "--alive-timeout", "4")


class BlenderWatcher:
    """Records every Blender process each worker starts, by scanning /proc for the worker's children."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.seen: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, worker in list(self.farm.workers.items()):
                self.seen.setdefault(name, set()).update(blender_children(worker.pid))

    def stop(self) -> dict[str, set[int]]:
        self._stop.set()
        self._thread.join()
        return self.seen


def blender_children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        if parent == pid and "blender" in name.lower():
            children.append(int(entry))
    return children


def frames_by_worker(task: dict) -> dict[str, list[int]]:
    result: dict[str, list[int]] = {}
    for frame in task["frames"]:
        if frame["status"] == "done":
            result.setdefault(frame["worker"], []).append(frame["frame"])
    return result


def assert_every_frame_once(farm: Farm, task: dict) -> None:
    """Each frame done exactly once: counted once on the task and once across all workers."""
    total = task["progress"]["total"]
    assert task["status"] == "done", task
    assert task["progress"]["done"] == total
    assert all(f["status"] == "done" and f["output"] and f["render_seconds"] > 0 for f in task["frames"])
    assert len({f["output"] for f in task["frames"]}) == total
    assert sum(w["frames_done"] for w in farm.api.workers().values()) == total


def test_two_workers_share_a_task_one_blender_each(farm, scenes, tmp_path):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    farm.start_worker("b")
    watcher = BlenderWatcher(farm)
    task_id = farm.api.submit(blend, 1, 12, name="share")
    task = farm.api.wait_task_ended(task_id, 300)
    blender_pids = watcher.stop()
    assert_every_frame_once(farm, task)
    by_worker = frames_by_worker(task)
    assert set(by_worker) == {"a", "b"}, by_worker
    assert all(f["attempts"] == 1 for f in task["frames"])
    # One Blender process per worker rendered all of that worker's frames of the task.
    assert {name: len(pids) for name, pids in blender_pids.items()} == {"a": 1, "b": 1}
    assert all(len(frames) >= 2 for frames in by_worker.values())
    # The frames come back with Blender's own names, as valid PNG images.
    out = tmp_path / "out"
    from renderq.cli import main as renderq

    assert renderq(["download", str(task_id), str(out), *farm.cli_flags()]) == 0
    names = sorted(os.listdir(out))
    assert names == [f"f_{n:04d}.png" for n in range(1, 13)]
    for name in names:
        with Image.open(out / name) as image:
            image.verify()
    # Exact frame times come from Blender's handlers and reach the ETA and the log.
    log = farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert "[a]" in log and "[b]" in log


def test_manual_assignment_only_named_worker_renders(farm, scenes):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 4, name="pinned", workers=["b"])
    task = farm.api.wait_task_ended(task_id, 300)
    assert_every_frame_once(farm, task)
    assert frames_by_worker(task) == {"b": [1, 2, 3, 4]}


def test_coordinator_killed_and_restarted_loses_nothing(farm, scenes):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 12, name="kill-coordinator")
    wait_for(lambda: farm.api.task(task_id)["progress"]["done"] >= 3, 180, "three frames done")
    farm.coordinator.kill_group()
    # Let every worker find the coordinator gone before it comes back.
    wait_for(lambda: all("heartbeat failed" in worker.output() for worker in farm.workers.values()), 30,
             "both workers to notice the coordinator is down")
    farm.start_coordinator(*FAST)
    task = farm.api.wait_task_ended(task_id, 300)
    assert_every_frame_once(farm, task)


def test_failing_frame_is_retried_then_failed_with_its_log(farm, scenes):
    blend = scenes("fail3", frames=4, fail_frames=[3])
    farm.start_coordinator(*FAST, "--frame-fail-workers", "2")
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 4, name="fails")
    task = farm.api.wait_task_ended(task_id, 300)
    assert task["status"] == "failed"
    assert task["failed_frames"] == [3]
    frame3 = next(f for f in task["frames"] if f["frame"] == 3)
    # Failed once it had failed on two different workers; each failed report was counted.
    assert frame3["failed_on"] == ["a", "b"]
    assert frame3["failures"] >= 2
    assert frame3["error"] and frame3["log_tail"]
    assert all(f["status"] == "done" for f in task["frames"] if f["frame"] != 3)
    log = farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert log.strip()


def test_worker_switched_off_takes_no_new_frames(farm, scenes):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 12, name="off")
    wait_for(lambda: frames_by_worker(farm.api.task(task_id)).get("b"), 180, "worker b to finish a frame")
    farm.api.post("/set_worker_enabled", {"name": "b", "enabled": False})
    switched_off_at = farm.api.get("/health")["time"]
    task = farm.api.wait_task_ended(task_id, 300)
    assert_every_frame_once(farm, task)
    started_after = [f["frame"] for f in task["frames"] if f["worker"] == "b" and f["started_at"] > switched_off_at]
    assert started_after == []
    assert farm.api.workers()["b"]["enabled"] is False


def test_cancel_stops_blender_within_ten_seconds(farm, scenes):
    blend = scenes("heavy", frames=2, heavy=True)
    farm.start_coordinator(*FAST)
    worker = farm.start_worker("a")
    task_id = farm.api.submit(blend, 1, 2, name="cancel-me")
    wait_for(lambda: farm.api.task(task_id)["progress"]["rendering"] == 1, 120, "the heavy frame to start")
    assert blender_children(worker.pid)
    started = time.monotonic()
    farm.api.post("/cancel_task", {"task_id": task_id})
    wait_for(lambda: not blender_children(worker.pid), 10, "Blender to stop after cancel", interval=0.1)
    assert time.monotonic() - started < 10
    task = farm.api.task(task_id)
    assert task["status"] == "canceled"
    # The worker is still healthy and takes new work.
    assert worker.popen.poll() is None
    assert farm.api.workers()["a"]["alive"]


def test_worker_shutdown_gives_frames_back(farm, scenes):
    blend = scenes("heavy", frames=2, heavy=True)
    farm.start_coordinator(*FAST)
    worker = farm.start_worker("a")
    task_id = farm.api.submit(blend, 1, 2, name="shutdown")
    wait_for(lambda: farm.api.task(task_id)["progress"]["rendering"] == 1, 120, "the heavy frame to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    progress = farm.api.task(task_id)["progress"]
    assert progress["queued"] == 2 and progress["rendering"] == 0 and progress["leased"] == 0


def renderq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `renderq` command line in its own process."""
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_command_line_submit_wait_status_logs_workers(farm, scenes, tmp_path):
    blend = scenes("basic", frames=12)
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    out = tmp_path / "frames"
    # Submitted from another working directory with the scene's own range read by Blender (frames 1-12, step 4).
    submitted = renderq("submit", blend, "--step", "4", "--name", "cli-shot", "--wait", "--output", str(out),
                        *farm.cli_flags())
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    assert "submitted task" in submitted.stdout
    assert sorted(os.listdir(out)) == ["f_0001.png", "f_0005.png", "f_0009.png"]
    status = renderq("status", *farm.cli_flags())
    assert status.returncode == 0 and "cli-shot" in status.stdout and "done" in status.stdout
    detail = renderq("status", "1", "--json", *farm.cli_flags())
    assert json.loads(detail.stdout)["progress"]["done"] == 3
    workers = renderq("workers", *farm.cli_flags())
    assert workers.returncode == 0 and "a" in workers.stdout
    logs = renderq("logs", "1", *farm.cli_flags())
    assert logs.returncode == 0 and "[a]" in logs.stdout
    missing = renderq("cancel", "999", "--coordinator", farm.url, f"--token={farm.api.token}")
    assert missing.returncode == 1 and "no task with id 999" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_demo_renders_every_frame_and_stops_everything(tmp_path):
    before = set(blender_processes())
    demo = renderq("demo", "--frames", "4", "--workers", "2", "--output", str(tmp_path / "demo"), timeout=600)
    assert demo.returncode == 0, demo.stderr + demo.stdout
    assert sorted(os.listdir(tmp_path / "demo")) == [f"f_{n:04d}.png" for n in range(1, 5)]
    assert "wall time" in demo.stdout
    # Blender dies with its worker, but the kernel may take a moment to reap it. Only the demo's own Blenders count
    # (they render from its scratch folder): other Blenders on the machine are none of this test's business.
    wait_for(lambda: not set(blender_processes("renderq-demo-")) - before, 15, "the demo's Blender processes to exit")


def blender_processes(in_command: str = "") -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if "blender" not in handle.read().lower():
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if in_command.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found
