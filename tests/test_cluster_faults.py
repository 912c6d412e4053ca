"""The cluster under faults: three real coordinators on one PostgreSQL and one SeaweedFS bucket, real Blender workers
given all three addresses, and one part of the cluster broken mid-task: coordinators SIGKILLed one after another,
PostgreSQL restarted, the object store restarted while frames are delivered, a coordinator cut off from PostgreSQL
for 30 s.

Every case ends with the same check: each frame done exactly once (counted once on the task and once across the
workers), each done frame's file downloads (through the client's presigned redirect) as the PNG the coordinator
recorded, and the status page of a coordinator that lived through it showed the task's progress moving meanwhile.
Also here: an admin's change on one coordinator shows on another's status page at once (PostgreSQL's NOTIFY).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from cluster import Cluster, DatabaseLink, cluster_fixture  # noqa: F401 - the `cluster` fixture
from harness import Api, find_blender_or_none, wait_for
from renderq.http_client import DIRECT_UPLOAD_BYTES, CoordinatorClient, CoordinatorError

needs_blender = pytest.mark.skipif(find_blender_or_none() is None,
                                   reason="Blender is not installed (scripts/test.sh installs it)")

# Quick heartbeats and a quick death verdict, and status feeds rebuilt often enough to watch progress.
FAST = ("--heartbeat", "1", "--alive-timeout", "4", "--poll-interval", "0.5")
FRAMES = 8
PNG = b"\x89PNG\r\n\x1a\n"


class StatusWatcher:
    """Polls one coordinator's GET /status/updates as the farm page does (with the admin token), applying each
    answer's changes to its copy, and records every done count of one task it saw, with the time."""

    def __init__(self, api: Api, task_id: int) -> None:
        self.api = api
        self.task_id = str(task_id)
        self.seen: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        version, tasks = None, {}
        while not self._stop.wait(0.3):
            try:
                status, answer = self.api.call("GET", "/status/updates" + (f"?since={version}" if version else ""),
                                               timeout=10)
            except OSError as error:
                self.errors.append(str(error))
                continue
            if status != 200:
                self.errors.append(f"{status} {answer}")
                continue
            if answer["full"]:
                tasks = dict(answer["snapshot"]["tasks"])
            else:
                tasks.update(answer["changes"].get("tasks", {}))
            version = answer["version"]
            if tasks.get(self.task_id):
                self.seen.append((time.monotonic(), tasks[self.task_id]["done"]))

    def done_since(self, moment: float) -> list[int]:
        """The done counts seen after `moment` (time.monotonic())."""
        return [done for at, done in self.seen if at >= moment]

    def wait_until_shown(self, done: int) -> None:
        """Wait (a few polls at most) until the page shows `done` frames done."""
        wait_for(lambda: self.seen and self.seen[-1][1] == done, 15, f"the status page to show {done} frames done")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def done_count(api: Api, task_id: int) -> int:
    try:
        status, task = api.call("GET", f"/task?task_id={task_id}&frames_limit=0", timeout=10)
    except OSError:
        return 0
    return task["progress"]["done"] if status == 200 else 0


def start_farm(cluster: Cluster, scenes, *extra: str) -> tuple[int, str]:
    """Start the coordinators and two workers; submit a task of FRAMES frames. Returns (task id, its scene)."""
    cluster.start(*FAST, *extra)
    blend = scenes("basic", frames=FRAMES)
    cluster.start_worker("a")
    cluster.start_worker("b")
    return cluster.api.submit(blend, 1, FRAMES, name="cluster-fault"), blend


def assert_all_done_once(cluster: Cluster, task_id: int, tmp_path) -> None:
    """Every frame done exactly once, and every done frame's file there: fetched by the real client (which follows
    the presigned redirect, through any coordinator of the list), a PNG with the size and SHA-256 recorded."""
    task = cluster.api.task(task_id)
    assert task["status"] == "done", task
    frames = task["frames"]
    assert sorted(f["frame"] for f in frames) == list(range(1, FRAMES + 1))
    assert all(f["status"] == "done" and f["output_sha256"] and f["worker"] for f in frames), frames
    assert task["progress"]["done"] == FRAMES and task["progress"]["failed"] == 0, task["progress"]
    assert len({f["output"] for f in frames}) == FRAMES
    # Counted once across the workers too: no frame credited to two of them.
    assert sum(w["frames_done"] for w in cluster.api.workers().values()) == FRAMES
    client = CoordinatorClient(cluster.url, token=cluster.token("artist"))
    for frame in frames:
        saved = client.download_frame(task_id, frame["frame"], str(tmp_path / "downloaded"),
                                      expected_sha256=frame["output_sha256"])
        with open(saved, "rb") as handle:
            data = handle.read()
        assert data.startswith(PNG) and len(data) == frame["output_size"], frame
        assert hashlib.sha256(data).hexdigest() == frame["output_sha256"], frame


