"""Memory: the coordinator on a big farm, the worker agent, and a 2 GiB upload.

Three parts, each against a real `renderq coordinator` process, memory read from /proc/PID/status:

- coordinator: a data dir is filled through the store and the scheduler (5,000 workers, 500 tasks of 200 frames =
  100,000 frames, most done, some failed or canceled, ~4,000 frames being rendered, some tasks queued), the real
  coordinator is started on it, and then driven through the endpoints that read farm-wide state: a heartbeat from
  every worker (with the leases it holds), claims with their reports and uploads, and rounds of concurrent
  /list_workers, /tasks, /status/updates, /status/task_updates, /task and /disk_usage while the heartbeats go on.
  The figure is the coordinator's peak RSS over its whole life (VmHWM). Target: under 200 MB. Then, for information,
  the worst case: as many /list_workers at once as the coordinator has HTTP threads.
- agent: a real `renderq worker` (token from --token-file) against a coordinator with no tasks, then while it renders
  one small task with real Blender. The figure is the agent process's own peak RSS (Blender is a child process with
  its own memory, so it is not counted). Target: under 60 MB.
- upload: a generated 2 GiB body streamed through POST /upload_file with its SHA-256, from a generator in 1 MiB
  chunks (the client stays small). The figure is the coordinator's peak RSS during the upload minus its RSS just
  before. Target: growth under 50 MB. The body is streamed from the socket into the blob store's file in the data
  dir (the HTTP gate spools nothing elsewhere), so it needs its size free on disk plus the disk reserve: checked
  first.

Sizes are in decimal MB (1 MB = 1,000,000 bytes). Quick mode: 200 workers and 800 frames, a 2-frame render,
a 200 MB upload; the targets are shown but not enforced.

    python benchmarks/memory.py [--quick] [--json-out FILE] [--parts coordinator,agent,upload] [--keep DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import (
    GIB,
    MB,
    MIB,
    Coordinator,
    HttpClient,
    Results,
    RssSampler,
    add_arguments,
    find_blender,
    free_disk,
    phase,
    proc_memory,
    renderq_env,
    reset_peak_rss,
    rss,
    self_peak_rss,
    stop_process,
)

COORDINATOR_TARGET_MB = 200
AGENT_TARGET_MB = 60
UPLOAD_GROWTH_TARGET_MB = 50
PARTS = ("coordinator", "agent", "upload")
# The coordinator's HTTP threads (its default): the farm-wide reads are sent this many at a time.
HTTP_THREADS = 16


@dataclasses.dataclass
class Sizes:
    workers: int
    tasks: int
    frames_per_task: int
    # Workers that claim, render (on paper) and report a frame through the API.
    claims: int
    # Rounds of concurrent farm-wide reads, HTTP_THREADS requests each.
    read_rounds: int
    agent_idle_seconds: float
    agent_frames: int
    upload_bytes: int


FULL = Sizes(workers=5000, tasks=500, frames_per_task=200, claims=1000, read_rounds=12, agent_idle_seconds=30,
             agent_frames=12, upload_bytes=2 * GIB)
QUICK = Sizes(workers=200, tasks=16, frames_per_task=50, claims=40, read_rounds=2, agent_idle_seconds=5,
              agent_frames=2, upload_bytes=200 * MB)


def megabytes(size: int) -> float:
    return round(size / MB, 1)


# -- the coordinator on a big farm ----------------------------------------------------------------------------------


def measure_coordinator(results: Results, root: str, sizes: Sizes) -> None:
    # The same busy farm the status page benchmark fills.
    from status_page import ALIVE_TIMEOUT, fill

    frames = sizes.tasks * sizes.frames_per_task
    label = f"{sizes.workers:,} workers, {frames:,} frames"
    data_dir = os.path.join(root, "farm-data")
    with phase(f"filling a data dir with {label} through the store and scheduler"):
        filled = fill(data_dir, sizes.workers, sizes.tasks, sizes.frames_per_task)
    coordinator = Coordinator(root, "--alive-timeout", str(ALIVE_TIMEOUT), "--heartbeat", "5",
                              "--poll-interval", "2", "--http-threads", str(HTTP_THREADS), data_dir=data_dir)
    with phase("starting the coordinator on it"):
        coordinator.start()
    try:
        time.sleep(1.0)
        started_rss = rss(coordinator.pid)
        admin = coordinator.client("admin")
        worker = coordinator.client("worker")
        held = {worker_id: lease["lease_id"] for worker_id, lease in filled["held"]}
        worker_ids = filled["worker_ids"]
        counter = RequestCounter()

        with phase(f"a heartbeat from each of {len(worker_ids):,} workers"), RssSampler(coordinator.pid) as beats:
            run_parallel([lambda w=w: heartbeat(worker, w, held, counter) for w in worker_ids], HTTP_THREADS)

        idle = [w for w in worker_ids if w not in held][:sizes.claims]
        with phase(f"{len(idle):,} workers claim, report and upload a frame"), \
                RssSampler(coordinator.pid) as claims:
            claimed = run_parallel([lambda w=w: claim_and_finish(worker, w, counter) for w in idle], HTTP_THREADS)

        task_id = filled["task_id"]
        reads = ["/list_workers", "/tasks", "/tasks?status=done", "/status/updates", "/status/updates?since=1",
                 f"/status/task_updates?task_id={task_id}", f"/task?task_id={task_id}", "/disk_usage"]
        stop_beats = threading.Event()
        beat_errors: list[BaseException] = []
        beating = threading.Thread(target=keep_beating,
                                   args=(worker, worker_ids, held, counter, stop_beats, beat_errors), daemon=True)
        with phase(f"{sizes.read_rounds} rounds of {HTTP_THREADS} concurrent farm-wide reads, heartbeats going on"), \
                RssSampler(coordinator.pid) as farm_reads:
            beating.start()
            try:
                for round_number in range(sizes.read_rounds):
                    batch = [reads[(round_number + n) % len(reads)] for n in range(HTTP_THREADS)]
                    run_parallel([lambda p=p: read(admin, p, counter) for p in batch], HTTP_THREADS)
                    time.sleep(0.5)  # lets the snapshot expire now and then, so that it is rebuilt
            finally:
                stop_beats.set()
                beating.join()
        if beat_errors:
            raise beat_errors[0]

        memory = proc_memory(coordinator.pid)

        # Not part of the target's mix: the worst case, every HTTP thread building the whole worker list at once.
        with phase(f"worst case: {HTTP_THREADS} GET /list_workers at once"), RssSampler(coordinator.pid) as burst:
            run_parallel([lambda: read(admin, "/list_workers", counter) for _ in range(HTTP_THREADS)], HTTP_THREADS)
    finally:
        coordinator.stop()
    if coordinator.popen is not None and "Traceback" in coordinator.output():
        results.fail(f"the coordinator logged a traceback (log: {coordinator.log_path})")

    results.add(f"coordinator peak RSS, {label}", megabytes(memory["VmHWM"]), "MB", COORDINATOR_TARGET_MB,
                note="VmHWM over the process's life")
    results.add("coordinator RSS after start on that farm", megabytes(started_rss), "MB")
    results.add("coordinator peak RSS, heartbeats of every worker", megabytes(beats.peak), "MB")
    results.add("coordinator peak RSS, claims and reports", megabytes(claims.peak), "MB")
    results.add("coordinator peak RSS, concurrent farm-wide reads", megabytes(farm_reads.peak), "MB")
    results.add("coordinator RSS after the mix", megabytes(memory["VmRSS"]), "MB",
                note=f"anonymous {megabytes(memory.get('RssAnon', 0))} MB, "
                     f"files {megabytes(memory.get('RssFile', 0))} MB")
    results.add(f"coordinator peak RSS, worst case: {HTTP_THREADS} GET /list_workers at once",
                megabytes(burst.peak), "MB", note="after the mix above; no target")
    results.add("frames claimed and finished through the API", sum(1 for c in claimed if c), "")
    results.add("requests sent to the coordinator", counter.total, "", note=counter.describe())


class RequestCounter:
    """Requests sent, by path, from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_path: dict[str, int] = {}

    def count(self, path: str) -> None:
        key = path.split("?", 1)[0]
        with self._lock:
            self.by_path[key] = self.by_path.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_path.values())

    def describe(self) -> str:
        return ", ".join(f"{path} {n:,}" for path, n in sorted(self.by_path.items(), key=lambda item: -item[1]))


