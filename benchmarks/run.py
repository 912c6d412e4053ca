"""Run RenderQ's benchmarks and write their figures to docs/benchmarks.md.

Each benchmark is a script in this folder that prints its figures, writes them as JSON with `--json-out FILE`, takes
`--quick` and exits non-zero when a target is missed (the contract is described in common.py). This runner runs them
one after the other as subprocesses, shows their output as it comes, collects their figures and writes a report: a
table of every figure with its target and whether it was met, and for each benchmark the date, the exact command and
the machine it ran on.

    python benchmarks/run.py                   # every benchmark at full size; rewrites docs/benchmarks.md
    python benchmarks/run.py --only memory     # one benchmark; the others' figures in the report are kept
    python benchmarks/run.py --quick           # small sizes for CI; the report goes to a temporary file
    python benchmarks/run.py --list

Exit status: 1 when a benchmark failed (could not run or measure), in both modes, or when a target was missed (full
mode only); 0 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import ROOT, describe_machine, find_blender, format_number, format_target, stop_process

REPORT = os.path.join(ROOT, "docs", "benchmarks.md")
DATA_MARK = "renderq-benchmark-data"
# Text between these lines of the report is written by hand (notes, earlier figures worth keeping) and kept as it is
# when the report is written again.
NOTES_START = "<!-- renderq-benchmark-notes: written by hand, kept when run.py writes this file again -->"
NOTES_END = "<!-- /renderq-benchmark-notes -->"
OUTPUT_TAIL_LINES = 40
# Before each benchmark of the full suite, the machine must be this idle over 5 s, waiting at most this long.
QUIET_IDLE_SHARE = 0.9
QUIET_WAIT_SECONDS = 300.0


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark script of this folder."""

    name: str
    script: str
    about: str
    # Flags added after --quick when the suite runs in quick mode, so the whole quick suite stays within minutes.
    suite_quick_args: tuple[str, ...] = ()
    needs_blender: bool = False
    # PostgreSQL and SeaweedFS (benchmarks/cluster_services.py): skipped, with the reason, when this machine lacks them.
    needs_services: bool = False

    @property
    def path(self) -> str:
        return self.script if os.path.isabs(self.script) else os.path.join(HERE, self.script)


# Every benchmark the suite knows, in the order they run; only those whose script exists are registered. The soak
# runs last: its hundreds of processes leave the machine busy for a while after it ends.
KNOWN = (
    Benchmark("farm_overhead", "farm_overhead.py",
              "one worker renders through the farm, against plain `blender -b FILE -a`", needs_blender=True),
    Benchmark("artist_wait", "artist_wait.py",
              "`renderq submit --wait` of a 12-frame task with an 8 MB .blend, against plain `blender -b FILE -a`",
              needs_blender=True),
    Benchmark("status_page", "status_page.py",
              "status page load and poll sizes with 500 workers and 200 tasks in the database"),
    Benchmark("memory", "memory.py",
              "coordinator RSS with 5,000 workers and 100,000 frames, worker agent RSS, a 2 GiB upload",
              needs_blender=True),
    Benchmark("scaling", "scaling.py", "two workers with one render thread each against one worker, same task",
              needs_blender=True),
    Benchmark("session_reuse", "session_reuse.py", "frames rendered in one Blender session, against one each",
              needs_blender=True),
    Benchmark("throughput", "throughput.py",
              "the largest farm of simulated workers one coordinator serves with every call under 100 ms"),
    Benchmark("throughput_cluster", "throughput_cluster.py",
              "throughput.py's farm sizes against 1, 2 and 3 coordinators on one PostgreSQL, with each tier's CPU",
              suite_quick_args=("--coordinators", "1,2", "--steps", "20"), needs_services=True),
    Benchmark("connections", "connections.py",
              "1,000 idle and 200 slowloris connections against 200 simulated workers: heartbeat p99, leases lost"),
    Benchmark("eta_accuracy", "eta_accuracy.py", "how close the finish-time estimate comes", needs_blender=True),
    Benchmark("eta_model", "eta_model.py",
              "the finish-time estimator on 200 simulated renders of eta_accuracy's scene, without machine noise"),
    Benchmark("soak", "soak.py",
              "real and simulated workers under kills and stalls: no frame lost or done twice",
              suite_quick_args=("--duration", "20", "--sim-workers", "20", "--real-workers", "1",
                                "--drain-timeout", "90", "--seed", "6"),
              needs_blender=True),
    Benchmark("soak_cluster", "soak_cluster.py",
              "the soak on PostgreSQL and S3 with three coordinators, SIGKILLed and started again among the chaos",
              suite_quick_args=("--duration", "20", "--sim-workers", "20", "--real-workers", "1",
                                "--drain-timeout", "90", "--seed", "6", "--coordinator-kill-every", "6"),
              needs_blender=True, needs_services=True),
)


