"""The benchmark suite: its runner's verdicts on small stand-in scripts, and every registered benchmark run in quick
mode (small sizes, nothing about timing checked), each with a row in the report."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from harness import ROOT, find_blender_or_none

BENCHMARKS = os.path.join(ROOT, "benchmarks")
RUN = os.path.join(BENCHMARKS, "run.py")


def load_runner():
    """benchmarks/run.py as a module (the folder is not a package)."""
    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def stand_in(tmp_path, name: str, body: str) -> str:
    """A benchmark script that reports through common.Results; `body` adds figures and may raise or exit."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(f"""\
        import argparse, sys
        sys.path.insert(0, {BENCHMARKS!r})
        from common import Results, add_arguments

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args()
        results = Results({name!r}, quick=args.quick)
        """) + textwrap.dedent(body) + "\nsys.exit(results.finish(args.json_out))\n")
    return str(path)


def run_stand_in(runner, tmp_path, name: str, body: str, quick: bool):
    benchmark = runner.Benchmark(name, stand_in(tmp_path, name, body), "a stand-in")
    return runner.run_benchmark(benchmark, quick=quick, command="python benchmarks/run.py", machine={},
                                work_dir=str(tmp_path))


def test_runner_verdicts_on_met_missed_and_failed_targets(tmp_path):
    runner = load_runner()
    met = 'results.add("latency", 0.05, "s", 0.1)\nresults.add("requests", 1234, "")\n'
    missed = 'results.add("latency", 0.5, "s", 0.1)\n'
    unmeasured = 'results.add("latency", None, "s", 0.1, note="no disk")\nresults.fail("no disk left")\n'

    run = run_stand_in(runner, tmp_path, "met", met, quick=False)
    assert (run.status, run.exit_code) == ("passed", 0)
    assert [(f["figure"], f["value"], f["met"]) for f in run.figures] == [("latency", 0.05, True),
                                                                         ("requests", 1234, None)]
    run = run_stand_in(runner, tmp_path, "missed", missed, quick=False)
    assert (run.status, run.exit_code) == ("missed", 1)
    # In quick mode a target is shown, not enforced.
    run = run_stand_in(runner, tmp_path, "missed_quick", missed, quick=True)
    assert (run.status, run.exit_code, run.figures[0]["met"]) == ("passed", 0, False)
    for quick in (False, True):
        run = run_stand_in(runner, tmp_path, "unmeasured", unmeasured, quick=quick)
        assert (run.status, run.exit_code) == ("failed", 2)
        assert "no disk" in run.note
    run = run_stand_in(runner, tmp_path, "crashes", 'raise RuntimeError("boom")\n', quick=True)
    assert run.status == "failed"
    assert any("RuntimeError: boom" in line for line in run.output_tail)

    assert runner.exit_status([run_stand_in(runner, tmp_path, "missed", missed, quick=False)], quick=False) == 1


def test_report_keeps_the_figures_of_benchmarks_not_run_again(tmp_path):
    runner = load_runner()
    names = [b.name for b in runner.registered()]
    assert len(names) >= 2, "the suite should have several benchmarks"
    report = tmp_path / "benchmarks.md"
    machine = {"cpu": "Test CPU", "cores": "2", "ram": "1 GiB", "os": "Linux", "python": "3", "blender": "3.4.1"}

    def run(name: str, value: float) -> object:
        return runner.Run(name, "passed", "2025-01-01 00:00 UTC", f"python benchmarks/run.py --only {name}",
                          f"python benchmarks/{name}.py", False, machine, 0, 1.0,
                          [{"figure": "size | of it", "value": value, "unit": "MB", "target": 200, "compare": "<=",
                            "met": True, "note": ""}])

    runner.write_report(str(report), [run(names[0], 1.0), run(names[1], 2.0)])
    # Notes written by hand into the report survive the next run.
    notes = f"{runner.NOTES_START}\n## Before a change\n\nkept | as written\n{runner.NOTES_END}"
    report.write_text(report.read_text().replace("## Machines", notes + "\n\n## Machines"))
    earlier = runner.load_runs(str(report))
    assert sorted(earlier) == sorted(names[:2])
    earlier[names[1]] = run(names[1], 3.0)
    runner.write_report(str(report), list(earlier.values()))
    text = report.read_text()
    assert re.search(rf"^\| {names[0]} \| size \\\| of it \| 1 MB \| ≤ 200 MB \| yes \|$", text, re.MULTILINE), text
    assert re.search(rf"^\| {names[1]} \| size \\\| of it \| 3 MB \|", text, re.MULTILINE), text
    assert "Test CPU, 2 cores, 1 GiB RAM" in text
    assert text.count(notes) == 1, text


# The cluster benchmarks (soak_cluster, throughput_cluster) add about two minutes to the quick suite.
@pytest.mark.timeout(1200)
@pytest.mark.skipif(find_blender_or_none() is None, reason="Blender is not installed")
def test_quick_suite_runs_every_benchmark_and_reports_each(tmp_path):
    runner = load_runner()
    names = [benchmark.name for benchmark in runner.registered()]
    real_report = os.path.join(ROOT, "docs", "benchmarks.md")
    before = read_bytes(real_report)
    report = tmp_path / "quick.md"

    completed = subprocess.run([sys.executable, RUN, "--quick", "--report", str(report), "--timeout", "420"],
                               cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=1180, check=False)
    output = completed.stdout.decode("utf-8", "replace")
    assert completed.returncode == 0, f"the quick suite failed (exit {completed.returncode}):\n{output[-8000:]}"
    text = report.read_text(encoding="utf-8")
    assert "**Quick mode**" in text
    runs = text.split("## Runs", 1)[1]
    for name in names:
        passed_row = rf"^\| {re.escape(name)} \| passed \|"
        assert re.search(passed_row, runs, re.MULTILINE), f"no passed run of {name}:\n{text}"
    data = json.loads(re.search(r"<!-- renderq-benchmark-data\n(.*?)\n-->", text, re.DOTALL)[1])
    assert sorted(entry["name"] for entry in data) == sorted(names)
    # Quick figures never replace the real ones.
    assert read_bytes(real_report) == before


# -- the throughput benchmark's load generator, against a real coordinator ------------------------------------------


def start_load_generator(farm, workers: int, *, frame_seconds: float, log_seconds: float, measure_in: float,
                         measure_for: float) -> tuple[subprocess.Popen, float]:
    """benchmarks/loadgen.py simulating `workers` workers on `farm`; (its process, the window's start)."""
    now = time.time()
    measure_from = now + measure_in
    config = {"host": "127.0.0.1", "port": farm.port, "token": farm.token("worker"), "prefix": "gen",
              "first_index": 0, "count": workers, "total_workers": workers, "frame_seconds": frame_seconds,
              "log_seconds": log_seconds, "start_at": now + 0.5, "ramp": 0.5, "measure_from": measure_from,
              "measure_until": measure_from + measure_for, "seed": 1}
    env = dict(os.environ, PYTHONPATH=ROOT)
    popen = subprocess.Popen([sys.executable, os.path.join(BENCHMARKS, "loadgen.py"), json.dumps(config)],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    return popen, measure_from


def load_generator_output(popen: subprocess.Popen) -> dict:
    out, _ = popen.communicate(timeout=60)
    assert popen.returncode == 0, out[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def submit_fake_task(farm, frames: int) -> int:
    """A task of `frames` frames over a stand-in .blend (the benchmark's own), submitted over HTTP."""
    sys.path.insert(0, BENCHMARKS)
    from throughput import FAKE_BLEND

    status, answer = farm.api.call("POST", "/upload_blend?filename=bench.blend", raw=FAKE_BLEND,
                                   content_type="application/octet-stream")
    assert status == 200, answer
    return farm.api.post("/submit_task", {"name": "generated", "blend_sha256": answer["sha256"],
                                          "blend_filename": "bench.blend", "frame_start": 1,
                                          "frame_end": frames})["task_id"]


@pytest.mark.timeout(120)
def test_load_generator_speaks_the_worker_protocol_at_the_advised_heartbeat(farm):
    farm.start_coordinator("--heartbeat", "0.5")
    task_id = submit_fake_task(farm, 500)
    popen, _ = start_load_generator(farm, 4, frame_seconds=1.0, log_seconds=0.4, measure_in=3.0, measure_for=4.0)
    seen = load_generator_output(popen)

    # The calls of today's worker, and no seed route: claim, rendering report, one-request finish, log lines.
    assert set(seen["latencies"]) == {"update_worker", "claim", "report_rendering", "finish", "append_log"}, seen
    assert not seen["errors"], seen["error_examples"]
    counts = seen["counts"]
    assert counts.get("lost_leases", 0) == 0 and counts["completed"] >= 8, counts
    # Heartbeats at the interval the coordinator advised (0.5 s): about 4 workers x 4 s / 0.5 s.
    assert seen["advice"]["heartbeat_seconds"] == 0.5
    assert 20 <= counts["updates"] <= 36, counts
    # Kept-alive connections: none opened while measured, once every worker has its few.
    assert counts["connections_opened"] == 0 and counts["connections_total"] <= 4 * 4, counts
    # The coordinator holds each finished frame's file and report, and the task log the "frame done" lines.
    frames = farm.api.get(f"/task?task_id={task_id}&frames_status=done")["frames"]
    assert len(frames) >= counts["completed"] and all(f["output"].startswith("f_") for f in frames), frames[:3]
    log = farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert re.search(r"^\[gen-\d+\] frame \d+ done in ", log, re.MULTILINE), log[-500:]
    assert "Sample 8/64" in log, log[-500:]


@pytest.mark.timeout(120)
def test_load_generator_counts_the_leases_it_loses(farm):
    farm.start_coordinator("--heartbeat", "0.5")
    task_id = submit_fake_task(farm, 500)
    popen, measure_from = start_load_generator(farm, 4, frame_seconds=2.0, log_seconds=0, measure_in=2.5,
                                               measure_for=4.0)
    time.sleep(max(0.0, measure_from + 0.5 - time.time()))
    # Canceling the task takes every frame the simulated workers hold: their next heartbeat or finish says so.
    farm.api.post("/cancel_task", {"task_id": task_id})
    seen = load_generator_output(popen)

    assert seen["counts"].get("lost_leases", 0) >= 4, seen["counts"]
    assert not seen["errors"], seen["error_examples"]


def frames_dispatched(farm) -> float:
    """The coordinator's renderq_frames_dispatched counter, scraped from /metrics."""
    status, body = farm.api.call("GET", "/metrics")
    assert status == 200, body
    text = body.decode() if isinstance(body, bytes) else body
    found = re.search(r"^renderq_frames_dispatched_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, text[:2000]
    return float(found[1])


@pytest.mark.timeout(120)
def test_load_generator_spreads_its_workers_over_a_clusters_coordinators(tmp_path, postgres_cluster, monkeypatch):
    from harness import Farm

    # One database and one set of tokens: two coordinators of one farm, as throughput.py --cluster starts them.
    for role in ("admin", "artist", "worker"):
        monkeypatch.setenv(f"RENDERQ_{role.upper()}_TOKEN", f"bench-{role}-token-0123456789")
    database = postgres_cluster.create_database()
    farms = [Farm(str(tmp_path / f"coordinator-{n}"), database=database) for n in (1, 2)]
    try:
        for farm in farms:
            os.makedirs(farm.root, exist_ok=True)
            farm.start_coordinator("--heartbeat", "0.5")
        submit_fake_task(farms[0], 500)
        now = time.time()
        config = {"host": "127.0.0.1", "port": farms[0].port, "ports": [farm.port for farm in farms],
                  "token": farms[0].token("worker"), "prefix": "gen", "first_index": 0, "count": 4,
                  "total_workers": 4, "frame_seconds": 0.5, "log_seconds": 0, "start_at": now + 0.5, "ramp": 0.5,
                  "measure_from": now + 2.0, "measure_until": now + 5.0, "seed": 1}
        popen = subprocess.Popen([sys.executable, os.path.join(BENCHMARKS, "loadgen.py"), json.dumps(config)],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
        seen = load_generator_output(popen)

        assert not seen["errors"], seen["error_examples"]
        assert seen["counts"]["completed"] >= 8, seen["counts"]
        # Round robin: each coordinator handed out frames to the workers given its address.
        assert all(frames_dispatched(farm) >= 2 for farm in farms)
    finally:
        for farm in farms:
            farm.stop()
        postgres_cluster.drop_database(database)
