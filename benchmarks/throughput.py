"""Coordinator throughput: the largest farm one coordinator serves with every worker call answered in under 100 ms.

Simulated workers (benchmarks/loadgen.py) speak the real worker protocol over HTTP to a real `renderq coordinator`,
call for call as worker/reporter.py does: register, heartbeat at the interval the coordinator advises (taking new
advice from every answer), claim a frame (POST /frames/claim), report it rendering and claim the next one ahead,
"render" it by sleeping, deliver the file and the done report in one request (POST /frames/finish), and ship the
task log lines (POST /append_log) as the worker's log shipper does (--log-seconds). Each simulated worker keeps its
connections open between calls, as the real client does. Thousands of them run in a few processes (--processes),
each simulating its share of the workers as asyncio tasks over raw HTTP/1.1.

The coordinator serves with --serving-processes processes (default 2, this machine's cores). Load comes in steps
(--steps): every worker renders frames of 10 s (--frames-per-worker-second 0.1), so a farm of
5,000 workers dispatches and completes 500 frames a second, the target's mix. Each step starts its workers spread
over one frame time (so their frames are evenly out of phase), settles, then measures for --duration seconds:
latency percentiles of every endpoint as the client sees them, updates, frames dispatched (claims that got a frame)
and frames completed (finishes accepted) per second, errors, lost leases (a call refused with 409, or a frame dropped
because a heartbeat revoked its lease), and the CPU the coordinator (per request, too), the load generator (per
request, too) and everything else on the machine used. A step passes when every endpoint's p99 is under 100 ms, no
request failed and no lease was lost. The steps stop after the first one that does not pass, and --refine more steps
halve the gap between the largest farm that passed and the smallest that failed.

Figures: the largest farm served (workers), and at it the updates per second, frames dispatched and completed per
second, the worst p99, and the CPU per request of the coordinator and of the load generator. Targets: 5,000
workers, 500 frames/s, p99 < 100 ms, no lost lease, and a load generator cheap enough (< 0.2 ms of CPU per request)
not to be what limits the figure. Tasks are submitted up front with enough frames for every step;
--history-frames first fills the data dir with that many frames already done (in finished tasks), so work that
grows with the history shows up.

--profile samples the coordinator with py-spy (if installed; a dev tool, not a dependency) during each step's
measurement and prints where its time goes: per part (HTTP server, Flask, JSON, store, frame files, ...), then the
functions with the most samples, with what they call and on their own. --profile-mode gil (the default) samples the
thread holding the GIL, i.e. the coordinator's one core of Python; idle samples every thread, waiting too (for the
write lock, a commit, the disk). The samples are kept as collapsed stacks (flame graph input) in the run directory.

    python benchmarks/throughput.py [--quick] [--json-out FILE] [--steps 1000,2000,3500,5000] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import Coordinator, Results, add_arguments, phase, raise_open_files_limit, renderq_env, stop_process
from throughput_profile import Profiler, summarize_profile
from worker.settings import WorkerSettings

LOADGEN = os.path.join(HERE, "loadgen.py")
TARGET_WORKERS = 5000
TARGET_FRAMES_PER_SECOND = 500.0
TARGET_P99_MS = 100.0
# The load generator must leave the machine to the coordinator: at the target's 1,500 or so requests a second this
# is under 0.3 of a core.
TARGET_GENERATOR_MS_PER_REQUEST = 0.2
# 5,100, not 5,000: 5,000 workers of 10 s frames complete just under 500 frames a second (each next frame starts a
# few milliseconds after the last), so the step that shows both targets at once is a little larger.
DEFAULT_STEPS = (1000, 2500, 4000, 5100, 6500)
# The coordinator's --processes: as many as this machine has cores (two), the load generator beside them; one
# process peaks at about 4,000 workers, its one core of Python the limit.
DEFAULT_SERVING_PROCESSES = 2
# Connections one simulated worker holds (its heartbeats, its log lines, and one or two for claims, reports and
# deliveries): the coordinator is started with room for this many per worker of the largest step (it fits them to
# its open-file limit, and says so when that is too low).
CONNECTIONS_PER_WORKER = 4
# A tiny file that passes the coordinator's .blend checks (the header of a Blender 3.4 file).
FAKE_BLEND = b"BLENDER-v304" + b"REND" + bytes(1012)
ENDPOINTS = ("register", "update_worker", "claim", "report_rendering", "finish", "append_log")


# -- the controller ---------------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and of its serving processes (a coordinator with --processes),
    from /proc."""
    user = system = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for one in (pid, *serving_processes(pid)):
        try:
            with open(f"/proc/{one}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a serving process that ended meanwhile
        user += int(fields[11]) / ticks
        system += int(fields[12]) / ticks
    return user, system


def serving_processes(pid: int) -> list[int]:
    """The children of a process (the serving processes of a coordinator started with --processes)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


def coordinator_cpu_seconds(coordinator: Any) -> tuple[float, float]:
    """(user, system) CPU seconds of the coordinator, or of every coordinator of a cluster (throughput_cluster.py)."""
    if hasattr(coordinator, "cpu_seconds"):
        return coordinator.cpu_seconds()
    return process_cpu_seconds(coordinator.pid)


def tier_cpu_seconds(coordinator: Any) -> dict[str, float]:
    """CPU seconds of a cluster's other tiers (its PostgreSQL) by name; none for one coordinator."""
    return coordinator.tier_cpu_seconds() if hasattr(coordinator, "tier_cpu_seconds") else {}


def other_load(own_pid: int, seconds: float = 3.0) -> float:
    """Cores kept busy by everything but the (idle) coordinator over a few seconds: how busy the machine already is."""
    own = sum(process_cpu_seconds(own_pid))
    busy, total = machine_cpu()
    time.sleep(seconds)
    busy_after, total_after = machine_cpu()
    own = sum(process_cpu_seconds(own_pid)) - own
    cores = os.cpu_count() or 1
    return max(0.0, (busy_after - busy) / max(total_after - total, 1e-9) * cores - own / seconds)


def store_turns(coordinator: Any) -> dict[str, float] | None:
    """The coordinator's counters of its turns of worker calls (GET /metrics, summed over the processes of one
    started with --processes), or None for a cluster, whose coordinators each have their own."""
    if not hasattr(coordinator, "client"):
        return None
    from prometheus_client.parser import text_string_to_metric_families

    client = coordinator.client("admin")
    try:
        status, body = client.call("GET", "/metrics")
    finally:
        client.close()
    if status != 200:
        return None
    text = body.decode("utf-8") if isinstance(body, bytes) else str(body)
    figures = {"seconds": 0.0, "turns": 0.0, "within_100ms": 0.0, "calls": 0.0, "commit": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "renderq_store_turn_seconds_sum":
                figures["seconds"] = sample.value
            elif sample.name == "renderq_store_turn_seconds_count":
                figures["turns"] = sample.value
            elif sample.name == "renderq_store_turn_seconds_bucket" and float(sample.labels["le"]) == 0.1:
                figures["within_100ms"] = sample.value
            elif sample.name == "renderq_store_turn_calls_total":
                figures["calls"] = sample.value
            elif sample.name == "renderq_store_turn_commit_seconds_total":
                figures["commit"] = sample.value
    return figures


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / ticks, sum(values[:8]) / ticks


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
    # Until every worker is past its first claim ahead (made as its first frame starts) and claims at the steady pace.
    settle = max(4.0, frame_seconds, 2 * (args.heartbeat or 2.0))
    start_at = time.time() + 2.0 + workers / 2000.0  # time for the processes to start
    measure_from = start_at + ramp + settle
    measure_until = measure_from + args.duration
    processes = max(1, min(args.processes, workers))
    children = []
    first = 0
    for number in range(processes):
        count = workers // processes + (1 if number < workers % processes else 0)
        config = {"host": "127.0.0.1", "port": coordinator.port, "token": coordinator.token("worker"),
                  "prefix": "sim", "first_index": first, "count": count, "total_workers": workers,
                  "frame_seconds": frame_seconds, "log_seconds": args.log_seconds, "start_at": start_at,
                  "ramp": ramp, "measure_from": measure_from, "measure_until": measure_until,
                  "seed": step_number * 1000 + number,
                  # A cluster's coordinators (throughput_cluster.py): worker i uses the (i mod n)th.
                  "ports": getattr(coordinator, "ports", None)}
        first += count
        children.append(subprocess.Popen([sys.executable, LOADGEN, json.dumps(config)], stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, env=renderq_env(), start_new_session=True))
    profiler = None
    try:
        time.sleep(max(0.0, measure_from - time.time()))
        cpu_before = coordinator_cpu_seconds(coordinator)
        tiers_before = tier_cpu_seconds(coordinator)
        machine_before = machine_cpu()
        turns_before = store_turns(coordinator)
        if args.py_spy:
            profiler = Profiler(args.py_spy, coordinator.pid, args.duration,
                                os.path.join(run_dir, f"profile-{workers}-workers.txt"), args.profile_mode)
        time.sleep(max(0.0, measure_until - time.time()))
        cpu_after = coordinator_cpu_seconds(coordinator)
        tiers_after = tier_cpu_seconds(coordinator)
        machine_after = machine_cpu()
        turns_after = store_turns(coordinator)
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
    coordinator_cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    machine = (machine_after[0] - machine_before[0], machine_after[1] - machine_before[1])
    result = aggregate(outputs, workers, frame_seconds, measure_until - measure_from, coordinator_cpu, machine)
    if turns_before and turns_after:
        result["store_turns"] = {name: turns_after[name] - turns_before[name] for name in turns_after}
        result["store_turns"]["threads"] = max(1, len(serving_processes(coordinator.pid)))
    if tiers_after:
        from throughput_cluster import add_tiers

        add_tiers(result, tiers_before, tiers_after, measure_until - measure_from)
    if profiler is not None:
        profile_path = profiler.wait()
        result["profile"] = summarize_profile(profile_path) if profile_path else None
        result["profile_path"] = profile_path
    return result


def aggregate(outputs: list[dict[str, Any]], workers: int, frame_seconds: float, window: float,
              coordinator_cpu: tuple[float, float], machine: tuple[float, float]) -> dict[str, Any]:
    """One step's figures from what the generator processes saw and the CPU counters read around the window."""
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    examples: list[str] = []
    lag: list[float] = []
    advice: dict[str, float] = {}
    generator_cpu = 0.0
    for output in outputs:
        for endpoint, values in output["latencies"].items():
            latencies[endpoint].extend(values)
        errors.update(output["errors"])
        counts.update(output["counts"])
        examples.extend(output["error_examples"])
        lag.extend(output["loop_lag_ms"])
        advice.update(output["advice"])
        generator_cpu += output["cpu_seconds"]
    every = [value for values in latencies.values() for value in values]
    requests = max(1, len(every))
    per_endpoint = {endpoint: {"count": len(latencies[endpoint]), "p50": percentile(latencies[endpoint], 0.5),
                               "p99": percentile(latencies[endpoint], 0.99),
                               "max": max(latencies[endpoint]) if latencies[endpoint] else None}
                    for endpoint in ENDPOINTS if latencies.get(endpoint)}
    worst_p99 = max((figures["p99"] for figures in per_endpoint.values()), default=None)
    cores = os.cpu_count() or 1
    coordinator_seconds = sum(coordinator_cpu)
    machine_cores = machine[0] / max(machine[1], 1e-9) * cores
    return {
        "workers": workers,
        "frame_seconds": frame_seconds,
        "window_seconds": window,
        "requests_per_second": len(every) / window,
        "updates_per_second": counts["updates"] / window,
        "dispatched_per_second": counts["dispatched"] / window,
        "completed_per_second": counts["completed"] / window,
        "claims_empty": counts["claims_empty"],
        "lost_leases": counts["lost_leases"],
        "errors": sum(errors.values()),
        "error_examples": examples[:5],
        "connections_opened": counts["connections_opened"],
        "connections_total": counts["connections_total"],
        "resent": counts["resent"],
        "heartbeat_seconds": advice.get("heartbeat_seconds"),
        "lease_seconds": advice.get("lease_seconds"),
        "p50_ms": percentile(every, 0.5),
        "p99_ms": percentile(every, 0.99),
        "worst_p99_ms": worst_p99,
        "endpoints": per_endpoint,
        "loop_lag_p99_ms": percentile(lag, 0.99),
        # Cores busy during the window (out of `cores`).
        "coordinator_cpu": coordinator_seconds / window,
        "coordinator_system_cpu": coordinator_cpu[1] / window,
        "coordinator_ms_per_request": 1000.0 * coordinator_seconds / requests,
        "generator_cpu": generator_cpu / window,
        "generator_ms_per_request": 1000.0 * generator_cpu / requests,
        "machine_cpu": machine_cores,
        "other_cpu": max(0.0, machine_cores - coordinator_seconds / window - generator_cpu / window),
        "cores": cores,
        "event_loop": ", ".join(sorted({output.get("event_loop", "asyncio") for output in outputs})),
        "passed": (worst_p99 is not None and worst_p99 < TARGET_P99_MS and not errors
                   and not counts["lost_leases"]),
    }


def print_step(result: dict[str, Any]) -> None:
    verdict = "passes" if result["passed"] else "FAILS"
    print(f"  {result['workers']} workers ({result['frame_seconds']:g} s frames): {verdict}; "
          f"{result['requests_per_second']:.0f} requests/s, {result['updates_per_second']:.0f} updates/s, "
          f"{result['dispatched_per_second']:.1f} frames/s dispatched, "
          f"{result['completed_per_second']:.1f} completed; p50 {_ms(result['p50_ms'])}, "
          f"p99 {_ms(result['p99_ms'])}, worst endpoint p99 {_ms(result['worst_p99_ms'])}; "
          f"{result['errors']} errors, {result['lost_leases']} lost leases", flush=True)
    for endpoint, figures in result["endpoints"].items():
        print(f"    {endpoint:17} {figures['count']:7d} calls  p50 {_ms(figures['p50'])}  p99 {_ms(figures['p99'])}"
              f"  max {_ms(figures['max'])}")
    print(f"    CPU (cores busy): coordinator {result['coordinator_cpu']:.2f} "
          f"({result['coordinator_system_cpu']:.2f} of it in the kernel; "
          f"{result['coordinator_ms_per_request']:.2f} ms per request), load generator "
          f"{result['generator_cpu']:.2f} ({result['generator_ms_per_request']:.3f} ms per request, "
          f"{result['event_loop']}), "
          f"everything else {result['other_cpu']:.2f} of {result['cores']}; "
          f"generator event-loop lag p99 {_ms(result['loop_lag_p99_ms'])}", flush=True)
    print(f"    advised heartbeat {_seconds(result['heartbeat_seconds'])}, lease {_seconds(result['lease_seconds'])}; "
          f"{result['connections_total']} connections opened in all, {result['connections_opened']} during the "
          f"window; {result['resent']} requests sent again after the coordinator closed their kept-alive "
          "connection", flush=True)
    turns = result.get("store_turns")
    if turns and turns["turns"]:
        window = result["window_seconds"]
        busy, commit = 100 * turns["seconds"] / window, 100 * turns["commit"] / window
        threads = turns.get("threads", 1)
        whose = "the thread that applies" if threads == 1 else f"the {threads:.0f} threads (one a process) that apply"
        print(f"    store turns: {whose} the workers' calls {'was' if threads == 1 else 'were'} busy {busy:.0f} % of "
              f"the window{'' if threads == 1 else ' in all'} "
              f"({commit:.0f} % in COMMITs); {turns['turns']:.0f} turns of {turns['calls'] / turns['turns']:.1f} "
              f"calls on average, {turns['turns'] - turns['within_100ms']:.0f} of them over 100 ms", flush=True)
    if result["machine_cpu"] > 0.9 * result["cores"]:
        print(f"    the machine's CPU was all in use ({result['machine_cpu']:.2f} of {result['cores']} cores): "
              f"{result['generator_cpu']:.2f} of them the load generator's", flush=True)
    if result["claims_empty"]:
        print(f"    {result['claims_empty']} claims found no frame waiting", flush=True)
    for example in result["error_examples"]:
        print(f"    error: {example}", flush=True)
    for line in result.get("profile") or []:
        print(line, flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "steps of 20 and 60 workers, 2 s frames, 6 s windows")
    parser.add_argument("--steps", help="farm sizes to try, in workers, e.g. 500,1000,2000,5000 "
                        f"(default {','.join(map(str, DEFAULT_STEPS))})")
    parser.add_argument("--frames-per-worker-second", type=float, default=TARGET_FRAMES_PER_SECOND / TARGET_WORKERS,
                        help="frames each worker finishes a second (the inverse of the frame time; default 0.1, "
                        "the target's 500 frames/s over 5,000 workers)")
    parser.add_argument("--duration", type=float, help="seconds each step is measured (default 30)")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--log-seconds", type=float, default=WorkerSettings.log_interval,
                        help="seconds between a rendering worker's posts of Blender's output to the task log, as "
                        "the worker's log shipper (default: the worker's own, "
                        f"{WorkerSettings.log_interval:g}); 0: only the \"frame done\" line after each frame")
    parser.add_argument("--heartbeat", type=float, help="the coordinator's --heartbeat in seconds (default: none "
                        "given, the coordinator advises its own)")
    parser.add_argument("--http-threads", type=int, help="the coordinator's --http-threads (default: its own)")
    parser.add_argument("--serving-processes", type=int, default=DEFAULT_SERVING_PROCESSES, metavar="N",
                        help=f"the coordinator's --processes (default {DEFAULT_SERVING_PROCESSES}; not with "
                        "--cluster, whose coordinators serve with one each)")
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
    parser.add_argument("--py-spy", help="the py-spy executable (default: py-spy on PATH or beside this Python)")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (data dir, logs, profiles)")
    parser.add_argument("--cluster", action="store_true",
                        help="the same steps with the coordinators on one PostgreSQL (started for the run), the "
                        "simulated workers spread over them round robin; see throughput_cluster.py")
    parser.add_argument("--coordinators", default="1,2,3",
                        help="with --cluster: the coordinator counts to measure, in turn (default 1,2,3)")
    return parser


def coordinator_arguments(args: argparse.Namespace, steps: list[int]) -> list[str]:
    """`renderq coordinator` flags: room for every connection of the largest step, and what the user asked for."""
    connections = max(4096, CONNECTIONS_PER_WORKER * max(steps) + 256)
    arguments = ["--max-connections", str(connections)]
    if args.heartbeat:
        arguments += ["--heartbeat", str(args.heartbeat)]
    if args.http_threads:
        arguments += ["--http-threads", str(args.http_threads)]
    if args.serving_processes > 1 and not args.cluster:
        arguments += ["--processes", str(args.serving_processes)]
    return arguments + args.coordinator_arg


def run_steps(coordinator: Coordinator, steps: list[int], args: argparse.Namespace,
              run_dir: str) -> list[dict[str, Any]]:
    """Every step up to the first that fails (all with --all-steps or --quick), then the refining steps."""
    ran: list[dict[str, Any]] = []
    pending = list(steps)
    refined = 0
    stop_at_failure = not (args.all_steps or args.quick)
    while pending:
        workers = pending.pop(0)
        with phase(f"step {len(ran) + 1}: {workers} workers"):
            result = run_step(coordinator, workers, args, run_dir, len(ran))
        print_step(result)
        ran.append(result)
        if not result["passed"] and stop_at_failure:
            pending = []
        if not pending and stop_at_failure and refined < args.refine:
            # Halve the gap between the largest farm that passed and the smallest that failed.
            low = max([r["workers"] for r in ran if r["passed"]], default=0)
            high = min([r["workers"] for r in ran if not r["passed"]], default=0)
            middle = round((low + high) / 20) * 10
            if high and low < middle < high:
                pending.append(middle)
                refined += 1
    return ran


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = args.quick
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [20, 60] if quick else list(DEFAULT_STEPS)
    if quick and args.frames_per_worker_second == TARGET_FRAMES_PER_SECOND / TARGET_WORKERS:
        args.frames_per_worker_second = 0.5
    args.duration = args.duration or (6.0 if quick else 30.0)
    history = args.history_frames if args.history_frames is not None else (2_000 if quick else 100_000)
    if not args.profile:
        args.py_spy = None
    else:
        # On PATH, or beside this Python (a virtual environment's bin, when it is not on PATH).
        args.py_spy = (args.py_spy or shutil.which("py-spy")
                       or shutil.which("py-spy", path=os.path.dirname(sys.executable)))
        if args.py_spy is None:
            print("--profile needs py-spy (pip install py-spy, a dev tool); running without the profile",
                  flush=True)
    # The generator processes inherit it: each holds a socket per connection, thousands of them.
    raise_open_files_limit()
    if args.cluster:
        from throughput_cluster import run_cluster

        return run_cluster(args, steps)
    results = Results("coordinator throughput", quick=quick)
    run_dir = args.keep or tempfile.mkdtemp(prefix="renderq-throughput-")
    os.makedirs(run_dir, exist_ok=True)
    coordinator = Coordinator(run_dir, *coordinator_arguments(args, steps))
    ran: list[dict[str, Any]] = []
    try:
        if history:
            with phase(f"fill the data dir with {history:,} finished frames"):
                fill_history(coordinator.data_dir, history)
        with phase("start the coordinator"):
            coordinator.start()
        per_step = [w * args.frames_per_worker_second * (2.0 / args.frames_per_worker_second + 8.0
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
        ran = run_steps(coordinator, steps, args, run_dir)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        results.fail(f"the run stopped: {error}")
    finally:
        coordinator.stop()
        if coordinator.popen is not None and "Traceback (most recent call last)" in coordinator.output():
            results.fail(f"the coordinator logged a traceback (see {coordinator.log_path})")
        if not args.keep and not results.problems:
            shutil.rmtree(run_dir, ignore_errors=True)
    report(results, ran, args)
    return results.finish(args.json_out)


def report(results: Results, ran: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The figures of the largest farm that passed (of the smallest step when none did)."""
    passed = max((r for r in ran if r["passed"]), key=lambda r: r["workers"], default=None)
    first_failure = min((r for r in ran if not r["passed"]), key=lambda r: r["workers"], default=None)
    note = ""
    if first_failure is not None:
        note = (f"the smallest farm that failed, {first_failure['workers']} workers: "
                f"worst p99 {_ms(first_failure['worst_p99_ms'])}, {first_failure['errors']} errors, "
                f"{first_failure['lost_leases']} lost leases")
    smallest = min(ran, key=lambda r: r["workers"], default={})
    best = passed or smallest
    results.add("largest farm with p99 < 100 ms", passed["workers"] if passed else 0, "workers", TARGET_WORKERS,
                ">=", note)
    if passed is None and ran:
        print(f"no step passed: the figures below are those of the smallest step ({smallest['workers']} workers)",
              flush=True)
    heartbeat = best.get("heartbeat_seconds")
    results.add("advised heartbeat at that farm", heartbeat, "s")
    results.add("updates per second at that farm", _round(best.get("updates_per_second")), "updates/s")
    results.add("frames dispatched per second at that farm", _round(best.get("dispatched_per_second")), "frames/s",
                TARGET_FRAMES_PER_SECOND, ">=")
    results.add("frames completed per second at that farm", _round(best.get("completed_per_second")), "frames/s",
                TARGET_FRAMES_PER_SECOND, ">=")
    results.add("worst endpoint p99 at that farm", _round(best.get("worst_p99_ms")), "ms", TARGET_P99_MS, "<=")
    results.add("lost leases at that farm", best.get("lost_leases"), "leases", 0, "<=")
    results.add("requests per second at that farm", _round(best.get("requests_per_second")), "requests/s")
    results.add("coordinator CPU at that farm", _round(best.get("coordinator_cpu"), 2), "cores")
    results.add("coordinator CPU per request at that farm", _round(best.get("coordinator_ms_per_request"), 2), "ms")
    results.add("load generator CPU at that farm", _round(best.get("generator_cpu"), 2), "cores",
                note=f"{args.processes} processes on {os.cpu_count()} cores")
    results.add("load generator CPU per request at that farm", _round(best.get("generator_ms_per_request"), 3),
                "ms", TARGET_GENERATOR_MS_PER_REQUEST, "<=")
    results.add("other processes' CPU at that farm", _round(best.get("other_cpu"), 2), "cores")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    sys.exit(main())
