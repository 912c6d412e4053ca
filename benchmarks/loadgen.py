"""The throughput benchmark's load generator: one process simulating a share of the farm over raw HTTP/1.1.

benchmarks/throughput.py starts a few of these, each with a JSON config, and reads back one JSON line of what it saw.
Each simulated worker makes the calls the real worker makes (worker/reporter.py and worker/loop.py over
renderq/http_client.py), in the same order and at the same moments, with only Blender replaced by a sleep:

- register (POST /register_worker); then a heartbeat (POST /update_worker with the leases it holds) every
  `heartbeat_seconds` the coordinator advises less a random part of up to 15 %, taking a new `heartbeat_seconds` or
  `lease_seconds` from any answer that carries one (the advice may change as the farm grows);
- when idle, claim a frame (POST /frames/claim), waiting the advised `poll_seconds` when there is none;
- as the frame starts, report it rendering (POST /update_task) and then, at the moment the worker's own prefetch
  timer (worker/prefetch.py) picks, claim the next frame preferring the same task, both on the "ahead" lane;
- when the frame ends, deliver its file and done report in one request (POST /frames/finish), after the rendering
  report, then ship the "frame N done" log line at once (POST /append_log);
- while a frame renders, ship Blender's output to the task log every --log-seconds (the worker's log_interval),
  or every heartbeat interval when the coordinator advises a longer one, as the worker's shipper does;
- when the coordinator's answers say `batch_reports` (a farm whose heartbeats were spread out), the frame's start
  rides on the next claim or heartbeat and the log lines on the next heartbeat, as worker/riding.py and the
  shipper's `take_ride` do: a frame is then a claim and a finish.

A lease is lost when a heartbeat answer revokes one the worker still holds and the frame is then dropped, or when a
call on it is refused with 409. Every simulated worker keeps its connections open between calls, as the real
client does (one per thread): the heartbeats and the log lines have one each, driven by loop callbacks alone; the
other calls take one of the worker's idle connections or open another. The HTTP (benchmarks/rawhttp.py) is the
least that works, so that the generator's CPU stays far below the coordinator's.

    python benchmarks/loadgen.py CONFIG_JSON
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from rawhttp import Connections, Coordinator, Periodic
from simworker import frame_png
from worker.prefetch import PrefetchTimer
from worker.reporter import POLL_ADVICE_LIMITS, heartbeat_wait

# How long a simulated worker waits after a call that failed before trying again.
RETRY_SECONDS = 1.0
# Blender's console lines shipped per log post while a frame renders (a Cycles render prints several a second).
BLENDER_LINES = "".join(f"Fra:{{frame}} Mem:312.40M (Peak 412.10M) | Time:00:0{i}.50 | Sample {i * 8}/64\n"
                        for i in range(1, 5))
BLENDER_LINES_JSON = json.dumps(BLENDER_LINES)


def merged_lines(lines: list[tuple[int, str]]) -> list[str]:
    """The heartbeat's `logs` items (JSON) for buffered (task id, text): one per run of one task's lines."""
    items: list[str] = []
    run_task, run_text = lines[0][0], [lines[0][1]]
    for task_id, text in lines[1:]:
        if task_id != run_task:
            items.append(f'{{"task_id":{run_task},"text":{json.dumps("".join(run_text))}}}')
            run_task, run_text = task_id, []
        run_text.append(text)
    items.append(f'{{"task_id":{run_task},"text":{json.dumps("".join(run_text))}}}')
    return items


class Refused(Exception):
    """A call that failed: the coordinator refused it (`status` set) or did not answer (`status` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


# -- what one process saw ---------------------------------------------------------------------------------------------


class Stats:
    """What one process saw: latencies (ms) and outcomes per endpoint inside the measurement window."""

    def __init__(self, measure_from: float, measure_until: float) -> None:
        self.measure_from = measure_from
        self.measure_until = measure_until
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter = collections.Counter()
        self.error_examples: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        self.loop_lag_ms: list[float] = []
        self.advice: dict[str, float] = {}

    def in_window(self, when: float) -> bool:
        return self.measure_from <= when < self.measure_until

    def record(self, endpoint: str, started_wall: float, seconds: float, error: str | None) -> None:
        if not self.measure_from <= started_wall < self.measure_until:
            return
        self.latencies[endpoint].append(seconds * 1000.0)
        if error is not None:
            self.errors[endpoint] += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(f"{endpoint}: {error}")

    def count(self, what: str, number: int = 1) -> None:
        if self.measure_from <= time.time() < self.measure_until:
            self.counts[what] += number


# -- the simulated worker ---------------------------------------------------------------------------------------------


class Held:
    """A frame the simulated worker holds."""

    __slots__ = ("task_id", "frame", "lease_id", "revoked")

    def __init__(self, claimed: dict[str, Any]) -> None:
        self.task_id: int = claimed["task_id"]
        self.frame: int = claimed["frame"]
        self.lease_id: str = claimed["lease_id"]
        self.revoked = False


class SimWorker:
    """One simulated worker: the calls of the real worker's threads, as coroutines of one event loop."""

    def __init__(self, farm: SimFarm, name: str, coordinator: Coordinator) -> None:
        self.farm = farm
        self.stats = farm.stats
        self.name = name
        # The one coordinator of a cluster this worker was given (round robin over the farm's ports).
        self.coordinator = coordinator
        self.http = Connections(coordinator)
        self.worker_id = 0
        self.heartbeat_seconds = 2.0
        self.lease_seconds = 15.0
        self.poll_seconds = 2.0
        self.held: dict[str, Held] = {}
        self.prefetch = PrefetchTimer()
        self.rendering: Held | None = None
        self.delivering: asyncio.Task | None = None
        # A large farm's riders (batch_reports): frames' starts as JSON by lease id, and log lines as JSON objects.
        self.batch_reports = False
        self.starts: dict[str, str] = {}
        self.lines: list[tuple[int, str]] = []  # (task id, text), merged per run of one task as the shipper does

    async def call(self, endpoint: str, target: str, body: str, raw: bytes | None = None) -> bytes:
        """Time one POST of the JSON text `body` (or the bytes `raw`) under `endpoint`; its answer's body, or
        Refused (after recording it) unless 2xx."""
        coordinator = self.coordinator
        if raw is None:
            request = coordinator.request(target, body.encode())
        else:
            request = coordinator.request(target, raw, b"application/octet-stream")
        wall = time.time()
        started = time.perf_counter()
        try:
            status, answer = await self.http.call(request)
        except (OSError, ValueError) as exc:
            self.stats.record(endpoint, wall, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
            raise Refused(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            self.stats.record(endpoint, wall, time.perf_counter() - started, None)
            return answer
        message = f"HTTP {status}: {answer[:300].decode('utf-8', 'replace')}"
        if status == 409:
            # A lost lease is counted as such (lost_leases), not as an error.
            self.stats.record(endpoint, wall, time.perf_counter() - started, None)
        else:
            self.stats.record(endpoint, wall, time.perf_counter() - started, message)
        raise Refused(message, status)

    def take_advice(self, answer: dict[str, Any]) -> None:
        """New heartbeat interval and lease length whenever an answer carries them, as the farm grows."""
        for key in ("heartbeat_seconds", "lease_seconds"):
            value = answer.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                setattr(self, key, float(value))
                self.stats.advice[key] = float(value)
        if "batch_reports" in answer:
            self.batch_reports = bool(answer["batch_reports"])
            self.stats.advice["batch_reports"] = self.batch_reports

    def lose(self, lease: Held) -> None:
        """The frame of `lease` is dropped: its lease was lost."""
        self.held.pop(lease.lease_id, None)
        self.stats.count("lost_leases")

    async def run(self) -> None:
        """Register, then heartbeats and log shipping beside the loop of claims and frames."""
        if not await self.register():
            return
        coordinator = self.coordinator
        helpers = [Periodic(coordinator, self.heartbeat_request, self.heartbeat_answered,
                            self.heartbeat_wait, self.timer("update_worker"))]
        helpers[0].start(self.heartbeat_seconds)
        log_seconds = self.farm.config["log_seconds"]
        if log_seconds > 0:
            # As the worker's shipper: every log_interval, or every heartbeat interval when the farm beats rarer.
            helpers.append(Periodic(coordinator, self.blender_lines_request, lambda status, body: None,
                                    lambda: max(log_seconds, self.heartbeat_seconds), self.timer("append_log")))
            helpers[1].start(self.farm.random.uniform(0, log_seconds))
        try:
            ahead: asyncio.Future | None = None
            while not self.farm.stopping:
                lease = await ahead if ahead is not None else await self.claim(None)
                if lease is None:
                    if ahead is None:
                        await asyncio.sleep(self.poll_seconds)
                    ahead = None
                    continue
                ahead = await self.render(lease)
        finally:
            for helper in helpers:
                helper.stop()
            self.http.close()

    async def register(self) -> bool:
        body = json.dumps({"name": self.name, "host": "throughput", "blender_version": "3.4.1", "cpu_count": 1,
                           "allows_python": False})
        while not self.farm.stopping:
            try:
                answer = json.loads(await self.call("register", "/register_worker", body))
            except Refused:
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.worker_id = int(answer["worker_id"])
            self.take_advice(answer)
            self.take_poll_advice(answer)
            return True
        return False

    def take_poll_advice(self, answer: dict[str, Any]) -> None:
        advice = answer.get("poll_seconds")
        if isinstance(advice, (int, float)) and not isinstance(advice, bool):
            low, high = POLL_ADVICE_LIMITS
            self.poll_seconds = min(high, max(low, float(advice)))

    def heartbeat_wait(self) -> float:
        """Seconds to the next heartbeat: the advised interval less a random part, as the worker waits."""
        return heartbeat_wait(self.heartbeat_seconds, self.farm.random)

    def heartbeat_request(self) -> bytes:
        """The heartbeat renewing the held leases (due every advised interval after the last one ended, as the
        worker's heartbeat thread waits). The JSON bodies of the frequent calls are formatted by hand: lease ids are
        hex, the rest numbers."""
        leases = '","'.join(self.held)
        riders = ""
        if self.starts:
            riders += f',"rendering":[{",".join(self.starts.values())}]'
            self.starts = {}
        if self.lines:
            riders += f',"logs":[{",".join(merged_lines(self.lines))}]'
            self.lines = []
        return self.coordinator.request(
            "/update_worker",
            f'{{"worker_id":{self.worker_id},"leases":[{chr(34) + leases + chr(34) if leases else ""}]{riders}}}'
            .encode())

    def heartbeat_answered(self, status: int, body: bytes) -> None:
        """Take the advice and the revoked leases of a heartbeat's answer (a refusal is recorded, nothing more:
        like the real worker's, the next heartbeat comes on schedule)."""
        if not 200 <= status < 300:
            return
        answer = json.loads(body)
        self.stats.count("updates")
        self.take_advice(answer)
        for lease_id in answer.get("revoked") or ():
            lease = self.held.get(lease_id)
            if lease is not None:
                # Lost once the frame is dropped for it; a finish already on its way may still be taken.
                lease.revoked = True

    def timer(self, endpoint: str) -> Callable[[float, float, str | None, int], None]:
        """What records a periodic call's outcome under `endpoint`, as `call` does."""
        record = self.stats.record

        def timed(wall: float, seconds: float, error: str | None, status: int) -> None:
            if error is None and not (200 <= status < 300 or status == 409):
                error = f"HTTP {status}"
            record(endpoint, wall, seconds, error)

        return timed

    async def claim(self, prefer_task_id: int | None) -> Held | None:
        """Claim a frame; None when there is none (the poll advice taken) or the call failed."""
        try:
            answer = json.loads(await self.call("claim", "/frames/claim", self.claim_body(prefer_task_id)))
        except Refused as refused:
            if refused.status == 404:
                await self.register()  # the coordinator forgot this worker: register again, as the real one does
            else:
                await asyncio.sleep(RETRY_SECONDS)
            return None
        claimed = answer.get("frame")
        if not claimed:
            self.stats.count("claims_empty")
            self.take_poll_advice(answer)
            return None
        self.stats.count("dispatched")
        lease = Held(claimed)
        self.held[lease.lease_id] = lease
        return lease

    def claim_body(self, prefer_task_id: int | None) -> str:
        prefer = "null" if prefer_task_id is None else prefer_task_id
        riders = ""
        if self.starts:
            riders = f',"rendering":[{",".join(self.starts.values())}]'
            self.starts = {}
        return f'{{"worker_id":{self.worker_id},"prefer_task_id":{prefer}{riders}}}'

    async def render(self, lease: Held) -> asyncio.Future | None:
        """Render one frame: the rendering report and the claim ahead on their lane, the delivery after; returns
        the claim of the next frame when one was made."""
        if lease.revoked:
            self.lose(lease)
            return None
        loop = asyncio.get_running_loop()
        started_wall, started = time.time(), loop.time()
        render_seconds = self.farm.config["frame_seconds"] * self.farm.random.uniform(0.8, 1.2)
        ends = started + render_seconds
        rendering = asyncio.ensure_future(self.report_rendering(lease, started_wall))
        claim_at = started + self.prefetch.delay(lease.task_id, started_wall)
        ahead = None
        self.rendering = lease
        try:
            if claim_at < ends:
                await asyncio.sleep(max(0.0, claim_at - loop.time()))
                if not lease.revoked:
                    ahead = asyncio.ensure_future(self.claim_ahead(rendering, lease.task_id))
            await asyncio.sleep(max(0.0, ends - loop.time()))
        finally:
            self.rendering = None
        if lease.revoked:
            self.lose(lease)
            return ahead
        self.prefetch.note(lease.task_id, render_seconds)
        previous = self.delivering
        self.delivering = asyncio.ensure_future(
            self.deliver(lease, previous, rendering, (started_wall, time.time(), render_seconds)))
        return ahead

    async def report_rendering(self, lease: Held, started_at: float) -> None:
        if self.batch_reports:
            self.starts[lease.lease_id] = (f'{{"task_id":{lease.task_id},"frame":{lease.frame},'
                                           f'"lease_id":"{lease.lease_id}","started_at":{started_at!r}}}')
            return
        try:
            await self.call("report_rendering", "/update_task",
                            f'{{"worker_id":{self.worker_id},"task_id":{lease.task_id},"frame":{lease.frame},'
                            f'"lease_id":"{lease.lease_id}","status":"rendering","started_at":{started_at!r}}}')
        except Refused as refused:
            if refused.status == 409:
                lease.revoked = True

    async def claim_ahead(self, rendering: asyncio.Future, task_id: int) -> Held | None:
        """The prefetch claim, after the rendering report on the same lane."""
        await rendering
        try:
            answer = json.loads(await self.call("claim", "/frames/claim", self.claim_body(task_id)))
        except Refused:
            return None  # the loop claims in the usual way
        claimed = answer.get("frame")
        if not claimed:
            self.stats.count("claims_empty")
            return None
        self.stats.count("dispatched")
        lease = Held(claimed)
        self.held[lease.lease_id] = lease
        return lease

    async def deliver(self, lease: Held, previous: asyncio.Future | None, rendering: asyncio.Future,
                      times: tuple[float, float, float]) -> None:
        """The frame's file and done report in one request, after earlier deliveries and the rendering report."""
        for earlier in (previous, rendering):
            if earlier is not None:
                with contextlib.suppress(Exception):
                    await earlier
        self.starts.pop(lease.lease_id, None)  # the finish says when the frame started
        if lease.revoked:
            self.lose(lease)
            return
        started_at, ended_at, seconds = times
        target = (f"/frames/finish?worker_id={self.worker_id}&task_id={lease.task_id}&frame={lease.frame}"
                  f"&lease_id={lease.lease_id}&filename=f_{lease.frame:05d}.png&started_at={started_at!r}"
                  f"&ended_at={ended_at!r}&render_seconds={seconds!r}")
        try:
            await self.call("finish", target, "", raw=frame_png(lease.task_id, lease.frame, lease.lease_id))
        except Refused as refused:
            if refused.status == 409:
                self.lose(lease)
            else:
                self.held.pop(lease.lease_id, None)  # the real worker retries, then lets its lease expire
            return
        self.held.pop(lease.lease_id, None)
        self.stats.count("completed")
        # The worker adds "frame N done" to the task log and flushes the shipper: one post right away.
        await self.post_log(lease.task_id, json.dumps(f"[{self.name}] frame {lease.frame} done in {seconds:.2f} s\n"))

    def blender_lines_request(self) -> bytes | None:
        """Blender's output of the frame rendering now, posted every log interval as the log shipper does; None
        while no frame renders."""
        lease = self.rendering
        if lease is None:
            return None
        text = BLENDER_LINES_JSON.replace("{frame}", str(lease.frame))
        if self.batch_reports:
            self.lines.append((lease.task_id, BLENDER_LINES.replace("{frame}", str(lease.frame))))
            return None
        return self.coordinator.request(
            "/append_log", f'{{"task_id":{lease.task_id},"worker_id":{self.worker_id},"text":{text}}}'.encode())

    async def post_log(self, task_id: int, text_json: str) -> None:
        """Post log lines (`text_json`: the text as a JSON string) to the task's log, or keep them for the next
        heartbeat on a large farm."""
        if self.batch_reports:
            self.lines.append((task_id, json.loads(text_json)))
            return
        with contextlib.suppress(Refused):
            await self.call("append_log", "/append_log",
                            f'{{"task_id":{task_id},"worker_id":{self.worker_id},"text":{text_json}}}')


class SimFarm:
    """Many simulated workers in one process, all on one event loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        # `ports`: a cluster's coordinators, worker i using the (i mod n)th; else the one `port`.
        self.coordinators = [Coordinator(config["host"], port, config["token"])
                             for port in config.get("ports") or [config["port"]]]
        self.stats = Stats(config["measure_from"], config["measure_until"])
        self.random = random.Random(config["seed"])
        self.stopping = False

    async def start_worker(self, index: int) -> None:
        config = self.config
        global_index = config["first_index"] + index
        start = config["start_at"] + config["ramp"] * global_index / config["total_workers"]
        await asyncio.sleep(max(0.0, start - time.time()))
        coordinator = self.coordinators[global_index % len(self.coordinators)]
        await SimWorker(self, f"{config['prefix']}-{global_index:05d}", coordinator).run()

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
        workers = [asyncio.ensure_future(self.start_worker(i)) for i in range(config["count"])]
        lag = asyncio.ensure_future(self.loop_lag())
        sweeps = [asyncio.ensure_future(c.time_out_late_answers()) for c in self.coordinators]
        await asyncio.sleep(max(0.0, config["measure_from"] - time.time()))
        cpu_start, opened_start, resent_start = own_cpu_seconds(), self.opened(), self.resent()
        await asyncio.sleep(max(0.0, config["measure_until"] - time.time()))
        cpu_seconds = own_cpu_seconds() - cpu_start
        opened = self.opened() - opened_start
        self.stopping = True
        for task in [*workers, lag, *sweeps]:
            task.cancel()
        await asyncio.gather(*workers, lag, *sweeps, return_exceptions=True)
        stats = self.stats
        return {"latencies": stats.latencies, "errors": stats.errors, "error_examples": stats.error_examples,
                "counts": {**stats.counts, "connections_opened": opened, "connections_total": self.opened(),
                           "resent": self.resent() - resent_start},
                "loop_lag_ms": stats.loop_lag_ms, "cpu_seconds": cpu_seconds, "advice": stats.advice}

    def opened(self) -> int:
        """Connections opened so far, to every coordinator."""
        return sum(coordinator.opened for coordinator in self.coordinators)

    def resent(self) -> int:
        """Requests sent again so far after a coordinator closed their kept-alive connection."""
        return sum(coordinator.resent for coordinator in self.coordinators)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Run the workers of one config (a JSON object, the only argument); print what was seen as one JSON line."""
    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per connection: thousands
    try:
        import uvloop  # optional: the same loop at about two thirds of the CPU, when it is installed
    except ImportError:
        result = asyncio.run(SimFarm(config).run())
    else:
        result = uvloop.run(SimFarm(config).run())
    result["event_loop"] = "uvloop" if "uvloop" in sys.modules else "asyncio"
    # The result is larger than a pipe's buffer, and after uvloop a write to the pipe may take only part of it
    # (seen: the first 64 KiB, silently): write until all of it went.
    line = (json.dumps(result) + "\n").encode()
    sys.stdout.flush()
    while line:
        line = line[os.write(sys.stdout.fileno(), line):]
    return 0


if __name__ == "__main__":
    sys.exit(main())
