"""The worker's reporter against the real coordinator over real HTTP: results wait, in order, while the coordinator
cannot be reached and arrive once it is back; a result whose lease was lost meanwhile is dropped and its render
stopped.

The worker runs in this process (its loop, reporter and threads are the real ones) with the fake Blender of
test_worker_agent.py, reaching the coordinator through a TcpProxy the test can cut.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from harness import TcpProxy, wait_for
from test_worker_agent import BLEND_BYTES, FakeSession, Running, reset_fake_blender

from renderq.http_client import CoordinatorClient
from worker.agent import WorkerAgent
from worker.loop import State
from worker.reporter import HEARTBEAT_SPREAD, heartbeat_wait
from worker.settings import WorkerSettings


def test_heartbeat_waits_spread_below_the_advised_interval_and_never_above_it():
    """Workers whose heartbeats fell into step drift apart again; the lease, sized from the advised interval, still
    always outlasts the wait."""
    waits = [heartbeat_wait(2.0, random.Random(seed)) for seed in range(2000)]
    assert min(waits) >= 2.0 * (1 - HEARTBEAT_SPREAD) and max(waits) <= 2.0
    quarters = [sum(1 for wait in waits if 2.0 * (1 - HEARTBEAT_SPREAD * (part + 1) / 4) < wait
                    <= 2.0 * (1 - HEARTBEAT_SPREAD * part / 4)) for part in range(4)]
    assert all(count > 350 for count in quarters), quarters  # spread over the whole band, not bunched


@pytest.fixture
def sessions() -> list[FakeSession]:
    return reset_fake_blender()


def start_farm(farm, *flags: str) -> int:
    """A coordinator with the fake .blend stored; returns a task of three frames, claimed lowest number first (the
    tests hold frames 1 and 2)."""
    farm.start_coordinator("--heartbeat", "0.5", *flags)
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND_BYTES)
    assert status == 200, blend
    return farm.api.post("/submit_task", {"name": "buffer", "blend_sha256": blend["sha256"],
                                          "blend_filename": "shot.blend", "frame_start": 1, "frame_end": 3,
                                          "order": "sequential"})["task_id"]


def start_worker(farm, proxy: TcpProxy, tmp_path) -> Running:
    client = CoordinatorClient(proxy.url, timeout=3.0, token=farm.token("worker"))
    settings = WorkerSettings("buffered", str(tmp_path / "work"), blender_version="3.4.1", poll_seconds=0.1,
                              max_backoff=0.2,
                              log_interval=0.1, abort_grace=0.1, shutdown_seconds=3.0, cpu_count=1)
    return Running(WorkerAgent(client, settings, session_factory=FakeSession))


def rendering_one_holding_two(farm, tmp_path, alive_timeout: float) -> tuple[int, TcpProxy, Running]:
    """A farm whose worker, behind a proxy, renders frame 1 and holds the lease of frame 2 (claimed ahead)."""
    task_id = start_farm(farm, "--alive-timeout", f"{alive_timeout:g}")
    proxy = TcpProxy(farm.port)
    running = start_worker(farm, proxy, tmp_path)
    try:
        wait_for(lambda: frames(farm, task_id)[1]["status"] == "rendering", 30, "frame 1 to render")
        wait_for(lambda: len(running.agent.held_leases()) == 2, 30, "frame 2 to be claimed ahead")
    except BaseException:
        proxy.close()
        raise
    return task_id, proxy, running


def frames(farm, task_id: int) -> dict[int, dict]:
    return {frame["frame"]: frame for frame in farm.api.task(task_id)["frames"]}


def sent_after(proxy: TcpProxy, start: int, path: str) -> list[tuple[int, int | None]]:
    """(frame, answer status) of the requests to `path` relayed since exchange number `start`, in order."""
    found = []
    for exchange in proxy.exchanges[start:]:
        if exchange.path.startswith(path):
            frame = exchange.path.partition("frame=")[2].partition("&")[0]
            if not frame:
                frame = str(json.loads(exchange.request_body).get("frame"))
            found.append((int(frame), exchange.status))
    return found


def test_results_wait_in_order_while_the_coordinator_is_away_and_arrive_when_it_is_back(farm, sessions, tmp_path):
    FakeSession.holds[1] = frame_1 = threading.Event()
    task_id, proxy, running = rendering_one_holding_two(farm, tmp_path, alive_timeout=60)
    agent = running.agent
    try:
        proxy.cut("refuse")
        frame_1.set()
        # Both held frames are rendered while the coordinator cannot be reached: frame 1 waits in the buffer, frame
        # 2 waits for room behind it, and neither lease is let go of.
        wait_for(lambda: sessions[0].rendered == [1, 2], 30, "both held frames to render")
        wait_for(lambda: agent.state is State.DELIVERING, 10, "the loop to wait for room in the buffer")
        time.sleep(1.0)
        assert agent.reporter.outbox.pending() == 1 and len(agent.held_leases()) == 2
        assert {n: f["status"] for n, f in frames(farm, task_id).items()} == {
            1: "rendering", 2: "leased", 3: "queued"}
        restored_at = len(proxy.exchanges)
        proxy.restore()
        farm.api.wait_task_ended(task_id, 60)
        assert running.stop() == 0
    finally:
        proxy.close()
    task = farm.api.task(task_id)
    assert task["status"] == "done"
    assert all(f["status"] == "done" and f["worker"] == "buffered" and f["output"] for f in task["frames"])
    # Delivered in the order they were rendered, each once, and accepted.
    # Each frame's file and done report travel in one request (/frames/finish).
    assert sent_after(proxy, restored_at, "/frames/finish") == [(1, 200), (2, 200), (3, 200)]


def test_a_result_whose_lease_was_lost_while_away_is_dropped_and_its_render_stopped(farm, sessions, tmp_path):
    FakeSession.holds[1] = frame_1 = threading.Event()
    FakeSession.holds[2] = frame_2 = threading.Event()
    task_id, proxy, running = rendering_one_holding_two(farm, tmp_path, alive_timeout=2)
    agent = running.agent
    try:
        lost = set(agent.held_leases())
        proxy.cut("refuse")
        frame_1.set()  # frame 1 is rendered and buffered, frame 2 renders and does not end on its own
        wait_for(lambda: sessions[0].rendering == 2, 30, "frame 2 to render while the coordinator is away")
        # The coordinator's clock ends both leases: the frames go back to the queue.
        wait_for(lambda: all(f["status"] == "queued" for f in frames(farm, task_id).values()), 30,
                 "the coordinator to take the frames back")
        restored_at = len(proxy.exchanges)
        proxy.restore()
        # The worker learns the leases are lost: frame 2's render is stopped, frame 1's result is dropped.
        wait_for(lambda: sessions[0].aborts >= 1, 30, "the render of frame 2 to be stopped")
        wait_for(lambda: not lost & set(agent.held_leases()), 30, "the lost leases to be let go of")
        frame_2.set()
        farm.api.wait_task_ended(task_id, 60)
        assert running.stop() == 0
    finally:
        proxy.close()
    task = farm.api.task(task_id)
    assert task["status"] == "done" and all(f["status"] == "done" for f in task["frames"])
    # Nothing sent under a lost lease was taken.
    stale = [exchange for exchange in proxy.exchanges[restored_at:]
             if any(lease.encode() in bytes(exchange.request) for lease in lost)
             and exchange.path.startswith(("/frames/finish", "/update_task"))]
    assert all(exchange.status == 409 for exchange in stale), [(e.path, e.status) for e in stale]
