"""Shared pieces of the benchmark scripts: the result format, a coordinator process with its tokens, memory read
from /proc, keep-alive HTTP calls through the product's client, and a description of the machine.

The result format, which `benchmarks/run.py` relies on. Every benchmark script

- takes `--quick`: small sizes, for CI; its targets are still shown but not enforced, and nothing about timing is
  checked;
- takes `--json-out FILE`: it writes there a JSON list with one object per figure,
  `{"figure": "coordinator peak RSS", "value": 123.4, "unit": "MB", "target": 200, "compare": "<=",
  "met": true, "note": ""}`. `value` is null when the figure could not be measured (`note` says why); `target`,
  `compare` and `met` are null for a figure given for information only;
- prints its figures for a person to read;
- exits 0 when every target is met (always, in quick mode, unless it could not run), 1 when a target is missed
  (full mode only), 2 when it could not measure what it promised.

`Results` does the last three. Sizes are in decimal megabytes (1 MB = 1,000,000 bytes), as the targets are written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The one rule for finding Blender and the one free-port probe, shared with the product and the tests.
from renderq.blender_path import find_blender_or_none as find_blender
from renderq.ports import free_port
from renderq.http_client import CoordinatorClient
MB = 1_000_000
MIB = 1024 * 1024
GIB = 1024**3

# Exit codes of a benchmark script.
EXIT_OK = 0
EXIT_MISSED = 1
EXIT_FAILED = 2


# -- results ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Figure:
    """One measured number, with its target when it has one."""

    figure: str
    value: float | int | None
    unit: str = ""
    target: float | int | None = None
    # "<=": the value must be at most the target; ">=": at least.
    compare: str = "<="
    note: str = ""

    @property
    def met(self) -> bool | None:
        """True or False against the target; None without a target or without a value."""
        if self.target is None or self.value is None:
            return None
        return self.value <= self.target if self.compare == "<=" else self.value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "value": self.value, "unit": self.unit, "target": self.target,
                "compare": self.compare if self.target is not None else None, "met": self.met, "note": self.note}


def format_number(value: float | None) -> str:
    """A figure's value as people read it: 1234567 -> '1,234,567', 49.4 -> '49.4', 0.123456 -> '0.1235'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_target(target: float | None, compare: str | None, unit: str) -> str:
    if target is None:
        return ""
    sign = "≤" if compare in (None, "<=") else "≥"
    return f"{sign} {format_number(target)} {unit}".rstrip()


class Results:
    """The figures of one benchmark run: printed, written as JSON, and turned into the exit code."""

    def __init__(self, benchmark: str, quick: bool = False) -> None:
        self.benchmark = benchmark
        self.quick = quick
        self.figures: list[Figure] = []
        # Sentences saying why the benchmark could not do all it should (each one makes it exit EXIT_FAILED).
        self.problems: list[str] = []

    def add(self, figure: str, value: float | None, unit: str = "", target: float | None = None,
            compare: str = "<=", note: str = "") -> Figure:
        """Record a figure; a target makes it count towards the exit code (in full mode)."""
        if compare not in ("<=", ">="):
            raise ValueError(f"compare must be '<=' or '>=', not {compare!r}")
        entry = Figure(figure, value, unit, target, compare, note)
        self.figures.append(entry)
        return entry

    def fail(self, sentence: str) -> None:
        """Say plainly that something could not be measured; the script will exit EXIT_FAILED."""
        self.problems.append(sentence)
        print(f"{self.benchmark}: {sentence}", file=sys.stderr, flush=True)

    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.met is False]

    def exit_code(self) -> int:
        if self.problems or any(f.target is not None and f.value is None for f in self.figures):
            return EXIT_FAILED
        if self.missed() and not self.quick:
            return EXIT_MISSED
        return EXIT_OK

    def print_table(self) -> None:
        print()
        mode = " (quick mode: small sizes, targets shown but not enforced)" if self.quick else ""
        print(f"{self.benchmark}{mode}")
        width = max([len(f.figure) for f in self.figures] + [10])
        for f in self.figures:
            value = f"{format_number(f.value)} {f.unit}".rstrip() if f.value is not None else "not measured"
            verdict = ""
            if f.target is not None:
                verdict = f"  (target {format_target(f.target, f.compare, f.unit)}: "
                verdict += {True: "ok", False: "MISSED", None: "NOT MEASURED"}[f.met] + ")"
            note = f"  [{f.note}]" if f.note else ""
            print(f"  {f.figure:{width}}  {value}{verdict}{note}")
        for sentence in self.problems:
            print(f"  FAILED: {sentence}")

    def write_json(self, path: str) -> None:
        """The figures as the JSON list described at the top of this module; problems as figures without value."""
        entries = [f.as_dict() for f in self.figures]
        entries += [Figure("could not run", None, note=sentence).as_dict() for sentence in self.problems]
        temp = path + ".partial"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(entries, handle, indent=1)
        os.replace(temp, path)

    def finish(self, json_out: str | None) -> int:
        """Print, write the JSON when asked, and return the exit code."""
        self.print_table()
        if json_out:
            self.write_json(json_out)
        code = self.exit_code()
        if code == EXIT_MISSED:
            print(f"{self.benchmark}: {len(self.missed())} target(s) missed")
        return code


