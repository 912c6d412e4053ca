"""A coordinator serving with several processes (--processes) on one port and one data dir, for real."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from harness import Api, find_blender_or_none, wait_for

from coordinator.processes import STARTUP_SECONDS

BLENDER = find_blender_or_none()
# Starts like a .blend, which is all the coordinator checks of a main file whose Blender version is given.
BLEND = b"BLENDER-v304REND" + b"\0" * 512


def test_every_serving_process_takes_connections(farm):
    """With one serving process stopped, the other alone answers every new connection, and then the other way
    round: each of them accepts on the shared port."""
    farm.start_coordinator("--processes", "2")
    children = wait_for(lambda: len(farm.serving_processes()) == 2 and farm.serving_processes(), 10,
                        "two serving processes")
    for stopped in children:
        os.kill(stopped, signal.SIGSTOP)
        try:
            for _ in range(20):  # a new connection each
                with urllib.request.urlopen(farm.url + "/health", timeout=10) as answer:
                    assert answer.status == 200
        finally:
            os.kill(stopped, signal.SIGCONT)


def test_a_serving_process_that_dies_is_started_again(farm):
    farm.start_coordinator("--processes", "2")
    children = wait_for(lambda: len(farm.serving_processes()) == 2 and farm.serving_processes(), 10,
                        "two serving processes")
    time.sleep(STARTUP_SECONDS + 0.5)  # past the start-up window, in which a death stops the coordinator instead
    os.kill(children[1], signal.SIGKILL)
    replaced = wait_for(lambda: len(set(farm.serving_processes()) - {children[1]}) == 2 and farm.serving_processes(),
                        20, "the killed process to be replaced")
    assert children[0] in replaced
    assert farm.api.get("/health")["ok"]


def test_leases_still_expire_after_the_reapers_process_was_replaced(farm):
    """The lease reaper runs in the first serving process only: killed, it comes back with its replacement, and a
    frame whose worker went silent is handed out again."""
    farm.start_coordinator("--processes", "2", "--heartbeat", "1", "--alive-timeout", "3")
    first = wait_for(lambda: len(farm.serving_processes()) == 2 and farm.serving_processes()[0], 10,
                     "two serving processes")  # the kernel lists children in the order they were started
    time.sleep(STARTUP_SECONDS + 0.5)  # past the start-up window (see the test above)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(set(farm.serving_processes()) - {first}) == 2, 20, "the first process to be replaced")
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200, blend
    task_id = farm.api.post("/submit_task", {"name": "silent worker", "blend_sha256": blend["sha256"],
                                             "blend_filename": "shot.blend", "blender_version": "3.4.1",
                                             "frame_start": 1, "frame_end": 1})["task_id"]
    worker = Api(farm.url, farm.token("worker"))
    worker_id = worker.post("/register_worker", {"name": "silent", "host": "h", "blender_version": "3.4.1",
                                                 "cpu_count": 2})["worker_id"]
    claimed = worker.post("/frames/claim", {"worker_id": worker_id})["frame"]
    assert (claimed["task_id"], claimed["frame"]) == (task_id, 1)

    def frame_status() -> str:
        return farm.api.task(task_id)["frames"][0]["status"]

    assert frame_status() == "leased"
    wait_for(lambda: frame_status() == "queued", 30, "the silent worker's lease to expire")


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_real_workers_on_two_processes_render_every_frame_once(farm, scenes):
    blend = scenes("basic", frames=8)
    farm.start_coordinator("--processes", "2", "--heartbeat", "1", "--alive-timeout", "4")
    started = time.monotonic()
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 8, name="two processes")
    wait_for(lambda: farm.api.task(task_id)["progress"]["done"] >= 2, 120, "two frames done")
    # Past the start-up window (see the test above).
    time.sleep(max(0.0, started + STARTUP_SECONDS + 0.5 - time.monotonic()))
    os.kill(farm.serving_processes()[0], signal.SIGKILL)  # the workers' calls move to the other, then back
    task = farm.api.wait_task_ended(task_id, 300)
    assert task["status"] == "done" and task["progress"]["done"] == 8
    assert all(f["status"] == "done" and f["output"] for f in task["frames"])
    assert sum(w["frames_done"] for w in farm.api.workers().values()) == 8
