"""A coordinator serving with several processes (--processes) on one port and one data dir, for real."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from harness import Farm, find_blender_or_none, wait_for

BLENDER = find_blender_or_none()


def serving_processes(farm: Farm) -> list[int]:
    """The coordinator's serving processes: the children of the process the harness started."""
    pid = farm.coordinator.pid
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
        return [int(child) for child in handle.read().split()]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_every_serving_process_takes_connections(farm):
    farm.start_coordinator("--processes", "2")
    children = wait_for(lambda: len(serving_processes(farm)) == 2 and serving_processes(farm), 10,
                        "two serving processes")
    before = {pid: cpu_ticks(pid) for pid in children}
    for _ in range(400):  # a new connection each: the kernel deals them out to both processes
        with urllib.request.urlopen(farm.url + "/health", timeout=10) as answer:
            assert answer.status == 200
    assert all(cpu_ticks(pid) > before[pid] for pid in children), "a serving process took no requests"


def test_a_serving_process_that_dies_is_started_again(farm):
    farm.start_coordinator("--processes", "2")
    children = wait_for(lambda: len(serving_processes(farm)) == 2 and serving_processes(farm), 10,
                        "two serving processes")
    time.sleep(5.5)  # past the start-up window, in which a death stops the coordinator instead
    os.kill(children[1], signal.SIGKILL)
    replaced = wait_for(lambda: len(set(serving_processes(farm)) - {children[1]}) == 2 and serving_processes(farm),
                        20, "the killed process to be replaced")
    assert children[0] in replaced
    assert farm.api.get("/health")["ok"]


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_real_workers_on_two_processes_render_every_frame_once(farm, scenes):
    blend = scenes("basic", frames=8)
    farm.start_coordinator("--processes", "2", "--heartbeat", "1", "--alive-timeout", "4")
    started = time.monotonic()
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(blend, 1, 8, name="two processes")
    wait_for(lambda: farm.api.task(task_id)["progress"]["done"] >= 2, 120, "two frames done")
    time.sleep(max(0.0, started + 5.5 - time.monotonic()))  # past the start-up window (see the test above)
    os.kill(serving_processes(farm)[0], signal.SIGKILL)  # the workers' calls move to the other, then back
    task = farm.api.wait_task_ended(task_id, 300)
    assert task["status"] == "done" and task["progress"]["done"] == 8
    assert all(f["status"] == "done" and f["output"] for f in task["frames"])
    assert sum(w["frames_done"] for w in farm.api.workers().values()) == 8