def assert_moved(watcher: StatusWatcher, since: float, what: str) -> None:
    """The watched page showed the task's progress move after `since`, up to every frame."""
    seen = watcher.done_since(since)
    assert seen and seen[-1] == FRAMES and len(set(seen)) >= 2, (what, seen, watcher.errors[-5:])
    assert seen == sorted(seen), (what, seen)  # progress never went back


# -- 1. coordinators SIGKILLed one after another ----------------------------------------------------------------------


@needs_blender
def test_two_coordinators_killed_mid_task_the_third_finishes_it(cluster, scenes, tmp_path):
    task_id, _ = start_farm(cluster, scenes)
    watcher = StatusWatcher(cluster.node_api(2), task_id)
    started = time.monotonic()
    try:
        wait_for(lambda: done_count(cluster.api, task_id) >= 2, 180, "two frames done")
        cluster.kill_node(0)  # the one every worker talks to first
        wait_for(lambda: done_count(cluster.api, task_id) >= 4, 180, "two more frames done after the first kill")
        cluster.kill_node(1)
        cluster.api.wait_task_ended(task_id, 240)
        watcher.wait_until_shown(FRAMES)
    finally:
        watcher.stop()
    assert_all_done_once(cluster, task_id, tmp_path)
    assert_moved(watcher, started, "coordinator 2's page")


# -- 2. PostgreSQL restarted -----------------------------------------------------------------------------------------


@needs_blender
def test_postgresql_restarted_mid_task(cluster, scenes, postgres_cluster, tmp_path):
    task_id, _ = start_farm(cluster, scenes)
    watcher = StatusWatcher(cluster.node_api(1), task_id)
    try:
        wait_for(lambda: done_count(cluster.api, task_id) >= 2, 180, "two frames done")
        postgres_cluster.restart()  # pg_ctl stop -m fast, then start: every connection is cut
        restarted = time.monotonic()
        cluster.api.wait_task_ended(task_id, 240)
        watcher.wait_until_shown(FRAMES)
    finally:
        watcher.stop()
    assert_all_done_once(cluster, task_id, tmp_path)
    assert_moved(watcher, restarted, "coordinator 1's page after the restart")


# -- 3. the object store restarted while frames are delivered ---------------------------------------------------------


def kill_object_store(cluster: Cluster) -> None:
    """SIGKILL SeaweedFS (all of it: master, volume, filer and S3 gateway)."""
    store = cluster.store
    assert store.process is not None
    os.killpg(store.process.pid, signal.SIGKILL)
    store.process.wait(10)