def add_arguments(parser: argparse.ArgumentParser, quick_help: str = "") -> None:
    """The flags every benchmark script takes: --quick and --json-out."""
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for CI: targets are shown but not enforced" +
                        (f" ({quick_help})" if quick_help else ""))
    parser.add_argument("--json-out", metavar="FILE",
                        help="also write the figures to FILE as JSON (a list of {figure, value, unit, target, "
                        "compare, met, note})")


# -- processes ---------------------------------------------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (children inherit it): a process holding
    thousands of sockets needs it. Returns the soft limit now in force (-1 where there is no such limit)."""
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit to raise
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def renderq_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m renderq` child: this checkout importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Coordinator:
    """A real `python -m renderq coordinator` on 127.0.0.1, its log in a file, its tokens read from its data dir.

    Use as a context manager, or call start() and stop().
    """

    def __init__(self, root: str, *extra_args: str, data_dir: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.data_dir = data_dir or os.path.join(root, "coordinator-data")
        self.extra_args = list(extra_args)
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(root, f"coordinator-{self.port}.log")
        self.popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, "the coordinator was not started"
        return self.popen.pid

    def start(self, timeout: float = 60.0) -> Coordinator:
        os.makedirs(self.root, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", self.data_dir, *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=self.env or renderq_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.popen.poll() is not None:
                raise RuntimeError(f"the coordinator exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the coordinator did not answer /health within {timeout:g} s")
            time.sleep(0.1)
        return self

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return sock.recv(64).split(b" ")[1:2] == [b"200"]
        except (OSError, IndexError):
            return False

    def token(self, role: str) -> str:
        """A role's token (admin, artist, worker): RENDERQ_<ROLE>_TOKEN when set, else the data dir's file."""
        from_env = (self.env or os.environ).get(f"RENDERQ_{role.upper()}_TOKEN")
        if from_env:
            return from_env
        with open(self.token_file(role), encoding="utf-8") as handle:
            return handle.read().strip()

    def token_file(self, role: str) -> str:
        return os.path.join(self.data_dir, f"{role}_token")

    def client(self, role: str = "admin", timeout: float = 120.0) -> HttpClient:
        return HttpClient(self.url, self.token(role), timeout=timeout)

    def output(self) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT (a clean shutdown), then SIGKILL of its whole process group if it lingers."""
        if self.popen is None:
            return
        stop_process(self.popen, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(popen: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a child started with start_new_session=True: SIGINT, then SIGKILL of its process group."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGINT)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(10)


# -- HTTP --------------------------------------------------------------------------------------------------------------


class HttpError(Exception):
    """An answer other than the one expected."""


class HttpClient:
    """The benchmarks' JSON calls as (status, answer) pairs, made by the product's own client
    (renderq.http_client.CoordinatorClient): one keep-alive connection per thread, standard library only."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self._clients: dict[str | None, CoordinatorClient] = {}

    def _client(self, token: str | None) -> CoordinatorClient:
        client = self._clients.get(token)
        if client is None:
            client = self._clients.setdefault(token, CoordinatorClient(self.url, timeout=self.timeout, token=token))
        return client

    def close(self) -> None:
        """Close this thread's connections."""
        for client in list(self._clients.values()):
            client.close()

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             token: str | None = None) -> tuple[int, Any]:
        """One request: (status, parsed JSON or the raw bytes). A connection the server closed is replaced."""
        client = self._client(self.token if token is None else token)
        status, content_type, payload = client.send(method, path, json_body=body, data=raw)
        if "json" in content_type:
            return status, json.loads(payload)
        return status, payload

    def get(self, path: str, token: str | None = None) -> Any:
        status, answer = self.call("GET", path, token=token)
        if status != 200:
            raise HttpError(f"GET {path} answered {status}: {str(answer)[:300]}")
        return answer

    def post(self, path: str, body: Any = None, raw: bytes | None = None, token: str | None = None) -> Any:
        status, answer = self.call("POST", path, body=body, raw=raw, token=token)
        if status not in (200, 201):
            raise HttpError(f"POST {path} answered {status}: {str(answer)[:300]}")
        return answer


# -- memory ------------------------------------------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """The process's memory fields from /proc/PID/status in bytes: VmRSS, VmHWM (peak RSS), RssAnon, RssFile,
    RssShmem, VmSize, VmData (those the kernel gives). Raises OSError once the process is gone."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize", "VmData"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process itself has used, its children not included. Raises OSError
    once the process is gone."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        # The command name (field 2) may hold spaces; the fields after it are counted from its closing parenthesis.
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    """Resident memory of a process now, in bytes."""
    return proc_memory(pid)["VmRSS"]


def reset_peak_rss(pid: int) -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) of a process at its current RSS; False where not supported."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples one process's RSS in a background thread; the peak is the larger of the samples' highest and the
    kernel's VmHWM (which counts between samples too).

        with RssSampler(pid) as sampler:
            ...work...
        sampler.peak, sampler.samples
    """

    def __init__(self, pid: int, interval: float = 0.05, reset_peak: bool = True) -> None:
        self.pid = pid
        self.interval = interval
        self.reset_peak = reset_peak
        self.samples: list[tuple[float, int]] = []
        self.start_rss = 0
        self.hwm_reset = False
        self.final_hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> Self:
        self.hwm_reset = self.reset_peak and reset_peak_rss(self.pid)
        self.start_rss = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.final_hwm = proc_memory(self.pid)["VmHWM"]

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - started, rss(self.pid)))
            except OSError:
                return
            self._stop.wait(self.interval)

    @property
    def sampled_peak(self) -> int:
        return max([value for _, value in self.samples] + [self.start_rss])

    @property
    def peak(self) -> int:
        """The highest RSS seen while sampling. VmHWM counts only when it was reset at the start (else it may hold
        a peak from before)."""
        return max(self.sampled_peak, self.final_hwm if self.hwm_reset else 0)


def self_peak_rss() -> int:
    """This process's own peak RSS in bytes."""
    return proc_memory(os.getpid())["VmHWM"]


