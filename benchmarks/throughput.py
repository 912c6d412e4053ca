"""Coordinator throughput: the largest farm one coordinator serves with every worker call answered in under 100 ms.

Simulated workers speak the real worker protocol over HTTP to a real `renderq coordinator`: register once, send an
update (heartbeat, with the lease held) every heartbeat interval the coordinator gives, and in a loop claim a frame
(GET /get_task), report it rendering, "render" it by sleeping, upload a small PNG (POST /upload_frame) and report it
done. Thousands of them run in a few processes (--processes), each process simulating its share of the workers as
asyncio tasks over raw HTTP/1.1; by default every request opens its own connection, as the real worker does
(--keep-alive N shares N kept-alive connections per process instead).

Load comes in steps (--steps): every worker renders frames of 10 s (--frames-per-worker-second 0.1), so a farm of
5,000 workers dispatches and completes 500 frames a second and sends 2,500 updates a second (2 s heartbeat), the
target's mix. Each step starts its workers spread over one frame time (so their frames are evenly out of phase),
settles, then measures for --duration seconds: latency percentiles of every endpoint as the client sees them,
updates, frames dispatched (claims that got a frame) and frames completed (done reports accepted) per second,
errors, and the CPU the coordinator (per request, too), the load generator and everything else on the machine used.
A step passes when every endpoint's p99 is under 100 ms and no request failed. The steps stop after the first one
that does not pass, and --refine more steps halve the gap between the largest farm that passed and the smallest
that failed.

Figures: the largest farm served (workers), and at it the updates per second, frames dispatched and completed per
second and the worst p99. Targets: 5,000 workers, 2,500 updates/s, 500 frames/s, p99 < 100 ms.
Tasks are submitted up front with enough frames for every step; --history-frames first fills the data dir with
that many frames already done (in finished tasks), so work that grows with the history shows up.

--profile samples the coordinator with py-spy (if installed; a dev tool, not a dependency) during each step's
measurement and prints where its time goes: per part (HTTP server, Flask, JSON, store, frame files, ...), then the
functions with the most samples, with what they call and on their own. --profile-mode gil (the default) samples the
thread holding the GIL, i.e. the coordinator's one core of Python; idle samples every thread, waiting too (for the
write lock, a commit, the disk). The samples are kept as collapsed stacks (flame graph input) in the run directory.

    python benchmarks/throughput.py [--quick] [--json-out FILE] [--steps 500,1000,2000,5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import Coordinator, Results, add_arguments, phase, renderq_env, stop_process
from simworker import frame_png

TARGET_WORKERS = 5000
TARGET_FRAMES_PER_SECOND = 500.0
TARGET_P99_MS = 100.0
# A tiny file that passes the coordinator's .blend checks (the header of a Blender 3.4 file).
FAKE_BLEND = b"BLENDER-v304" + b"REND" + bytes(1012)
ENDPOINTS = ("register", "update_worker", "get_task", "report_rendering", "upload_frame", "report_done")
# How long a simulated worker waits after a failed call, and between claims when there is nothing to render.
RETRY_SECONDS = 1.0
IDLE_POLL_SECONDS = 2.0


# -- the load generator process ---------------------------------------------------------------------------------------


class RawHttp:
    """HTTP/1.1 over non-blocking sockets on the event loop, just enough for JSON and small uploads (cheaper per
    request than asyncio streams, so the load generator leaves more CPU to the coordinator). pool_size 0: one
    connection per request (Connection: close), as the real worker does; N > 0: up to N kept-alive connections
    shared by all the process's workers."""

    def __init__(self, host: str, port: int, token: str, pool_size: int = 0, timeout: float = 30.0) -> None:
        self.address = (host, port)
        self.pool_size = pool_size
        self.timeout = timeout
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nUser-Agent: renderq-throughput\r\n"
        self.idle: list[socket.socket] = []
        self.slots = asyncio.Semaphore(pool_size) if pool_size else None

    async def call(self, method: str, target: str, body: bytes = b"",
                   content_type: str = "application/json") -> tuple[int, Any]:
        """One request: (status, decoded JSON). Raises OSError (TimeoutError too) or ValueError when unanswered."""
        keep = self.slots is not None
        request = (f"{method} {target} HTTP/1.1\r\n{self.head}Content-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\n{'' if keep else 'Connection: close' + chr(13) + chr(10)}"
                   "\r\n").encode("latin-1") + body
        async with asyncio.timeout(self.timeout):
            if self.slots is None:
                return await self._exchange(await self._connect(), request, keep=False)
            async with self.slots:
                if self.idle:
                    try:
                        return await self._exchange(self.idle.pop(), request, keep=True)
                    except ConnectionError:
                        pass  # the coordinator closed the idle connection: once more on a new one
                return await self._exchange(await self._connect(), request, keep=True)

    async def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _exchange(self, sock: socket.socket, request: bytes, keep: bool) -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        reusable = False
        try:
            await loop.sock_sendall(sock, request)
            buffer = bytearray()
            head_end = -1
            while head_end < 0:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    raise ConnectionError("the connection closed before an answer")
                buffer += chunk
                head_end = buffer.find(b"\r\n\r\n")
            lines = buffer[:head_end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body_start = head_end + 4
            length = headers.get("content-length")
            while length is None or len(buffer) < body_start + int(length):
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    if length is None:
                        break
                    raise ConnectionError("the connection closed in the middle of an answer")
                buffer += chunk
            payload = bytes(buffer[body_start:body_start + int(length)] if length is not None else buffer[body_start:])
            reusable = keep and length is not None and headers.get("connection", "").lower() != "close"
            return status, json.loads(payload) if payload else None
        finally:
            if reusable:
                self.idle.append(sock)
            else:
                sock.close()


class Stats:
    """What one process saw: latencies (ms) and outcomes per endpoint inside the measurement window."""

    def __init__(self, measure_from: float, measure_until: float) -> None:
        self.measure_from = measure_from
        self.measure_until = measure_until
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.ok: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.error_examples: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        self.loop_lag_ms: list[float] = []

    def in_window(self, when: float) -> bool:
        return self.measure_from <= when < self.measure_until

    def record(self, endpoint: str, started_wall: float, seconds: float, error: str | None) -> None:
        if not self.in_window(started_wall):
            return
        self.latencies[endpoint].append(seconds * 1000.0)
        if error is None:
            self.ok[endpoint] += 1
        else:
            self.errors[endpoint] += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(f"{endpoint}: {error}")

    def count(self, what: str, when: float) -> None:
        if self.in_window(when):
            self.counts[what] += 1


class Refused(Exception):
    """The coordinator answered with an error status."""


class SimFarm:
    """Many simulated workers in one process, all on one event loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        parts = urllib.parse.urlsplit(config["url"])
        self.http = RawHttp(parts.hostname or "127.0.0.1", parts.port or 80, config["token"],
                            config["keep_alive"])
        self.stats = Stats(config["measure_from"], config["measure_until"])
        self.random = random.Random(config["seed"])
        self.stopping = False

    async def call(self, endpoint: str, method: str, target: str, body: Any = None, raw: bytes | None = None) -> Any:
        """Time one request under `endpoint`; Refused (after recording it) unless the answer is 2xx."""
        wall = time.time()
        started = time.perf_counter()
        error = None
        try:
            if raw is not None:
                status, answer = await self.http.call(method, target, raw, "application/octet-stream")
            else:
                status, answer = await self.http.call(method, target, json.dumps(body).encode() if body else b"")
            if not 200 <= status < 300:
                error = f"HTTP {status}: {(answer or {}).get('error') if isinstance(answer, dict) else answer}"
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.stats.record(endpoint, wall, time.perf_counter() - started, error)
        if error is not None:
            raise Refused(error)
        return answer

    async def sleep_until(self, wall: float) -> None:
        await asyncio.sleep(max(0.0, wall - time.time()))

    async def worker(self, index: int) -> None:
        """One simulated worker: register, then heartbeats beside the claim/render/upload/report loop."""
        config = self.config
        global_index = config["first_index"] + index
        await self.sleep_until(config["start_at"] + config["ramp"] * global_index / config["total_workers"])
        name = f"{config['prefix']}-{global_index:05d}"
        body = {"name": name, "host": "throughput", "blender_version": "3.4.1", "cpu_count": 1}
        while not self.stopping:
            try:
                answer = await self.call("register", "POST", "/register_worker", body)
                break
            except Refused:
                await asyncio.sleep(RETRY_SECONDS)
        else:
            return
        worker_id = answer["worker_id"]
        held: dict[str, Any] = {"lease": None, "revoked": False}
        heartbeats = asyncio.ensure_future(self.heartbeat(worker_id, float(answer["heartbeat_seconds"]), held))
        try:
            await self.frames(worker_id, held)
        finally:
            heartbeats.cancel()

    async def heartbeat(self, worker_id: int, interval: float, held: dict[str, Any]) -> None:
        await asyncio.sleep(self.random.uniform(0, interval))
        next_due = time.monotonic()
        while not self.stopping:
            lease = held["lease"]
            try:
                answer = await self.call("update_worker", "POST", "/update_worker",
                                         {"worker_id": worker_id, "leases": [lease] if lease else []})
                self.stats.count("updates", time.time())
                if lease and lease in (answer.get("revoked") or []) and held["lease"] == lease:
                    held["revoked"] = True
            except Refused:
                # call() has recorded the error; like a real worker's, the next heartbeat comes on schedule.
                pass
            next_due += interval
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    async def frames(self, worker_id: int, held: dict[str, Any]) -> None:
        frame_seconds = self.config["frame_seconds"]
        while not self.stopping:
            try:
                answer = await self.call("get_task", "GET", f"/get_task?worker_id={worker_id}")
            except Refused:
                await asyncio.sleep(RETRY_SECONDS)
                continue
            claimed = answer.get("frame")
            if not claimed:
                self.stats.count("claims_empty", time.time())
                await asyncio.sleep(IDLE_POLL_SECONDS * self.random.uniform(0.75, 1.25))
                continue
            self.stats.count("dispatched", time.time())
            task_id, frame, lease_id = claimed["task_id"], claimed["frame"], claimed["lease_id"]
            held["lease"], held["revoked"] = lease_id, False
            report = {"worker_id": worker_id, "task_id": task_id, "frame": frame, "lease_id": lease_id}
            try:
                started_at = time.time()
                await self.call("report_rendering", "POST", "/update_task",
                                {**report, "status": "rendering", "started_at": started_at})
                render_seconds = frame_seconds * self.random.uniform(0.8, 1.2)
                await asyncio.sleep(render_seconds)
                if held["revoked"] or self.stopping:
                    continue
                query = urllib.parse.urlencode({**report, "filename": f"f_{frame:05d}.png"})
                await self.call("upload_frame", "POST", f"/upload_frame?{query}",
                                raw=frame_png(task_id, frame, lease_id))
                await self.call("report_done", "POST", "/update_task",
                                {**report, "status": "done", "started_at": started_at, "ended_at": time.time(),
                                 "render_seconds": render_seconds})
                self.stats.count("completed", time.time())
            except Refused:
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                held["lease"] = None

    async def loop_lag(self) -> None:
        """How late the event loop wakes: latency the client itself adds when it is short of CPU."""
        while not self.stopping:
            before = time.perf_counter()
            await asyncio.sleep(0.05)
            lag = (time.perf_counter() - before - 0.05) * 1000.0
            if self.stats.in_window(time.time()):
                self.stats.loop_lag_ms.append(lag)

    async def run(self) -> dict[str, Any]:
        config = self.config
        workers = [asyncio.ensure_future(self.worker(i)) for i in range(config["count"])]
        lag = asyncio.ensure_future(self.loop_lag())
        await self.sleep_until(config["measure_from"])
        cpu_start = _own_cpu_seconds()
        await self.sleep_until(config["measure_until"])
        cpu_seconds = _own_cpu_seconds() - cpu_start
        self.stopping = True
        for task in [*workers, lag]:
            task.cancel()
        await asyncio.gather(*workers, lag, return_exceptions=True)
        stats = self.stats
        return {"latencies": stats.latencies, "ok": stats.ok, "errors": stats.errors,
                "error_examples": stats.error_examples, "counts": stats.counts, "loop_lag_ms": stats.loop_lag_ms,
                "cpu_seconds": cpu_seconds}


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def simulate(config_json: str) -> int:
    """Entry point of one load generator process: run its workers, print what it saw as one JSON line."""
    config = json.loads(config_json)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(SimFarm(config).run())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# -- the controller ---------------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def other_load(own_pid: int, seconds: float = 3.0) -> float:
    """Cores kept busy by everything but the (idle) coordinator over a few seconds: how busy the machine already is."""
    own = sum(process_cpu_seconds(own_pid))
    busy, total = machine_cpu()
    time.sleep(seconds)
    busy_after, total_after = machine_cpu()
    own = sum(process_cpu_seconds(own_pid)) - own
    cores = os.cpu_count() or 1
    return max(0.0, (busy_after - busy) / max(total_after - total, 1e-9) * cores - own / seconds)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / ticks, sum(values[:8]) / ticks


class Profiler:
    """py-spy sampling the coordinator for a while, its collapsed stacks written to a file."""

    def __init__(self, py_spy: str, pid: int, seconds: float, out_path: str, mode: str = "gil") -> None:
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
                   "--nonblocking", "--format", "raw", "--output", out_path]
        # gil: only the thread holding the GIL, i.e. where the coordinator's one core of Python goes;
        # idle: every thread, also those waiting (for a lock, a commit, the network).
        command += {"gil": ["--gil"], "idle": ["--idle"], "active": []}[mode]
        self.out_path = out_path
        self.popen = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self) -> str | None:
        """The collapsed-stack file, or None when py-spy failed (its complaint is printed)."""
        try:
            _, err = self.popen.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            stop_process(self.popen)
            return None
        if self.popen.returncode != 0 or not os.path.exists(self.out_path):
            print(f"  py-spy failed: {err.decode('utf-8', 'replace').strip()[-500:]}", flush=True)
            return None
        return self.out_path


# The parts of the coordinator a sample is charged to: the first rule matching a frame, from the innermost out.
PROFILE_PARTS = (
    ("coordinator/store/connection.py", ("transaction", "_end_turn", "_finish_batch", "_wait_for_commit"),
     "store: write turns and commits"),
    ("coordinator/store/", (), "store: SQL statements"),
    ("coordinator/blobs.py", (), "frame files: write, fsync, rename"),
    ("coordinator/auth.py", (), "access tokens"),
    ("coordinator/http_", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("coordinator/", (), "coordinator: endpoints and scheduler"),
    ("json/", (), "JSON"),
    ("flask/", (), "Flask and Werkzeug"),
    ("werkzeug/", (), "Flask and Werkzeug"),
    ("itsdangerous/", (), "Flask and Werkzeug"),
    ("uvicorn/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("httptools/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("a2wsgi/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("asyncio/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("logging/", (), "logging"),
)


def profile_part(frames: list[str]) -> str:
    """The part of the coordinator a sampled stack (outermost frame first) is charged to."""
    for frame in reversed(frames):
        for where, functions, part in PROFILE_PARTS:
            if where in frame and (not functions or frame.split(" (", 1)[0].rsplit(".", 1)[-1] in functions):
                return part
    return "other"


def summarize_profile(path: str, top: int = 18) -> list[str]:
    """Lines naming where the sampled time went: per part of the coordinator, then per function, its own samples
    and those with its callees."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    parts: collections.Counter = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_short_frame(frame) for frame in stack.split(";")]
            parts[profile_part(frames)] += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; by part of the coordinator:"]
    lines += [f"    {100.0 * n / total:5.1f}%  {part}" for part, n in parts.most_common()]
    lines.append("  by function, with what it calls:")
    lines += [f"    {100.0 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines.append("  own time:")
    lines += [f"    {100.0 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return lines


def _short_frame(frame: str) -> str:
    """'claim (coordinator/scheduler.py:311)' -> 'claim (coordinator/scheduler.py)', library paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if where.startswith(ROOT + os.sep):
        where = where[len(ROOT) + 1:]
    elif "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    else:
        where = re.sub(r"^.*/lib/python3\.\d+/", "", where)
    return f"{name} ({where})" if where else name


def fill_history(data_dir: str, frames: int) -> None:
    """Before the coordinator starts: finished tasks holding `frames` done frames, as a farm's past."""
    from coordinator.scheduler import Policy, Scheduler, TaskFile, TaskSpec
    from coordinator.store import Store

    os.makedirs(data_dir, exist_ok=True)
    store = Store(os.path.join(data_dir, "renderq.sqlite3"), synchronous="normal")
    scheduler = Scheduler(store, Policy())
    now = time.time() - 86400
    per_task = 10_000
    sha = "0" * 64
    for first in range(0, frames, per_task):
        count = min(per_task, frames - first)
        spec = TaskSpec(name=f"history-{first // per_task}", files=[TaskFile("old.blend", sha, 1024)],
                        main_file="old.blend", frame_start=1, frame_end=count)
        task_id = scheduler.submit_task(spec)["task_id"]
        # Straight to the end state a finished render leaves (the benchmark's set-up, not the product's path).
        with store.transaction() as db:
            db.execute("UPDATE frames SET status = 'done', worker_id = 1, attempts = 1, started_at = ?, "
                       "ended_at = ? + frame, render_seconds = 10, output = 'f.png', output_sha256 = ?, "
                       "output_size = 100 WHERE task_id = ?", (now, now, sha, task_id))
            db.execute("UPDATE tasks SET status = 'done', frames_done = frames_total, started_at = ?, "
                       "ended_at = ? WHERE task_id = ?", (now, now + count, task_id))
    store.close()


def submit_frames(coordinator: Coordinator, frames_needed: int, tasks: int) -> int:
    """Queue tasks holding frames_needed frames in all; returns how many frames were queued."""
    artist = coordinator.client("artist")
    sha = artist.post("/upload_blend?filename=bench.blend", raw=FAKE_BLEND)["sha256"]
    per_task = max(1, math.ceil(frames_needed / tasks))
    for number in range(tasks):
        artist.post("/submit_task", {"name": f"throughput-{number}", "blend_sha256": sha,
                                     "blend_filename": "bench.blend", "frame_start": 1, "frame_end": per_task})
    return per_task * tasks


def run_step(coordinator: Coordinator, workers: int, args: argparse.Namespace, run_dir: str,
             step_number: int) -> dict[str, Any]:
    """Run one load level; returns its aggregated figures."""
    frame_seconds = 1.0 / args.frames_per_worker_second
    ramp = frame_seconds
    settle = max(2.0, args.heartbeat)
    start_at = time.time() + 2.0 + workers / 2000.0  # time for the processes to start
    measure_from = start_at + ramp + settle
    measure_until = measure_from + args.duration
    processes = max(1, min(args.processes, workers))
    children = []
    first = 0
    for number in range(processes):
        count = workers // processes + (1 if number < workers % processes else 0)
        config = {"url": coordinator.url, "token": coordinator.token("worker"), "prefix": "sim",
                  "first_index": first, "count": count, "total_workers": workers, "frame_seconds": frame_seconds,
                  "start_at": start_at, "ramp": ramp, "measure_from": measure_from, "measure_until": measure_until,
                  "keep_alive": args.keep_alive, "seed": step_number * 1000 + number}
        first += count
        children.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--simulate", json.dumps(config)],
                                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=renderq_env(),
                                         start_new_session=True))
    profiler = None
    try:
        time.sleep(max(0.0, measure_from - time.time()))
        cpu_before = process_cpu_seconds(coordinator.pid)
        machine_busy, machine_total = machine_cpu()
        if args.py_spy:
            profiler = Profiler(args.py_spy, coordinator.pid, args.duration,
                                os.path.join(run_dir, f"profile-{workers}-workers.txt"), args.profile_mode)
        time.sleep(max(0.0, measure_until - time.time()))
        user, system = process_cpu_seconds(coordinator.pid)
        coordinator_system = system - cpu_before[1]
        coordinator_cpu = user - cpu_before[0] + coordinator_system
        busy, total = machine_cpu()
        machine_busy, machine_total = busy - machine_busy, total - machine_total
        outputs = []
        for child in children:
            out, _ = child.communicate(timeout=120 + workers / 50)
            if child.returncode != 0 or not out.strip():
                raise RuntimeError(f"a load generator process exited with {child.returncode}")
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                stop_process(child, 5)
    window = measure_until - measure_from
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    examples: list[str] = []
    lag: list[float] = []
    generator_cpu = 0.0
    for output in outputs:
        for endpoint, values in output["latencies"].items():
            latencies[endpoint].extend(values)
        errors.update(output["errors"])
        counts.update(output["counts"])
        examples.extend(output["error_examples"])
        lag.extend(output["loop_lag_ms"])
        generator_cpu += output["cpu_seconds"]
    every = [value for values in latencies.values() for value in values]
    per_endpoint = {endpoint: {"count": len(latencies[endpoint]), "p50": percentile(latencies[endpoint], 0.5),
                               "p99": percentile(latencies[endpoint], 0.99),
                               "max": max(latencies[endpoint]) if latencies[endpoint] else None}
                    for endpoint in ENDPOINTS if latencies.get(endpoint)}
    worst_p99 = max((figures["p99"] for figures in per_endpoint.values()), default=None)
    cores = os.cpu_count() or 1
    result = {
        "workers": workers,
        "frame_seconds": frame_seconds,
        "requests_per_second": len(every) / window,
        "updates_per_second": counts["updates"] / window,
        "dispatched_per_second": counts["dispatched"] / window,
        "completed_per_second": counts["completed"] / window,
        "claims_empty": counts["claims_empty"],
        "errors": sum(errors.values()),
        "error_examples": examples[:5],
        "p50_ms": percentile(every, 0.5),
        "p99_ms": percentile(every, 0.99),
        "worst_p99_ms": worst_p99,
        "endpoints": per_endpoint,
        "loop_lag_p99_ms": percentile(lag, 0.99),
        # Shares of the whole machine's CPU capacity (all cores) during the window.
        "coordinator_cpu": coordinator_cpu / window,
        "coordinator_system_cpu": coordinator_system / window,
        "coordinator_ms_per_request": 1000.0 * coordinator_cpu / max(1, len(every)),
        "generator_cpu": generator_cpu / window,
        "other_cpu": max(0.0, machine_busy / max(machine_total, 1e-9) * cores
                         - coordinator_cpu / window - generator_cpu / window),
        "cores": cores,
        "passed": worst_p99 is not None and worst_p99 < TARGET_P99_MS and not errors,
    }
    if profiler is not None:
        profile_path = profiler.wait()
        result["profile"] = summarize_profile(profile_path) if profile_path else None
        result["profile_path"] = profile_path
    return result


def print_step(result: dict[str, Any]) -> None:
    verdict = "passes" if result["passed"] else "FAILS"
    print(f"  {result['workers']} workers ({result['frame_seconds']:g} s frames): {verdict}; "
          f"{result['requests_per_second']:.0f} requests/s, {result['updates_per_second']:.0f} updates/s, "
          f"{result['dispatched_per_second']:.1f} frames/s dispatched, "
          f"{result['completed_per_second']:.1f} completed; p50 {_ms(result['p50_ms'])}, "
          f"p99 {_ms(result['p99_ms'])}, worst endpoint p99 {_ms(result['worst_p99_ms'])}; "
          f"{result['errors']} errors", flush=True)
    for endpoint, figures in result["endpoints"].items():
        print(f"    {endpoint:17} {figures['count']:7d} calls  p50 {_ms(figures['p50'])}  p99 {_ms(figures['p99'])}"
              f"  max {_ms(figures['max'])}")
    print(f"    CPU (cores busy): coordinator {result['coordinator_cpu']:.2f} "
          f"({result['coordinator_system_cpu']:.2f} of it in the kernel; "
          f"{result['coordinator_ms_per_request']:.2f} ms per request), load generator "
          f"{result['generator_cpu']:.2f}, everything else {result['other_cpu']:.2f} of {result['cores']}; "
          f"generator event-loop lag p99 {_ms(result['loop_lag_p99_ms'])}", flush=True)
    if result["claims_empty"]:
        print(f"    {result['claims_empty']} claims found no frame waiting", flush=True)
    for example in result["error_examples"]:
        print(f"    error: {example}", flush=True)
    for line in result.get("profile") or []:
        print(line, flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "steps of 20 and 60 workers, 2 s frames, 6 s windows")
    parser.add_argument("--steps", help="farm sizes to try, in workers, e.g. 500,1000,2000,5000 "
                        "(default 250,500,1000,1500,2000,3000,4000,5000)")
    parser.add_argument("--frames-per-worker-second", type=float, default=TARGET_FRAMES_PER_SECOND / TARGET_WORKERS,
                        help="frames each worker finishes a second (the inverse of the frame time; default 0.1, "
                        "the target's 500 frames/s over 5,000 workers)")
    parser.add_argument("--duration", type=float, help="seconds each step is measured (default 30)")
    parser.add_argument("--processes", type=int, default=4, help="load generator processes (default 4)")
    parser.add_argument("--keep-alive", type=int, default=0, metavar="N",
                        help="share N kept-alive connections per generator process instead of one connection "
                        "per request (default 0: a connection per request, as the real worker does)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="the coordinator's heartbeat interval in "
                        "seconds, given to it with --heartbeat (default 2, its own default)")
    parser.add_argument("--http-threads", type=int, help="the coordinator's --http-threads (default: its own)")
    parser.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `renderq coordinator` (repeatable)")
    parser.add_argument("--history-frames", type=int, help="frames already done in the data dir before the start "
                        "(default 100,000; quick 2,000)")
    parser.add_argument("--tasks", type=int, default=4, help="open tasks the frames are split over (default 4)")
    parser.add_argument("--all-steps", action="store_true", help="run every step, not only up to the first failure")
    parser.add_argument("--refine", type=int, default=2, metavar="N",
                        help="after the first step that fails, N more steps halving the gap to the last that passed "
                        "(default 2)")
    parser.add_argument("--profile", action="store_true", help="sample the coordinator with py-spy during each step")
    parser.add_argument("--profile-mode", choices=("gil", "active", "idle"), default="gil",
                        help="what the profile samples: the thread holding the GIL (default), every thread on a "
                        "CPU, or every thread, waiting or not")
    parser.add_argument("--py-spy", help="the py-spy executable (default: py-spy on PATH)")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (data dir, logs, profiles)")
    parser.add_argument("--simulate", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulate:
        return simulate(args.simulate)

    quick = args.quick
    steps = ([int(s) for s in args.steps.split(",")] if args.steps
             else [20, 60] if quick else [250, 500, 1000, 1500, 2000, 3000, 4000, 5000])
    if quick and args.frames_per_worker_second == TARGET_FRAMES_PER_SECOND / TARGET_WORKERS:
        args.frames_per_worker_second = 0.5
    args.duration = args.duration or (6.0 if quick else 30.0)
    history = args.history_frames if args.history_frames is not None else (2_000 if quick else 100_000)
    args.py_spy = None
    if args.profile:
        args.py_spy = args.py_spy or shutil.which("py-spy")
        if args.py_spy is None:
            print("--profile needs py-spy (pip install py-spy, a dev tool); running without the profile",
                  flush=True)
    results = Results("coordinator throughput", quick=quick)
    run_dir = args.keep or tempfile.mkdtemp(prefix="renderq-throughput-")
    os.makedirs(run_dir, exist_ok=True)
    coordinator_args = ["--heartbeat", str(args.heartbeat), *args.coordinator_arg]
    if args.http_threads:
        coordinator_args += ["--http-threads", str(args.http_threads)]
    coordinator = Coordinator(run_dir, *coordinator_args)
    passed: dict[str, Any] | None = None
    ran: list[dict[str, Any]] = []
    try:
        if history:
            with phase(f"fill the data dir with {history:,} finished frames"):
                fill_history(coordinator.data_dir, history)
        with phase("start the coordinator"):
            coordinator.start()
        per_step = [w * args.frames_per_worker_second * (1.0 / args.frames_per_worker_second + max(2.0, args.heartbeat)
                                                         + args.duration + 10) for w in steps]
        # Room for the refining steps too (each smaller than the largest step).
        frames_needed = int((sum(per_step) + args.refine * max(per_step)) * 1.3) + 1000
        with phase(f"submit {args.tasks} tasks with {frames_needed:,} frames in all"):
            submit_frames(coordinator, frames_needed, args.tasks)
        busy = other_load(coordinator.pid)
        if busy > 0.25:
            print(f"note: other processes kept {busy:.2f} of {os.cpu_count()} cores busy just before the run; the "
                  "coordinator and the load generator get only what is left, so the figures are lower than on an "
                  "idle machine", flush=True)
        pending = list(steps)
        refined = 0
        while pending:
            workers = pending.pop(0)
            with phase(f"step {len(ran) + 1}: {workers} workers"):
                result = run_step(coordinator, workers, args, run_dir, len(ran))
            print_step(result)
            ran.append(result)
            if result["passed"]:
                passed = result if passed is None or workers > passed["workers"] else passed
            elif not (args.all_steps or quick):
                pending = []
            if not pending and not (args.all_steps or quick) and refined < args.refine:
                # Halve the gap between the largest farm that passed and the smallest that failed.
                low = max([r["workers"] for r in ran if r["passed"]], default=0)
                high = min([r["workers"] for r in ran if not r["passed"]], default=0)
                middle = round((low + high) / 20) * 10
                if high and low < middle < high:
                    pending.append(middle)
                    refined += 1
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        results.fail(f"the run stopped: {error}")
    finally:
        coordinator.stop()
        if coordinator.popen is not None and "Traceback (most recent call last)" in coordinator.output():
            results.fail(f"the coordinator logged a traceback (see {coordinator.log_path})")
        if not args.keep and not results.problems:
            shutil.rmtree(run_dir, ignore_errors=True)
    heartbeat_target = TARGET_WORKERS / args.heartbeat
    first_failure = min((r for r in ran if not r["passed"]), key=lambda r: r["workers"], default=None)
    note = ""
    if first_failure is not None:
        note = (f"the smallest farm that failed, {first_failure['workers']} workers: "
                f"worst p99 {_ms(first_failure['worst_p99_ms'])}, {first_failure['errors']} errors")
    best = passed or (ran[0] if ran else {})
    results.add("largest farm with p99 < 100 ms", passed["workers"] if passed else 0, "workers", TARGET_WORKERS,
                ">=", note)
    if passed is None and ran:
        print(f"no step kept p99 under {TARGET_P99_MS:g} ms: the figures below are those of the smallest step "
              f"({ran[0]['workers']} workers)", flush=True)
    results.add("updates per second at that farm", _round(best.get("updates_per_second")), "updates/s",
                heartbeat_target, ">=")
    results.add("frames dispatched per second at that farm", _round(best.get("dispatched_per_second")), "frames/s",
                TARGET_FRAMES_PER_SECOND, ">=")
    results.add("frames completed per second at that farm", _round(best.get("completed_per_second")), "frames/s",
                TARGET_FRAMES_PER_SECOND, ">=")
    results.add("worst endpoint p99 at that farm", _round(best.get("worst_p99_ms")), "ms", TARGET_P99_MS, "<=")
    results.add("requests per second at that farm", _round(best.get("requests_per_second")), "requests/s")
    results.add("coordinator CPU at that farm", _round(best.get("coordinator_cpu"), 2), "cores")
    results.add("coordinator CPU per request at that farm", _round(best.get("coordinator_ms_per_request"), 2), "ms")
    results.add("load generator CPU at that farm", _round(best.get("generator_cpu"), 2), "cores",
                note=f"{args.processes} processes on {os.cpu_count()} cores")
    results.add("other processes' CPU at that farm", _round(best.get("other_cpu"), 2), "cores")
    return results.finish(args.json_out)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    sys.exit(main())
