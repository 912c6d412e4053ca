"""The soak's command line, what it counts during a run, and how its figures are recorded (benchmarks/soak.py)."""

from __future__ import annotations

import argparse
import dataclasses

from common import MB, Results, add_arguments


@dataclasses.dataclass
class Counts:
    """What happened during the run."""

    kills_real: int = 0
    kills_sim: int = 0
    stalls_real: int = 0
    stalls_sim: int = 0
    restarts: int = 0
    blender_survivors: int = 0
    max_coordinator_rss: int = 0
    max_health_seconds: float = 0.0
    submitted: list[int] = dataclasses.field(default_factory=list)
    unexpected_exits: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Findings:
    """What the checks found: counts by name, and sentences about each problem (the first few of each kind)."""

    numbers: dict[str, int | float]
    slowest_request: str
    details: list[str]


# -- command line ---------------------------------------------------------------------------------------------------


QUICK = {"duration": 60.0, "drain_timeout": 90.0, "kill_every": 1.0, "stall_every": 4.0, "real_chaos_every": 12.0,
         "coordinator_kill_every": 10.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak.py", description="Soak a real coordinator with real and simulated workers under chaos; check "
        "that no frame is lost or done twice.")
    add_arguments(parser, "60 s of chaos, kills every 1 s, a real worker hit every 12 s, at most 90 s to finish; "
                  "explicit options still win. The soak's targets (nothing lost or doubled) hold in quick mode too")
    parser.add_argument("--duration", type=float, help="seconds of chaos and submitting (default 600; quick 60)")
    parser.add_argument("--drain-timeout", type=float,
                        help="seconds the tasks get to finish once the chaos stops (default 300; quick 90)")
    parser.add_argument("--sim-workers", type=int, default=200, help="simulated worker processes (default 200)")
    parser.add_argument("--real-workers", type=int, default=2, help="real Blender workers (default 2)")
    parser.add_argument("--blender", help="the Blender executable (default: $RENDERQ_BLENDER, else blender on PATH)")
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="the coordinator's worker heartbeat interval in seconds (default 2)")
    parser.add_argument("--alive-timeout", type=float, default=8.0,
                        help="seconds without a heartbeat before a worker's frames are requeued (default 8)")
    parser.add_argument("--frame-fail-workers", type=int, default=1000,
                        help="the coordinator's --frame-fail-workers and --bad-worker-failures: high, so that the "
                        "simulated failures (--fail-rate) never fail a whole frame or bar a worker (default 1000)")
    parser.add_argument("--http-threads", type=int, default=16, help="the coordinator's HTTP threads (default 16)")
    parser.add_argument("--frame-min", type=float, default=4.0,
                        help="shortest fake frame time of a simulated worker, in seconds (default 4)")
    parser.add_argument("--frame-max", type=float, default=12.0,
                        help="longest fake frame time of a simulated worker, in seconds (default 12)")
    parser.add_argument("--fail-rate", type=float, default=0.01,
                        help="probability that a simulated worker reports a frame failed (default 0.01)")
    parser.add_argument("--poll", type=float, default=2.0,
                        help="seconds between a simulated worker's claims while nothing waits (default 2)")
    parser.add_argument("--task-frames-min", type=int, default=20, help="fewest frames per task (default 20)")
    parser.add_argument("--task-frames-max", type=int, default=60, help="most frames per task (default 60)")
    parser.add_argument("--real-task-frames", type=int, default=12,
                        help="frames of the task kept open for the real workers alone (one at a time), 0 for none "
                        "(default 12)")
    parser.add_argument("--queue-frames", type=int,
                        help="keep at least this many frames waiting (default: the number of workers)")
    parser.add_argument("--kill-every", type=float,
                        help="mean seconds between SIGKILLs of a simulated worker, 0 for none (default 2; quick 1)")
    parser.add_argument("--stall-every", type=float,
                        help="mean seconds between SIGSTOPs of a simulated worker for longer than the alive "
                        "timeout, 0 for none (default 8; quick 4)")
    parser.add_argument("--real-chaos-every", type=float,
                        help="mean seconds between hits on a real worker (mostly SIGKILL of it and its Blender, "
                        "sometimes SIGSTOP), 0 for none (default 45; quick 12)")
    parser.add_argument("--restart-min", type=float, default=1.0,
                        help="shortest delay before a killed worker is restarted (default 1)")
    parser.add_argument("--restart-max", type=float, default=3.0,
                        help="longest delay before a killed worker is restarted (default 3)")
    parser.add_argument("--port", type=int, default=0, help="the coordinator's port (default: a free one)")
    parser.add_argument("--cluster", action="store_true",
                        help="cluster mode: PostgreSQL and SeaweedFS (S3) started for the run, --coordinators "
                        "coordinators on them, every worker given all their addresses, and coordinators SIGKILLed "
                        "and started again as well as workers")
    parser.add_argument("--coordinators", type=int, default=3,
                        help="coordinators in cluster mode, each with its own data dir (default 3)")
    parser.add_argument("--coordinator-kill-every", type=float,
                        help="cluster mode: mean seconds between SIGKILLs of a coordinator (never the last one "
                        "running), 0 for none (default 40; quick 10)")
    parser.add_argument("--coordinator-down-min", type=float, default=2.0,
                        help="cluster mode: shortest time a killed coordinator stays down (default 2)")
    parser.add_argument("--coordinator-down-max", type=float, default=8.0,
                        help="cluster mode: longest time a killed coordinator stays down (default 8)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the submitter and the chaos")
    parser.add_argument("--keep", metavar="DIR",
                        help="run in DIR and keep it (logs, ack files, the coordinator's data); default: a "
                        "temporary folder, removed at the end")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = {"duration": 600.0, "drain_timeout": 300.0, "kill_every": 2.0, "stall_every": 8.0,
                "real_chaos_every": 45.0, "coordinator_kill_every": 40.0}
    for name, value in (QUICK if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.queue_frames is None:
        args.queue_frames = args.sim_workers + args.real_workers
    problems = []
    if args.duration <= 0 or args.drain_timeout <= 0:
        problems.append("--duration and --drain-timeout must be more than 0")
    if args.sim_workers < 0 or args.real_workers < 0 or args.sim_workers + args.real_workers == 0:
        problems.append("the soak needs at least one worker")
    if not 0 < args.frame_min <= args.frame_max:
        problems.append("--frame-min must be more than 0 and at most --frame-max")
    if not 1 <= args.task_frames_min <= args.task_frames_max:
        problems.append("--task-frames-min must be at least 1 and at most --task-frames-max")
    if args.alive_timeout <= args.heartbeat:
        problems.append("--alive-timeout must be longer than --heartbeat")
    if not 0 <= args.fail_rate < 1:
        problems.append("--fail-rate must be at least 0 and below 1")
    if min(args.kill_every, args.stall_every, args.real_chaos_every) < 0:
        problems.append("the chaos intervals must not be negative")
    if not 0 <= args.restart_min <= args.restart_max:
        problems.append("--restart-min must be at least 0 and at most --restart-max")
    if args.cluster and (args.coordinators < 1 or args.port):
        problems.append("cluster mode needs --coordinators of at least 1, and takes no --port")
    if args.coordinator_kill_every < 0 or not 0 <= args.coordinator_down_min <= args.coordinator_down_max:
        problems.append("--coordinator-kill-every must not be negative, and --coordinator-down-min must be at least "
                        "0 and at most --coordinator-down-max")
    if problems:
        parser.error("; ".join(problems))
    return args


# Counts that must be zero whatever the run's size: a lost or doubled frame is a bug, never noise.
MUST_BE_ZERO = ("frames lost", "duplicates", "acknowledgements the coordinator contradicts",
                "frames_done counter mismatches", "server errors (5xx)", "coordinator tracebacks", "worker tracebacks")
NOTES = {
    "duplicates": "(task, frame) pairs acknowledged done more than once, over every worker's acknowledgements",
    "acknowledgements the coordinator contradicts": "acknowledged frames the coordinator shows not done, done by "
    "another worker, or with another file",
    "frames_done counter mismatches": "workers whose frames_done differs from the frames done by them; or the total",
    "409 refusals of simulated workers that were not frozen": "a lease lost without a freeze: worth a look",
    "done but not acknowledged": "killed between the coordinator's answer and the ack file: not a duplicate",
    "torn ack lines": "killed in the middle of writing an ack line",
}


def record(results: Results, findings: Findings, counts: Counts, run_seconds: float, sim_rss: int) -> None:
    """Every figure of the run, in the benchmarks' shared format."""
    numbers = findings.numbers
    for name in ("tasks", "frames", "frames by real workers", "frames by simulated workers"):
        results.add(name, numbers[name], "frames" if name.startswith("frames") else "")
    results.add("kills of real workers", counts.kills_real, note="SIGKILL of the worker and its Blender")
    results.add("kills of simulated workers", counts.kills_sim)
    results.add("stalls of real workers", counts.stalls_real, note="SIGSTOP past the alive timeout")
    results.add("stalls of simulated workers", counts.stalls_sim)
    results.add("restarts", counts.restarts)
    for name in MUST_BE_ZERO:
        results.add(name, numbers[name], target=0, note=NOTES.get(name, ""))
    results.add("workers that exited by themselves", len(counts.unexpected_exits), target=0)
    results.add("Blender processes that outlived their killed worker", counts.blender_survivors, target=0)
    for name in ("409 refusals seen", "409 refusals of simulated workers that were not frozen",
                 "leases revoked by heartbeat", "done but not acknowledged", "torn ack lines",
                 "requests of simulated workers taking 2 s or more", "coordinator request queue warnings"):
        results.add(name, numbers[name], note=NOTES.get(name, ""))
    results.add("slowest answer to a simulated worker", numbers["slowest answer to a simulated worker"], "s",
                note=f"{findings.slowest_request}; " if findings.slowest_request else ""
                "only answers of 2 s or more are noted, and not those to frozen workers")
    results.add("slowest /health answer to the soak", round(counts.max_health_seconds, 2), "s")
    results.add("run time", round(run_seconds, 1), "s")
    results.add("coordinator peak RSS", round(counts.max_coordinator_rss / MB, 1), "MB")
    results.add("simulated worker RSS (mean)", round(sim_rss / MB, 1), "MB")