def start_object_store_again(cluster: Cluster) -> None:
    """Start SeaweedFS with the command it was first started with: the same ports and data folder."""
    store = cluster.store
    assert store.process is not None
    with open(os.path.join(store.folder, "weed.log"), "ab") as log:
        store.process = subprocess.Popen(store.process.args, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
    wait_for(lambda: _answers(store, cluster.bucket), 60, "SeaweedFS to answer again")


def _answers(store, bucket: str) -> bool:
    try:
        store.client().head_bucket(Bucket=bucket)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not up yet"
        return False


@needs_blender
def test_object_store_restarted_mid_upload_while_frames_are_delivered(cluster, scenes, tmp_path):
    task_id, _ = start_farm(cluster, scenes)
    watcher = StatusWatcher(cluster.node_api(2), task_id)
    # A file large enough to go straight to the store (a presigned upload), killed a third of the way in.
    data = os.urandom(3 * DIRECT_UPLOAD_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "large.bin").write_bytes(data)
    artist = CoordinatorClient(cluster.url, token=cluster.token("artist"))
    killed: list[int] = []

    def kill_a_third_of_the_way(sent: int, total: int) -> None:
        if not killed and sent >= total // 3:
            killed.append(sent)
            kill_object_store(cluster)

    try:
        wait_for(lambda: done_count(cluster.api, task_id) >= 1, 180, "a frame done")
        with pytest.raises(CoordinatorError):
            artist.upload_file(str(tmp_path / "large.bin"), digest, kill_a_third_of_the_way)
        assert killed
        # Frames finish every second or so: the ones delivered in these seconds meet a store that is gone.
        time.sleep(8)
        start_object_store_again(cluster)
        back = time.monotonic()
        assert artist.missing_files([digest]) == [digest]  # the broken upload counts for nothing
        assert artist.upload_file(str(tmp_path / "large.bin"), digest) == {"sha256": digest, "size": len(data)}
        cluster.api.wait_task_ended(task_id, 240)
        watcher.wait_until_shown(FRAMES)
    finally:
        watcher.stop()
    assert_all_done_once(cluster, task_id, tmp_path)
    assert_moved(watcher, back, "coordinator 2's page after the store came back")
    # The fault met deliveries: some frame met the store gone (a 503, delivered again later).
    assert sum(object_store_errors(cluster.node_api(index)) for index in range(3)) >= 1
    # The file uploaded again is whole: a worker fetches it through the presigned redirect.
    worker = CoordinatorClient(cluster.url, token=cluster.token("worker"))
    worker.download_file(digest, str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == data
    artist.close()
    worker.close()


def object_store_errors(api: Api) -> float:
    """The coordinator's count of requests the object store failed, from its /metrics."""
    status, text = api.call("GET", "/metrics")
    assert status == 200, text
    match = re.search(r'^renderq_errors_total\{kind="object_store"\} (\S+)$', text.decode(), re.MULTILINE)
    return float(match[1]) if match else 0.0


# -- 4. a coordinator cut off from PostgreSQL for 30 s ----------------------------------------------------------------


@needs_blender
def test_coordinator_cut_off_from_postgresql_for_30_seconds(cluster, scenes, postgres_cluster, tmp_path):
    link = DatabaseLink(cluster.database, postgres_cluster.port)
    cluster.database_of[0] = link.database  # coordinator 0, the one the workers use first, reaches it through link
    try:
        task_id, _ = start_farm(cluster, scenes)
        watcher = StatusWatcher(cluster.node_api(1), task_id)
        try:
            wait_for(lambda: done_count(cluster.api, task_id) >= 1, 180, "a frame done")
            link.cut("blackhole")  # open connections reset; new ones hang, as behind a dead router
            cut = time.monotonic()
            time.sleep(30)
            during = watcher.done_since(cut)
            link.restore()
            cluster.api.wait_task_ended(task_id, 240)
            watcher.wait_until_shown(FRAMES)
        finally:
            watcher.stop()
        assert_all_done_once(cluster, task_id, tmp_path)
        # The others went on meanwhile: coordinator 1's page showed frames finishing during the cut.
        assert len(set(during)) >= 2, (during, watcher.errors[-5:])
        assert_moved(watcher, cut, "coordinator 1's page")
        # And coordinator 0 is whole again once its link is back.
        wait_for(lambda: done_count(cluster.node_api(0), task_id) == FRAMES, 60, "coordinator 0 to serve again")
    finally:
        link.close()


# -- the status page live across coordinators -------------------------------------------------------------------------


def test_an_admin_change_on_one_coordinator_shows_on_another_at_once(cluster, scenes):
    # Feeds rebuilt only once a minute: what shows sooner came through PostgreSQL's NOTIFY.
    cluster.nodes = cluster.nodes[:2]
    cluster.start("--poll-interval", "60")
    first, second = cluster.node_api(0), cluster.node_api(1)
    worker_token = cluster.token("worker")
    status, worker = first.call("POST", "/register_worker", {"name": "w1", "blender_version": "3.4.1"},
                                token=worker_token)
    assert status == 200, worker
    task_id = first.submit(scenes("basic", frames=2), 1, 2, name="watched")
    answer = second.get("/status/updates")
    version, seen = answer["version"], answer["snapshot"]
    assert seen["tasks"][str(task_id)]["status"] == "queued" and seen["workers"][str(worker["worker_id"])]["enabled"]

    def shown_on_second(section: str, key: str, field: str, value) -> bool:
        nonlocal version
        update = second.get(f"/status/updates?since={version}")
        version = update["version"]
        items = update["snapshot"][section] if update["full"] else update["changes"].get(section, {})
        return key in items and items[key][field] == value

    for path, body, section, key, field, value in (
            ("/pause_task", {"task_id": task_id}, "tasks", str(task_id), "status", "paused"),
            ("/set_task_priority", {"task_id": task_id, "priority": 7}, "tasks", str(task_id), "priority", 7),
            ("/set_worker_enabled", {"worker_id": worker["worker_id"], "enabled": False}, "workers",
             str(worker["worker_id"]), "enabled", False)):
        first.post(path, body)
        wait_for(functools.partial(shown_on_second, section, key, field, value), 5,
                 f"{path} on coordinator 0 to show on 1")


# -- a coordinator that cannot reach its database ---------------------------------------------------------------------


def test_a_coordinator_cut_off_from_its_database_answers_503_soon_and_clients_move_on(cluster, postgres_cluster):
    link = DatabaseLink(cluster.database, postgres_cluster.port)
    cluster.database_of[0] = link.database
    cluster.nodes = cluster.nodes[:2]
    try:
        cluster.start()
        cut_off = cluster.node_api(0)
        assert cut_off.call("GET", "/tasks")[0] == 200
        link.cut("blackhole")  # its connections reset, new ones never answered
        asked = time.monotonic()
        status, answer = cut_off.call("GET", "/tasks", timeout=60)
        assert status == 503 and "cannot reach its database" in answer["error"], (status, answer)
        assert time.monotonic() - asked < 15  # not as long as the cut lasts
        # A client given both addresses gets its answer from the other coordinator.
        client = CoordinatorClient(cluster.url, token=cluster.token("artist"))
        assert client.list_tasks() == [] and client.base_url == cluster.nodes[1].url
        client.close()
        link.restore()
        wait_for(lambda: cut_off.call("GET", "/tasks")[0] == 200, 30, "coordinator 0 to serve again")
    finally:
        link.close()