# -- the machine -------------------------------------------------------------------------------------------------------


def describe_machine(blender: str | None = None) -> dict[str, str]:
    """CPU model, cores, RAM, OS, Python and Blender version of this machine, as short strings."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = ""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) * 1024 / GIB:.1f} GiB"
                break
    # The kernel's version without its local build suffix (e.g. '6.1.0-18-amd64' -> '6.1.0').
    kernel = re.match(r"[0-9.]*[0-9]", platform.release())
    system = f"{platform.system()} {kernel[0] if kernel else platform.release()}"
    with contextlib.suppress(OSError):
        info = platform.freedesktop_os_release()
        system = f"{info.get('PRETTY_NAME', info.get('NAME', ''))}, {system}"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "ram": ram or "?",
        "os": system,
        "python": platform.python_version(),
        "blender": blender_version_text(blender),
    }


def blender_version_text(blender: str | None = None) -> str:
    """'3.4.1', or a short sentence saying why there is none."""
    blender = blender or find_blender()
    if not blender:
        return "not installed"
    try:
        completed = subprocess.run([blender, "--version"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    for line in completed.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("Blender "):
            return line.split()[1]
    return "unknown"


def free_disk(path: str) -> int:
    """Bytes free on the file system that holds path (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Print a benchmark step and how long it took, so a long run shows where it is."""
    print(f"- {name} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"  {name}: {time.monotonic() - started:.1f} s", flush=True)