def run_parallel(jobs: list, threads: int) -> list:
    """Run callables on a thread pool; re-raise the first error."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


def heartbeat(client: HttpClient, worker_id: int, held: dict[int, str], counter: RequestCounter) -> None:
    leases = [held[worker_id]] if worker_id in held else []
    answer = client.post("/update_worker", {"worker_id": worker_id, "leases": leases})
    counter.count("/update_worker")
    if answer["revoked"]:
        raise RuntimeError(f"worker {worker_id} lost its lease {answer['revoked']}: the farm's state is not as filled")


def keep_beating(client: HttpClient, worker_ids: list[int], held: dict[int, str], counter: RequestCounter,
                 stop: threading.Event, errors: list[BaseException]) -> None:
    """Heartbeats round the farm, four at a time, until stopped (the workers keep reporting while people read);
    the first error ends them and is kept in `errors`."""
    position = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while not stop.is_set():
                batch = [worker_ids[(position + n) % len(worker_ids)] for n in range(16)]
                position += len(batch)
                list(pool.map(lambda w: heartbeat(client, w, held, counter), batch))
    except Exception as error:  # noqa: BLE001 - handed to the measuring thread, which raises it
        errors.append(error)


def claim_and_finish(client: HttpClient, worker_id: int, counter: RequestCounter) -> bool:
    """Claim a frame as a worker does, report it rendering, upload a small file and report it done."""
    from simworker import frame_png

    answer = client.get(f"/get_task?worker_id={worker_id}")
    counter.count("/get_task")
    lease = answer["frame"]
    if lease is None:
        return False
    key = {"worker_id": worker_id, "task_id": lease["task_id"], "frame": lease["frame"], "lease_id": lease["lease_id"]}
    now = time.time()
    client.post("/update_task", {**key, "status": "rendering", "started_at": now})
    client.post(f"/upload_frame?worker_id={worker_id}&task_id={lease['task_id']}&frame={lease['frame']}"
                f"&lease_id={lease['lease_id']}&filename=f_{lease['frame']:04d}.png",
                raw=frame_png(lease["task_id"], lease["frame"], lease["lease_id"]))
    client.post("/update_task", {**key, "status": "done", "started_at": now, "ended_at": now + 30,
                                 "render_seconds": 30.0})
    for path in ("/update_task", "/upload_frame", "/update_task"):
        counter.count(path)
    return True


def read(client: HttpClient, path: str, counter: RequestCounter) -> int:
    """One farm-wide read; the size of its answer."""
    status, answer = client.call("GET", path)
    counter.count(path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {str(answer)[:300]}")
    return len(json.dumps(answer)) if not isinstance(answer, bytes) else len(answer)


# -- the worker agent -----------------------------------------------------------------------------------------------


def measure_agent(results: Results, root: str, sizes: Sizes) -> None:
    blender = find_blender()
    if blender is None:
        results.add("worker agent peak RSS", None, "MB", AGENT_TARGET_MB, note="Blender is not installed")
        results.fail("Blender is not installed, so the worker agent could not be started (set RENDERQ_BLENDER)")
        return
    from renderq.scenes import make_scene

    with phase("making a small scene with Blender"):
        blend = make_scene(os.path.join(root, "agent.blend"), blender=blender, frames=sizes.agent_frames,
                           resolution=(64, 36), samples=4)
    coordinator = Coordinator(os.path.join(root, "agent"), "--heartbeat", "1", "--alive-timeout", "10")
    coordinator.start()
    agent: subprocess.Popen | None = None
    try:
        log_path = os.path.join(coordinator.root, "worker.log")
        with open(log_path, "ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "renderq", "worker", "--coordinator", coordinator.url, "--token-file",
                 coordinator.token_file("worker"), "--name", "memory-agent", "--blender", blender, "--threads", "1",
                 "--work-dir", os.path.join(coordinator.root, "work")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=renderq_env(),
                start_new_session=True)
        admin = coordinator.client("admin")
        deadline = time.monotonic() + 60
        while not any(w["name"] == "memory-agent" and w["alive"] for w in admin.get("/list_workers")["workers"]):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not register:\n{tail(log_path)}")
            time.sleep(0.2)
        with phase(f"the agent idle for {sizes.agent_idle_seconds:g} s, no tasks"), \
                RssSampler(agent.pid, reset_peak=False) as idle:
            time.sleep(sizes.agent_idle_seconds)
        idle_peak = proc_memory(agent.pid)["VmHWM"]  # since its start: start-up, registration and idling

        with phase(f"the agent renders a task of {sizes.agent_frames} frames"), RssSampler(agent.pid) as rendering:
            sha = upload_blend(coordinator.client("artist"), blend)
            task_id = coordinator.client("artist").post("/submit_task", {
                "name": "memory", "blend_sha256": sha, "blend_filename": "agent.blend", "frame_start": 1,
                "frame_end": sizes.agent_frames})["task_id"]
            deadline = time.monotonic() + 120 + 30 * sizes.agent_frames
            while (task := admin.get(f"/task?task_id={task_id}"))["status"] not in ("done", "failed", "canceled"):
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the task did not finish (status {task['status']}):\n{tail(log_path)}")
                time.sleep(0.2)
        if task["status"] != "done":
            results.fail(f"the agent's task ended {task['status']}")
        overall_peak = proc_memory(agent.pid)["VmHWM"]
    finally:
        if agent is not None:
            stop_process(agent, timeout=30)
        coordinator.stop()

    results.add("worker agent peak RSS, idle (start-up included)", megabytes(idle_peak), "MB", AGENT_TARGET_MB,
                note=f"steady {megabytes(idle.samples[-1][1] if idle.samples else 0)} MB")
    results.add(f"worker agent peak RSS, rendering {sizes.agent_frames} frames (Blender excluded)",
                megabytes(max(rendering.peak, overall_peak)), "MB", AGENT_TARGET_MB)


def tail(path: str, size: int = 3000) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()[-size:]


def upload_blend(client: HttpClient, path: str) -> str:
    with open(path, "rb") as handle:
        return client.post(f"/upload_blend?filename={os.path.basename(path)}", raw=handle.read())["sha256"]


# -- a big upload ---------------------------------------------------------------------------------------------------


def generated_body(size: int, seed: int = 11) -> Iterator[bytes]:
    """`size` bytes in 1 MiB chunks, the same each time for the same seed; no two chunks alike."""
    base = random.Random(seed).randbytes(MIB)
    sent = 0
    index = 0
    while sent < size:
        chunk = index.to_bytes(8, "big") + base[8:]
        chunk = chunk[:size - sent]
        sent += len(chunk)
        index += 1
        yield chunk


def measure_upload(results: Results, root: str, sizes: Sizes) -> None:
    size = sizes.upload_bytes
    label = f"{size / GIB:g} GiB" if size >= GIB else f"{megabytes(size):g} MB"
    figure = f"coordinator RSS growth storing a {label} upload"
    reserve = 256 * MIB
    # The body goes straight into the blob store's file in the data dir (under root): one copy.
    needed = size + reserve + 256 * MIB
    free = free_disk(root)
    if free < needed:
        results.add(figure, None, "MB", UPLOAD_GROWTH_TARGET_MB, note="not enough free disk")
        results.fail(f"not enough free disk for the {label} upload: it needs {needed / GIB:.1f} GiB free under "
                     f"{root} (the body is stored once, plus the disk reserve), and only "
                     f"{free / GIB:.1f} GiB is free; pass --keep DIR on a bigger disk")
        return
    with phase(f"hashing the generated {label} body"):
        digest = hashlib.sha256()
        for chunk in generated_body(size):
            digest.update(chunk)
        sha256 = digest.hexdigest()
    spool = os.path.join(root, "upload-tmp")
    os.makedirs(spool, exist_ok=True)
    coordinator = Coordinator(os.path.join(root, "upload"), "--upload-limit", str(size + GIB),
                              "--disk-reserve", str(reserve), env=renderq_env(TMPDIR=spool))
    coordinator.start()
    try:
        artist = coordinator.client("artist")
        warm = os.urandom(4 * MIB)  # the same path once, small, so that first-use costs are not counted as growth
        artist.post(f"/upload_file?sha256={hashlib.sha256(warm).hexdigest()}", raw=warm)
        time.sleep(1.0)
        before = rss(coordinator.pid)
        client_before = rss(os.getpid())
        client_hwm_reset = reset_peak_rss(os.getpid())
        with phase(f"streaming the {label} body through POST /upload_file"), \
                RssSampler(coordinator.pid, interval=0.02) as sampler:
            started = time.monotonic()
            answer = stream_upload(coordinator, artist.token or "", sha256, size)
            seconds = time.monotonic() - started
        stored = os.path.join(coordinator.data_dir, "files", sha256[:2], sha256)
        if answer.get("sha256") != sha256 or answer.get("size") != size:
            results.fail(f"the coordinator answered {answer} to the upload, not its hash and size")
        elif not os.path.isfile(stored) or os.path.getsize(stored) != size:
            results.fail(f"the upload was acknowledged but {stored} does not hold {size} bytes")
    finally:
        coordinator.stop()
    results.add(figure, megabytes(sampler.peak - before), "MB", UPLOAD_GROWTH_TARGET_MB,
                note=f"{megabytes(before)} MB before, {megabytes(sampler.peak)} MB at the peak"
                     + ("" if sampler.hwm_reset else "; sampled every 20 ms (VmHWM could not be reset)"))
    results.add(f"upload rate, {label} (streamed, hashed, fsynced)", round(size / MB / seconds, 1), "MB/s")
    if client_hwm_reset:
        results.add("the uploading client's own RSS growth", megabytes(self_peak_rss() - client_before), "MB")


def stream_upload(coordinator: Coordinator, token: str, sha256: str, size: int) -> dict:
    """POST the generated body with a Content-Length, chunk by chunk; the coordinator's JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", coordinator.port, timeout=1800)
    try:
        connection.putrequest("POST", f"/upload_file?sha256={sha256}")
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        for chunk in generated_body(size):
            connection.send(chunk)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"the upload was answered {response.status}: {payload[:300]!r}")
    return json.loads(payload)


# -- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "200 workers, 800 frames, a 2-frame render, a 200 MB upload")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which parts to run, comma-separated (default: {','.join(PARTS)})")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (data dirs, logs); default: a "
                        "temporary folder, removed at the end")
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts takes some of {', '.join(PARTS)}, not {args.parts!r}")
    sizes = QUICK if args.quick else FULL
    results = Results("memory", quick=args.quick)
    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="renderq-memory-")
    os.makedirs(root, exist_ok=True)
    measures = {"coordinator": measure_coordinator, "agent": measure_agent, "upload": measure_upload}
    try:
        for part in parts:
            try:
                measures[part](results, root, sizes)
            except Exception as error:  # noqa: BLE001 - one part failing must not hide the others' figures
                results.fail(f"the {part} part failed: {type(error).__name__}: {error}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return results.finish(args.json_out)


if __name__ == "__main__":
    sys.exit(main())