def registered() -> list[Benchmark]:
    """The benchmarks whose script is present, in running order."""
    return [benchmark for benchmark in KNOWN if os.path.isfile(benchmark.path)]


@dataclasses.dataclass
class Run:
    """What one benchmark run gave."""

    name: str
    status: str  # passed, missed, failed, skipped
    date: str
    command: str  # the runner's command, as typed
    script_command: str  # the script's command, without the runner's --json-out
    quick: bool
    machine: dict[str, str]
    exit_code: int | None = None
    seconds: float = 0.0
    figures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    note: str = ""
    output_tail: list[str] = dataclasses.field(default_factory=list)


# -- running ---------------------------------------------------------------------------------------------------------


def script_flags(benchmark: Benchmark) -> str:
    """The script's --help text, to learn which of the suite's flags it takes."""
    try:
        completed = subprocess.run([sys.executable, benchmark.path, "--help"], capture_output=True, timeout=120,
                                   cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return ""
    return completed.stdout.decode("utf-8", "replace")


def run_benchmark(benchmark: Benchmark, *, quick: bool, command: str, machine: dict[str, str],
                  work_dir: str, timeout: float | None = None, blender_found: bool = True) -> Run:
    """Run one benchmark script as a subprocess, its output shown with its name in front, and collect its figures."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    flags = ["--quick", *benchmark.suite_quick_args] if quick else []
    shown = shlex.join(["python", os.path.relpath(benchmark.path, ROOT), *flags])
    run = Run(benchmark.name, "failed", date, command, shown, quick, machine)
    if benchmark.needs_blender and not blender_found:
        run.status = "skipped"
        run.note = "Blender is not installed (set RENDERQ_BLENDER or put blender on PATH)"
        return run
    if benchmark.needs_services:
        from cluster_services import missing

        why = missing(s3=True)
        if why:
            run.status = "skipped"
            run.note = f"the cluster services are missing: {why}"
            return run
    help_text = script_flags(benchmark)
    if quick and "--quick" not in help_text:
        run.note = "the script has no --quick mode, so it cannot run in the quick suite"
        return run
    json_path = os.path.join(work_dir, f"{benchmark.name}.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(json_path)
    takes_json = "--json-out" in help_text
    args = [sys.executable, benchmark.path, *flags, *(["--json-out", json_path] if takes_json else [])]
    print(f"\n=== {benchmark.name}: {shown}", flush=True)
    started = time.monotonic()
    run.exit_code, run.output_tail, timed_out = _run_streaming(benchmark.name, args, timeout)
    run.seconds = round(time.monotonic() - started, 1)

    if takes_json:
        try:
            run.figures = _read_figures(json_path)
        except (OSError, ValueError) as error:
            run.note = f"it wrote no readable figures ({error})"
    else:
        run.note = "the script takes no --json-out, so its figures are only in its output; its exit status decides"
    missed = any(f.get("met") is False for f in run.figures)
    readable = bool(run.figures) or not takes_json
    if timed_out:
        run.note = f"stopped after the runner's timeout of {timeout:g} s"
    elif takes_json and not readable:
        run.note = run.note or "it wrote an empty list of figures"
    elif quick:
        run.status = "passed" if run.exit_code == 0 else "failed"
    elif run.exit_code == 0 and not missed:
        run.status = "passed"
    elif run.exit_code in (0, 1) and missed:
        run.status = "missed"
    if run.status == "failed" and not run.note.startswith(("stopped", "it wrote")):
        problems = [f["note"] for f in run.figures if f.get("value") is None and f.get("note")]
        run.note = "; ".join(dict.fromkeys(problems)) or f"it exited with status {run.exit_code}"
    return run


def idle_share(seconds: float = 5.0) -> float | None:
    """The share of CPU time the whole machine spent idle over the next `seconds` (None without /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
        # idle and iowait count as idle: nothing is running.
        return fields[3] + fields[4], sum(fields)

    try:
        idle_before, total_before = sample()
        time.sleep(seconds)
        idle_after, total_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    return (idle_after - idle_before) / total if total > 0 else None


def wait_for_quiet_machine(least_idle: float = QUIET_IDLE_SHARE, longest: float = QUIET_WAIT_SECONDS) -> None:
    """Wait until the machine is mostly idle (what the previous benchmark started has ended), at most `longest`
    seconds: timing figures taken while it is still busy measure that, not RenderQ."""
    deadline = time.monotonic() + longest
    idle = idle_share()
    waited = False
    while idle is not None and idle < least_idle and time.monotonic() < deadline:
        if not waited:
            print(f"\n(waiting for a quiet machine: {idle:.0%} idle)", flush=True)
            waited = True
        idle = idle_share()
    if waited:
        verdict = "quiet" if idle is not None and idle >= least_idle else "still busy; going on"
        print(f"(machine {verdict}: {idle:.0%} idle)", flush=True)


def _run_streaming(name: str, args: list[str], timeout: float | None) -> tuple[int | None, list[str], bool]:
    """Run a script in its own process group, printing its output line by line; (exit code, last lines, timed out).

    On Ctrl-C the script gets SIGINT and time to stop what it started, then the interrupt goes on."""
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    popen = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def pump() -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            print(f"[{name}] {line}", flush=True)

    reader = threading.Thread(target=pump, name=f"output-{name}", daemon=True)
    reader.start()
    timed_out = False
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        # SIGINT first: the script stops its coordinators and workers itself.
        stop_process(popen, timeout=60.0)
    except KeyboardInterrupt:
        stop_process(popen, timeout=60.0)
        raise
    reader.join(10)
    return popen.returncode, list(tail), timed_out


def _read_figures(path: str) -> list[dict[str, Any]]:
    """The figures a script wrote: a JSON list of figure objects (or an object holding one under "figures")."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict):
        data = data.get("figures")
    if not isinstance(data, list) or not all(isinstance(f, dict) and isinstance(f.get("figure"), str) for f in data):
        raise ValueError("not a list of {figure, value, unit, target, met} objects")
    figures = []
    for entry in data:
        figure = {"figure": entry["figure"], "value": entry.get("value"), "unit": entry.get("unit") or "",
                  "target": entry.get("target"), "compare": entry.get("compare") or "<=",
                  "note": entry.get("note") or ""}
        figure["met"] = entry.get("met") if "met" in entry else _met(figure)
        figures.append(figure)
    return figures


def _met(figure: dict[str, Any]) -> bool | None:
    value, target = figure.get("value"), figure.get("target")
    if not isinstance(value, (int, float)) or not isinstance(target, (int, float)):
        return None
    return value <= target if figure.get("compare", "<=") == "<=" else value >= target


# -- the report ------------------------------------------------------------------------------------------------------


def load_runs(path: str) -> dict[str, Run]:
    """The runs recorded in an earlier report (its data block), by benchmark name; {} when there is none."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return {}
    match = re.search(rf"<!-- {DATA_MARK}\n(.*?)\n-->", text, re.DOTALL)
    if not match:
        return {}
    try:
        entries = json.loads(match[1])
        fields = {field.name for field in dataclasses.fields(Run)}
        runs = [Run(**{k: v for k, v in entry.items() if k in fields}) for entry in entries]
    except (ValueError, TypeError):
        return {}
    return {run.name: run for run in runs}


def load_notes(path: str) -> str:
    """The hand-written notes of an earlier report, markers included; "" when there are none."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return ""
    start = text.find(NOTES_START)
    end = text.find(NOTES_END, start)
    return text[start:end + len(NOTES_END)] if start >= 0 and end >= 0 else ""


def write_report(path: str, runs: list[Run]) -> None:
    """The Markdown report: every figure, then each run's date, command and machine; the data block at the end lets a
    later `--only` run keep the other benchmarks' figures. The notes written by hand in the earlier report are
    kept."""
    quick = any(run.quick for run in runs)
    notes = load_notes(path)
    lines = ["# RenderQ benchmark figures", ""]
    lines.append("Written by `python benchmarks/run.py`; do not edit by hand (except the notes after the machines, "
                 "which it keeps), run it again (with `--only NAME` to refresh one benchmark and keep the others). "
                 "How each benchmark measures is described at the top of its script in `benchmarks/`. Sizes are in "
                 "decimal megabytes (1 MB = 1,000,000 bytes).")
    lines.append("")
    if quick:
        lines += [("**Quick mode**: small sizes to check that every benchmark still runs; these are not the "
                   "benchmarks' figures, and targets are shown but not enforced."), ""]
    lines += ["| Benchmark | Figure | Value | Target | Met? |", "|---|---|---|---|---|"]
    for run in runs:
        if not run.figures:
            lines.append(f"| {run.name} | {_cell('(no figures: ' + (run.note or run.status) + ')')} | | | |")
        for figure in run.figures:
            value = "not measured" if figure.get("value") is None else \
                f"{format_number(figure['value'])} {figure.get('unit', '')}".rstrip()
            target = format_target(figure.get("target"), figure.get("compare"), figure.get("unit", ""))
            met = {True: "yes", False: "**no**", None: ""}[figure.get("met")]
            if figure.get("target") is not None and figure.get("value") is None:
                met = "**not measured**"
            name = figure["figure"] + (f" ({figure['note']})" if figure.get("note") else "")
            lines.append(f"| {run.name} | {_cell(name)} | {_cell(value)} | {_cell(target)} | {met} |")
    machines: dict[str, str] = {}
    for run in runs:
        machines.setdefault(_machine_text(run.machine), chr(ord("A") + len(machines)))
    lines += ["", "## Runs", "", "| Benchmark | Result | Date | Time | Command | Machine |",
              "|---|---|---|---|---|---|"]
    for run in runs:
        result = run.status + (f": {run.note}" if run.note and run.status != "passed" else "")
        seconds = f"{run.seconds:,.0f} s" if run.exit_code is not None else ""
        command = f"`{run.command}` (runs `{run.script_command}`)"
        lines.append(f"| {run.name} | {_cell(result)} | {run.date} | {seconds} | {_cell(command)} | "
                     f"{machines[_machine_text(run.machine)]} |")
    lines += ["", "## Machines", ""]
    for text, letter in machines.items():
        lines.append(f"- **{letter}**: {text}")
    if notes:
        lines += ["", notes]
    unhappy = [run for run in runs if run.status not in ("passed",) and run.output_tail]
    if unhappy:
        lines += ["", "## Output of the runs that did not pass", ""]
        for run in unhappy:
            lines += [f"### {run.name} ({run.status}, exit status {run.exit_code})", "", "```text",
                      *[line.replace("```", "'''") for line in run.output_tail], "```", ""]
    data = json.dumps([dataclasses.asdict(run) for run in runs], indent=1).replace("-->", "-- >")
    lines += ["", f"<!-- {DATA_MARK}", data, "-->", ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = path + ".partial"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    os.replace(temp, path)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _machine_text(machine: dict[str, str]) -> str:
    """The machine as the report names it: runs whose machines read the same text share a letter."""
    return (f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {_whole_gib(machine.get('ram', '?'))} RAM; "
            f"{machine.get('os', '?')}; Python {machine.get('python', '?')}; Blender {machine.get('blender', '?')}")


def _whole_gib(ram: str) -> str:
    """'23.6 GiB' as '24 GiB': the memory the kernel reports differs by a tenth from boot to boot on the same
    machine, and describe_machine records it as read."""
    match = re.fullmatch(r"([0-9.]+) GiB", ram)
    return f"{round(float(match[1]))} GiB" if match else ram


# -- the command -----------------------------------------------------------------------------------------------------


def print_summary(runs: list[Run], quick: bool) -> None:
    print("\n=== summary" + (" (quick mode: targets shown, not enforced)" if quick else ""))
    for run in runs:
        took = f" in {run.seconds:,.0f} s" if run.exit_code is not None else ""
        print(f"{run.name}: {run.status.upper()}{took}" + (f" ({run.note})" if run.note else ""))
        for figure in run.figures:
            value = "not measured" if figure.get("value") is None else \
                f"{format_number(figure['value'])} {figure.get('unit', '')}".rstrip()
            target = format_target(figure.get("target"), figure.get("compare"), figure.get("unit", ""))
            verdict = {True: "ok", False: "MISSED", None: ""}[figure.get("met")]
            suffix = f"  (target {target}: {verdict})" if target else ""
            print(f"    {figure['figure']}: {value}{suffix}")


def exit_status(runs: list[Run], quick: bool) -> int:
    """1 when a benchmark failed (both modes) or missed a target or could not run (full mode)."""
    if any(run.status == "failed" for run in runs):
        return 1
    if not quick and any(run.status in ("missed", "skipped") for run in runs):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for CI: targets are shown but not enforced, and the report goes to "
                        "--report (default: a temporary file), never to docs/benchmarks.md")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (see --list)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--report", metavar="FILE",
                        help="where to write the report (default: docs/benchmarks.md; in quick mode a temporary file)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop a benchmark that runs longer than this (default: no limit)")
    args = parser.parse_args(argv)

    benchmarks = registered()
    if args.list:
        for benchmark in benchmarks:
            print(f"{benchmark.name:15} {benchmark.about}")
        return 0
    if args.only:
        names = {benchmark.name for benchmark in benchmarks}
        unknown = [name for name in args.only if name not in names]
        if unknown:
            print(f"run.py: no benchmark named {', '.join(unknown)}; there are {', '.join(sorted(names))}",
                  file=sys.stderr)
            return 2
        benchmarks = [benchmark for benchmark in benchmarks if benchmark.name in args.only]
    if args.quick and args.report and os.path.realpath(args.report) == os.path.realpath(REPORT):
        print("run.py: quick mode does not write docs/benchmarks.md (its figures are not the real ones); "
              "give another --report", file=sys.stderr)
        return 2
    if args.report:
        report = args.report
    elif args.quick:
        handle, report = tempfile.mkstemp(prefix="renderq-benchmarks-quick-", suffix=".md")
        os.close(handle)
    else:
        report = REPORT

    command = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    blender = find_blender()
    machine = describe_machine(blender)
    # Earlier figures of the benchmarks not run now are kept (a quick report starts afresh).
    earlier = {} if args.quick else load_runs(report)
    runs: dict[str, Run] = {name: run for name, run in earlier.items() if any(b.name == name for b in registered())}
    ran: list[Run] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="renderq-bench-run-") as work_dir:
        for benchmark in benchmarks:
            try:
                if not args.quick:
                    wait_for_quiet_machine()
                run = run_benchmark(benchmark, quick=args.quick, command=command, machine=machine,
                                    work_dir=work_dir, timeout=args.timeout, blender_found=blender is not None)
            except KeyboardInterrupt:
                interrupted = True
                break
            runs[run.name] = run
            ran.append(run)
    ordered = [runs[b.name] for b in registered() if b.name in runs]
    if ordered:
        write_report(report, ordered)
    print_summary(ran, args.quick)
    print(f"\nreport: {report}")
    if interrupted:
        print("interrupted: the benchmarks not run yet are left out")
        return 130
    return exit_status(ran, args.quick)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
