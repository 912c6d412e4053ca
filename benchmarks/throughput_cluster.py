"""Coordinator throughput in cluster mode: `throughput.py --cluster [--coordinators 1,2,3]`.

For each coordinator count in turn, a throwaway PostgreSQL is started as the tests start it
(benchmarks/cluster_services.py) and that many coordinators on it, each with its own data dir and its frame files
in it (the object store is left out: it is not on the workers' call path the benchmark measures). The load steps are
throughput.py's, the simulated workers spread over the coordinators round robin (worker i on the (i mod n)th). Per
step, besides throughput.py's figures: the CPU of the coordinators together and of PostgreSQL's processes (cores
busy, and milliseconds per request of each tier), from /proc. The figures of each count are reported as throughput.py
reports one coordinator's, each name prefixed with the count. The history of finished frames (--history-frames) is
not filled in cluster mode.

    python benchmarks/throughput.py --cluster [--coordinators 1,2,3] [--quick] [--steps 1000,2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from typing import Any

from cluster_services import Services, missing
from common import Coordinator, Results, phase, renderq_env

__all__ = ["CoordinatorGroup", "add_tiers", "run_cluster"]


class CoordinatorGroup:
    """Several coordinators on one PostgreSQL, seen by throughput.run_step as one: `ports` spreads the workers,
    cpu_seconds() and tier_cpu_seconds() read the tiers' CPU."""

    def __init__(self, root: str, count: int, services: Services, arguments: list[str]) -> None:
        self.services = services
        env = renderq_env(**services.coordinator_env())
        self.members = [Coordinator(root, *services.coordinator_args(), *arguments,
                                    data_dir=os.path.join(root, f"coordinator-{number}-data"), env=env)
                        for number in range(1, count + 1)]
        self.ports = [member.port for member in self.members]

    @property
    def port(self) -> int:
        return self.members[0].port

    @property
    def pid(self) -> int:
        """The first coordinator's process (the one --profile samples)."""
        return self.members[0].pid

    def start(self) -> None:
        for member in self.members:
            member.start()

    def token(self, role: str) -> str:
        return self.members[0].token(role)

    def client(self, role: str = "admin") -> Any:
        return self.members[0].client(role)

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every coordinator (and its serving processes) together."""
        from throughput import process_cpu_seconds

        readings = [process_cpu_seconds(member.pid) for member in self.members]
        return sum(r[0] for r in readings), sum(r[1] for r in readings)

    def tier_cpu_seconds(self) -> dict[str, float]:
        return {"postgresql": self.services.postgres_cpu_seconds()}

    def tracebacks(self) -> list[str]:
        """The logs of the coordinators that logged a traceback."""
        return [member.log_path for member in self.members
                if member.popen is not None and "Traceback (most recent call last)" in member.output()]

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def add_tiers(result: dict[str, Any], before: dict[str, float], after: dict[str, float], window: float) -> None:
    """Each tier's CPU (cores busy) and CPU per request into a step's result; the other processes' CPU without
    them."""
    requests = max(1.0, result["requests_per_second"] * window)
    for tier, seconds in after.items():
        used = max(0.0, seconds - before.get(tier, 0.0))
        result[f"{tier}_cpu"] = used / window
        result[f"{tier}_ms_per_request"] = 1000.0 * used / requests
        result["other_cpu"] = max(0.0, result["other_cpu"] - used / window)


def print_tiers(result: dict[str, Any], coordinators: int) -> None:
    print(f"    tiers: {coordinators} coordinator(s) {result['coordinator_cpu']:.2f} cores "
          f"({result['coordinator_ms_per_request']:.2f} ms per request), PostgreSQL "
          f"{result.get('postgresql_cpu', 0.0):.2f} cores ({result.get('postgresql_ms_per_request', 0.0):.2f} ms "
          f"per request), load generator {result['generator_ms_per_request']:.3f} ms per request, everything else "
          f"{result['other_cpu']:.2f} cores", flush=True)


class Prefixed:
    """A Results whose figure names start with a prefix: throughput.report() once per coordinator count."""

    def __init__(self, results: Results, prefix: str) -> None:
        self.results = results
        self.prefix = prefix

    def add(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.results.add(f"{self.prefix}{name}", *args, **kwargs)


def run_cluster(args: argparse.Namespace, steps: list[int]) -> int:
    """Every coordinator count of --coordinators in turn, each on a new PostgreSQL; the figures of each."""
    results = Results("coordinator throughput, cluster", quick=args.quick)
    try:
        counts = [int(text) for text in args.coordinators.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        results.fail(f"--coordinators must be a list of counts of at least 1, like 1,2,3 (not {args.coordinators!r})")
        return results.finish(args.json_out)
    why = missing(s3=False)
    if why:
        results.fail(f"cluster mode cannot run here: {why}")
        return results.finish(args.json_out)
    run_root = args.keep or tempfile.mkdtemp(prefix="renderq-throughput-cluster-")
    for count in counts:
        ran = run_count(results, count, args, steps, os.path.join(run_root, f"{count}-coordinators"))
        report_count(results, count, ran, args)
    if not args.keep and not results.problems:
        shutil.rmtree(run_root, ignore_errors=True)
    return results.finish(args.json_out)


def run_count(results: Results, count: int, args: argparse.Namespace, steps: list[int],
              run_dir: str) -> list[dict[str, Any]]:
    """The steps against `count` coordinators on a new PostgreSQL; the results of each step."""
    from throughput import FAKE_BLEND, coordinator_arguments, other_load, run_steps, submit_frames

    os.makedirs(run_dir, exist_ok=True)
    services = Services(os.path.join(run_dir, "services"), s3=False)
    group: CoordinatorGroup | None = None
    ran: list[dict[str, Any]] = []
    try:
        with phase(f"{count} coordinator(s) on one PostgreSQL: start"):
            services.start()
            group = CoordinatorGroup(run_dir, count, services, coordinator_arguments(args, steps))
            group.start()
        # As throughput.main: frames for every step and the refining ones, with room to spare.
        per_step = [w * args.frames_per_worker_second * (2.0 / args.frames_per_worker_second + 8.0
                                                         + args.duration + 10) for w in steps]
        frames_needed = int((sum(per_step) + args.refine * max(per_step)) * 1.3) + 1000
        with phase(f"submit {args.tasks} tasks with {frames_needed:,} frames in all"):
            submit_frames(group.members[0], frames_needed, args.tasks)
            # Each coordinator keeps files in its own data dir: every one gets the .blend.
            for member in group.members[1:]:
                member.client("artist").post("/upload_blend?filename=bench.blend", raw=FAKE_BLEND)
        busy = other_load(group.pid)
        if busy > 0.25:
            print(f"note: other processes kept {busy:.2f} of {os.cpu_count()} cores busy just before the run",
                  flush=True)
        ran = run_steps(group, steps, args, run_dir)  # type: ignore[arg-type]  # a group stands in for one
        for result in ran:
            print(f"  {count} coordinator(s), {result['workers']} workers:", flush=True)
            print_tiers(result, count)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        results.fail(f"the run with {count} coordinator(s) stopped: {error}")
    finally:
        if group is not None:
            group.stop()
            for path in group.tracebacks():
                results.fail(f"a coordinator logged a traceback (see {path})")
        services.stop()
    return ran


def report_count(results: Results, count: int, ran: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """throughput.py's figures for `count` coordinators, then the tiers' CPU at the same farm."""
    from throughput import _round, report

    prefix = f"{count} coordinator(s): "
    report(Prefixed(results, prefix), ran, args)  # type: ignore[arg-type]  # only add() is used
    passed = max((r for r in ran if r["passed"]), key=lambda r: r["workers"], default=None)
    best = passed or min(ran, key=lambda r: r["workers"], default={})
    results.add(f"{prefix}PostgreSQL CPU at that farm", _round(best.get("postgresql_cpu"), 2), "cores")
    results.add(f"{prefix}PostgreSQL CPU per request at that farm", _round(best.get("postgresql_ms_per_request"), 3),
                "ms")


if __name__ == "__main__":
    import sys

    import throughput

    arguments = sys.argv[1:]
    sys.exit(throughput.main(arguments if "--cluster" in arguments else ["--cluster", *arguments]))
