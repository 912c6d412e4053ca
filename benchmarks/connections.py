"""Connection flood: do heartbeats stay fast and leases safe while strangers hold a thousand connections open?

A real `renderq coordinator` (its own data dir, loopback, a free port) gets one task of many frames and 200
simulated workers (benchmarks/simworker.py, one process each) that register, heartbeat at the coordinator's interval
(2 s), claim frames, "render" each for 2-5 s, upload a small PNG and report it done, all over real HTTP, one
connection per request as the real worker does. Each worker logs every heartbeat's round trip (--log-heartbeats).

Once every worker has registered, a calm window measures heartbeats without an attack. Then a separate attacker
process (its sockets and its CPU are not the workers') opens 1,000 idle TCP connections (connect, send nothing) and
200 slowloris sockets (a request line and a partial header, then one more header byte every few seconds). When the
server cuts one of either kind, the attacker notes how long it held and opens a new one at once, so the full count
stays in play, as a real attacker's would. After a short ramp the attack window is measured.

Figures: heartbeat latency over every heartbeat due in the attack window, each from when it was due to its answer
(p50, p99, max, and the worst worker's p99). A simulated worker has one thread, so a heartbeat held up behind its
other call to a stalled server counts that wait, as its lease would; a failed or timed-out heartbeat counts the time
the worker waited for it. Then the round trips alone, heartbeats that failed or timed out, the longest time a worker
went without an answered heartbeat, leases lost (leases a worker was told were gone: revoked in a
heartbeat's answer or a report refused with 409; and frames the coordinator's reaper logged as requeued because
their worker stopped reporting), frames done, and how many idle and slowloris sockets the server cut and after how
long. Targets: every worker's heartbeat p99 under 250 ms, no heartbeat failed, no lease lost.

Exit status as every benchmark's (common.py): a missed target is 1 in full mode and 0 with --quick; 2 only when the
run could not be done (the coordinator or the attacker died).

    python benchmarks/connections.py [--quick] [--workers 200] [--idle 1000] [--slowloris 200] [--duration 60]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from common import Coordinator, HttpError, Results, add_arguments, phase, raise_open_files_limit, renderq_env
from soak import Child
from throughput import percentile, submit_frames

TARGET_HEARTBEAT_P99_MS = 250.0
SIMWORKER = os.path.join(HERE, "simworker.py")
# What a slowloris sends at once: a whole request line and a header it never finishes.
SLOWLORIS_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: renderq-slowloris\r\nX-Slow: "
# How long the attacker waits before it tries again after a connect failed (the server refused it, or is gone).
RECONNECT_DELAY = 0.5

HEARTBEAT = re.compile(r"^([0-9.]+) (\S+) heartbeat ([0-9.]+) ms (\S+) late (-?[0-9.]+) ms$", re.MULTILINE)
LEASE_LOST = re.compile(r"^[0-9.]+ (\S+) (?:refused409|revoked) .*?lease=([0-9a-f]+)", re.MULTILINE)
DONE = re.compile(r"^([0-9.]+) \S+ done ", re.MULTILINE)
REGISTERED = re.compile(r"^[0-9.]+ \S+ registered ", re.MULTILINE)
REQUEUED = re.compile(r"requeued (\d+) frame\(s\) whose worker stopped reporting")
TRACEBACK = "Traceback (most recent call last)"


# -- the attacker process ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Held:
    """One attacking socket."""

    kind: str  # "idle" or "slowloris"
    sock: socket.socket
    connected: float | None = None
    next_byte: float = 0.0
    answered: bool = False


class Attacker:
    """Holds `idle` silent connections and `slowloris` trickling ones open until `until` (wall clock), reopening
    each one the server cuts; counts the cuts and how long each socket had held, and samples how many are in play."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.address = (config["host"], config["port"])
        self.wanted = {"idle": config["idle"], "slowloris": config["slowloris"]}
        self.trickle = config["trickle"]
        self.until = config["until"]
        self.measure_from = config["measure_from"]
        self.selector = selectors.DefaultSelector()
        self.held: dict[int, Held] = {}
        self.reopen_at: list[tuple[float, str]] = []
        self.opened = collections.Counter()
        self.connect_failures = collections.Counter()
        self.answered_cuts = collections.Counter()
        self.cut_after: dict[str, list[float]] = {"idle": [], "slowloris": []}
        # Sampled once a second in the window: sockets connected, and sockets whose connect has not completed yet
        # (the server's accept queue was full).
        self.in_play: dict[str, list[int]] = {"idle": [], "slowloris": []}
        self.connecting: dict[str, list[int]] = {"idle": [], "slowloris": []}

    def open(self, kind: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self.connect_failures[kind] += 1
            self.reopen_at.append((time.monotonic() + RECONNECT_DELAY, kind))
            return
        held = Held(kind, sock)
        self.held[sock.fileno()] = held
        self.opened[kind] += 1
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, held)

    def on_connected(self, held: Held) -> None:
        error = held.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.connect_failures[held.kind] += 1
            self.drop(held, reopen_in=RECONNECT_DELAY)
            return
        held.connected = time.monotonic()
        self.selector.modify(held.sock, selectors.EVENT_READ, held)
        if held.kind == "slowloris":
            # Spread the trickled bytes over the interval, so they do not all arrive at once.
            held.next_byte = held.connected + self.trickle * (len(self.held) % 97) / 97
            self.send(held, SLOWLORIS_HEAD)

    def on_readable(self, held: Held) -> None:
        try:
            data = held.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            held.answered = True  # e.g. a 408 before the close; the close itself comes next
            return
        self.cut(held)

    def send(self, held: Held, data: bytes) -> None:
        try:
            held.sock.send(data)
        except BlockingIOError:
            pass
        except OSError:
            self.cut(held)

    def cut(self, held: Held) -> None:
        """The server closed this socket: note how long it held, and open another in its place."""
        if held.connected is not None:
            self.cut_after[held.kind].append(round(time.monotonic() - held.connected, 3))
            self.answered_cuts[held.kind] += held.answered
        self.drop(held, reopen_in=0.0)

    def drop(self, held: Held, reopen_in: float) -> None:
        self.selector.unregister(held.sock)
        del self.held[held.sock.fileno()]
        held.sock.close()
        self.reopen_at.append((time.monotonic() + reopen_in, held.kind))

    def tick(self) -> None:
        """Trickle the slowloris bytes that are due and reopen the sockets whose delay passed."""
        now = time.monotonic()
        for held in list(self.held.values()):
            if held.kind == "slowloris" and held.connected is not None and now >= held.next_byte:
                held.next_byte = now + self.trickle
                self.send(held, b"a")
        due = [kind for when, kind in self.reopen_at if when <= now]
        self.reopen_at = [(when, kind) for when, kind in self.reopen_at if when > now]
        for kind in due:
            self.open(kind)

    def run(self) -> dict[str, Any]:
        # Both kinds interleaved, so that neither gets all the room in the server's accept queue.
        total = sum(self.wanted.values())
        for number in range(total):
            for kind, count in self.wanted.items():
                if number * count // total != (number + 1) * count // total:
                    self.open(kind)
        next_sample = time.time()
        while time.time() < self.until:
            for key, mask in self.selector.select(timeout=0.1):
                held = key.data
                if held.sock.fileno() not in self.held:
                    continue  # closed by an earlier event of this round
                if held.connected is None and mask & selectors.EVENT_WRITE:
                    self.on_connected(held)
                elif mask & selectors.EVENT_READ:
                    self.on_readable(held)
            self.tick()
            if time.time() >= next_sample:
                next_sample += 1.0
                if time.time() >= self.measure_from:
                    for kind in self.wanted:
                        self.in_play[kind].append(sum(1 for h in self.held.values()
                                                      if h.kind == kind and h.connected is not None))
                        self.connecting[kind].append(sum(1 for h in self.held.values()
                                                         if h.kind == kind and h.connected is None))
        for held in list(self.held.values()):
            held.sock.close()
        return {"opened": self.opened, "connect_failures": self.connect_failures, "cut_after": self.cut_after,
                "answered_cuts": self.answered_cuts, "in_play": self.in_play, "connecting": self.connecting}


def attack(config_json: str) -> int:
    """Entry point of the attacker process: run the attack, print what it saw as one JSON line."""
    raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    result = Attacker(json.loads(config_json)).run()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# -- what the workers saw ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Beat:
    """One heartbeat: when it was due (wall clock), the worker, its outcome, its round trip and the time from when
    it was due to its answer (the round trip plus any wait behind the worker's other calls), in ms."""

    due: float
    worker: str
    outcome: str
    round_trip: float
    waited: float
    # True for a heartbeat the worker could not send because it was blocked: see read_worker_logs.
    filled_in: bool = False


@dataclasses.dataclass
class WorkerLogs:
    """Everything the simulated workers logged that the figures need."""

    beats: list[Beat]
    leases_lost: set[tuple[str, str]]
    done_times: list[float]
    tracebacks: int


def read_worker_logs(texts: dict[str, str], interval: float) -> WorkerLogs:
    """Parse the simulated workers' logs, by worker name; `interval` is the heartbeat interval in seconds.

    A worker blocked in one call for several intervals sends one late heartbeat where a worker with a heartbeat
    thread would have sent several, each waiting too. Those are filled in, one per interval skipped, each having
    waited an interval less than the one before (the usual correction for coordinated omission): otherwise the
    worst stretches would weigh least in the percentiles."""
    beats: list[Beat] = []
    lost: set[tuple[str, str]] = set()
    done: list[float] = []
    tracebacks = 0
    for text in texts.values():
        for match in HEARTBEAT.finditer(text):
            waited = float(match[3]) + max(0.0, float(match[5]))
            due = float(match[1]) - waited / 1000.0
            beats.append(Beat(due, match[2], match[4], float(match[3]), waited))
            skipped = 1
            while waited - skipped * interval * 1000.0 > float(match[3]):
                beats.append(Beat(due + skipped * interval, match[2], match[4], float(match[3]),
                                  waited - skipped * interval * 1000.0, filled_in=True))
                skipped += 1
        lost.update((match[1], match[2]) for match in LEASE_LOST.finditer(text))
        done.extend(float(match[1]) for match in DONE.finditer(text))
        tracebacks += text.count(TRACEBACK)
    return WorkerLogs(beats, lost, done, tracebacks)


def heartbeat_figures(beats: list[Beat], start: float, end: float) -> dict[str, Any]:
    """Latency figures of the heartbeats due in [start, end), from when each was due to its answer: over all of
    them and per worker; and the round trips alone."""
    window = [beat for beat in beats if start <= beat.due < end]
    every = [beat.waited for beat in window]
    sent = [beat for beat in window if not beat.filled_in]
    per_worker: dict[str, list[float]] = collections.defaultdict(list)
    answered: dict[str, list[float]] = collections.defaultdict(list)
    for beat in window:
        per_worker[beat.worker].append(beat.waited)
        if beat.outcome == "ok" and not beat.filled_in:
            answered[beat.worker].append(beat.due + beat.waited / 1000.0)
    worst = max(per_worker, key=lambda name: percentile(per_worker[name], 0.99), default=None)
    # The longest stretch of the window a worker spent without an answered heartbeat: past the alive timeout, its
    # lease is gone. A worker with no answered heartbeat at all went the whole window without one.
    longest_gap = 0.0
    for name in per_worker:
        marks = [start, *sorted(answered[name]), end]
        longest_gap = max(longest_gap, max(b - a for a, b in itertools.pairwise(marks)))
    return {
        "count": len(window),
        "filled_in": len(window) - len(sent),
        "failed": sum(1 for beat in sent if beat.outcome != "ok"),
        "outcomes": collections.Counter(beat.outcome for beat in sent if beat.outcome != "ok"),
        "p50": percentile(every, 0.5),
        "p99": percentile(every, 0.99),
        "max": max(every, default=None),
        "round_trip_p99": percentile([beat.round_trip for beat in sent], 0.99),
        "worst_worker": worst,
        "worst_worker_p99": percentile(per_worker[worst], 0.99) if worst else None,
        "workers": len(per_worker),
        "longest_gap": longest_gap if per_worker else None,
    }


# -- the run -----------------------------------------------------------------------------------------------------------


class ConnectionsError(Exception):
    """The run could not go on (the coordinator or the attacker died, the workers did not register)."""


@dataclasses.dataclass
class Outcome:
    """What one run measured, for the figures."""

    calm: dict[str, Any]
    attack: dict[str, Any]
    logs: WorkerLogs
    attacker: dict[str, Any]
    window: tuple[float, float]
    frames_done: int | None = None
    requeued: int = 0
    coordinator_tracebacks: int = 0


class Farm:
    """The coordinator with its task and simulated workers, and the attacker; stop() ends every process started."""

    def __init__(self, args: argparse.Namespace, run_dir: str) -> None:
        self.args = args
        self.run_dir = run_dir
        self.coordinator = Coordinator(run_dir, "--heartbeat", str(args.heartbeat), *args.coordinator_arg)
        self.workers: list[Child] = []
        self.attacker: subprocess.Popen | None = None
        self.attack_until = 0.0
        for folder in ("logs", "acks"):
            os.makedirs(os.path.join(run_dir, folder), exist_ok=True)

    def start(self) -> None:
        """The coordinator, a task with frames for the whole run, the workers; returns once all have registered."""
        args = self.args
        with phase("start the coordinator"):
            self.coordinator.start()
        seconds = 60 + args.calm + args.ramp + args.duration
        frames = int(args.workers * seconds / ((args.frame_min + args.frame_max) / 2) * 1.5) + 100
        with phase(f"submit a task of {frames:,} frames"):
            submit_frames(self.coordinator, frames, 1)
        with phase(f"start {args.workers} simulated workers"):
            env = renderq_env(RENDERQ_TOKEN=self.coordinator.token("worker"))
            for number in range(1, args.workers + 1):
                name = f"sim-{number:03d}"
                # -S: the simulated worker needs only the standard library; skipping site starts it faster.
                command = [sys.executable, "-S", SIMWORKER, "--coordinator", self.coordinator.url, "--name", name,
                           "--acks", os.path.join(self.run_dir, "acks", f"{name}.jsonl"),
                           "--frame-min", str(args.frame_min), "--frame-max", str(args.frame_max),
                           "--timeout", str(args.request_timeout), "--log-heartbeats", "--seed", str(number),
                           # A call held up by the server is no stalled process: heartbeats must not wait for it.
                           "--report-first", "0",
                           "--max-seconds", str(seconds + 600)]
                child = Child(name, "sim", command, os.path.join(self.run_dir, "logs", f"{name}.log"), env)
                child.start()
                self.workers.append(child)
                if number % 20 == 0:
                    time.sleep(0.5)  # a gentle ramp: hundreds of interpreters starting at once starve the coordinator
            self.wait_registered(timeout=60 + args.workers * 0.3)

    def wait_registered(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting = [child.name for child in self.workers if not REGISTERED.search(child.log_text())]
            if not waiting:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise ConnectionsError(f"{len(waiting)} workers had not registered after {timeout:.0f} s "
                                       f"(e.g. {waiting[0]}: see its log in {self.run_dir}/logs)")
            time.sleep(0.5)

    def check_alive(self) -> None:
        popen = self.coordinator.popen
        if popen is not None and popen.poll() is not None:
            raise ConnectionsError(f"the coordinator exited with {popen.returncode}:\n"
                                   f"{self.coordinator.output()[-3000:]}")
        if self.attacker is not None and self.attacker.poll() is not None and time.time() < self.attack_until:
            raise ConnectionsError(f"the attacker process exited early with {self.attacker.returncode}")

    def measure(self) -> tuple[float, float, float, dict[str, Any]]:
        """The calm window, then the attack: (calm start, attack measured from, until, the attacker's counts)."""
        args = self.args
        # Every worker has sent its first heartbeat by then.
        calm_from = time.time() + args.heartbeat
        with phase(f"{args.calm:g} s without an attack"):
            time.sleep(max(0.0, calm_from + args.calm - time.time()))
        measure_from = time.time() + args.ramp
        self.attack_until = measure_from + args.duration
        config = {"host": "127.0.0.1", "port": self.coordinator.port, "idle": args.idle,
                  "slowloris": args.slowloris, "trickle": args.trickle, "until": self.attack_until,
                  "measure_from": measure_from}
        with phase(f"attack: {args.idle} idle + {args.slowloris} slowloris connections for {args.duration:g} s "
                   f"(after {args.ramp:g} s to open them)"):
            command = [sys.executable, os.path.abspath(__file__), "--attack", json.dumps(config)]
            self.attacker = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                             env=renderq_env(), start_new_session=True)
            while time.time() < self.attack_until:
                self.check_alive()
                time.sleep(min(1.0, max(0.0, self.attack_until - time.time())))
            out, _ = self.attacker.communicate(timeout=60)
        if self.attacker.returncode != 0 or not out.strip():
            raise ConnectionsError(f"the attacker process exited with {self.attacker.returncode}")
        return calm_from, measure_from, self.attack_until, json.loads(out.decode().strip().splitlines()[-1])

    def stop_workers(self) -> None:
        """Stop every worker (each gives back the frame it holds), all at once."""
        for child in self.workers:
            child.stop(signal.SIGTERM)
        deadline = time.monotonic() + 20 + self.args.request_timeout
        for child in self.workers:
            child.wait_stopped(deadline)

    def frames_done(self) -> int | None:
        """Frames done over every task, as the coordinator counts them; None when it does not answer."""
        with contextlib.suppress(OSError, HttpError, ValueError, KeyError, TypeError):
            tasks = self.coordinator.client("admin", timeout=30).get("/tasks")["tasks"]
            return sum(task["progress"]["done"] for task in tasks)
        return None

    def stop(self) -> int | None:
        """Stop every process started: the attacker, the workers, the coordinator last, after asking it how many
        frames were done (returned, None when it did not answer)."""
        if self.attacker is not None and self.attacker.poll() is None:
            self.attacker.kill()
            self.attacker.wait(10)
        with phase("stop the workers"):
            self.stop_workers()
        done = self.frames_done() if self.coordinator.popen is not None else None
        self.coordinator.stop()
        return done


def run(args: argparse.Namespace, run_dir: str) -> Outcome:
    """Start everything, measure the calm and the attack windows, stop everything; what was measured."""
    farm = Farm(args, run_dir)
    try:
        farm.start()
        calm_from, measure_from, until, attacker = farm.measure()
    finally:
        # Nothing may interrupt the clean-up: it is what stops the hundreds of processes started.
        handlers = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        done = farm.stop()
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    logs = read_worker_logs({child.name: child.log_text() for child in farm.workers}, args.heartbeat)
    output = farm.coordinator.output()
    return Outcome(calm=heartbeat_figures(logs.beats, calm_from, measure_from - args.ramp),
                   attack=heartbeat_figures(logs.beats, measure_from, until), logs=logs, attacker=attacker,
                   window=(measure_from, until), frames_done=done,
                   requeued=sum(int(match[1]) for match in REQUEUED.finditer(output)),
                   coordinator_tracebacks=output.count(TRACEBACK))


def record(results: Results, outcome: Outcome, args: argparse.Namespace) -> None:
    """Every figure of the run, in the benchmarks' shared format."""
    attack, calm = outcome.attack, outcome.calm
    results.add("worst worker's heartbeat p99 under attack", _round(attack["worst_worker_p99"]), "ms",
                TARGET_HEARTBEAT_P99_MS, note=f"{attack['worst_worker'] or 'no worker'}; over the heartbeats due "
                f"in the {args.duration:g} s window")
    results.add("heartbeat p99 under attack", _round(attack["p99"]), "ms", TARGET_HEARTBEAT_P99_MS,
                note=f"{attack['count']:,} heartbeats of {attack['workers']} workers, each from when it was due to "
                f"its answer (or failure): a wait behind the worker's other calls counts; {attack['filled_in']:,} of "
                "them filled in for intervals a blocked worker skipped")
    results.add("heartbeat round-trip p99 under attack", _round(attack["round_trip_p99"]), "ms",
                note="the requests alone, from sending to the answer")
    results.add("heartbeat p50 under attack", _round(attack["p50"]), "ms")
    results.add("slowest heartbeat under attack", _round(attack["max"]), "ms")
    outcomes = ", ".join(f"{count} {name}" for name, count in attack["outcomes"].most_common())
    results.add("heartbeats failed or timed out under attack", attack["failed"], "", 0,
                note=(outcomes + f"; a heartbeat times out after {args.request_timeout:g} s") if outcomes else "")
    results.add("longest a worker went without an answered heartbeat", _round(attack["longest_gap"], 2), "s",
                note="its lease runs out after the coordinator's alive timeout (15 s by default)")
    results.add("leases lost", len(outcome.logs.leases_lost), "", 0,
                note="leases a worker was told were gone: revoked in a heartbeat's answer or a report refused (409)")
    results.add("frames requeued because their worker stopped reporting", outcome.requeued, "", 0,
                note="the coordinator's lease reaper, from its log")
    window = outcome.window
    results.add("frames done during the attack", sum(1 for t in outcome.logs.done_times
                                                     if window[0] <= t < window[1]), "frames")
    results.add("frames done in the whole run", outcome.frames_done, "frames")
    results.add("heartbeat p99 without the attack", _round(calm["p99"]), "ms",
                note=f"{calm['count']:,} heartbeats in {args.calm:g} s before it, for comparison")
    record_attack(results, outcome.attacker)
    results.add("coordinator tracebacks", outcome.coordinator_tracebacks, "", 0)
    results.add("worker tracebacks", outcome.logs.tracebacks, "", 0)


def record_attack(results: Results, attacker: dict[str, Any]) -> None:
    """The attacker's side: how many sockets it held, and how many the server cut after how long."""
    for kind, label in (("idle", "idle connections"), ("slowloris", "slowloris sockets")):
        cuts = attacker["cut_after"][kind]
        in_play = attacker["in_play"][kind]
        connecting = max(attacker["connecting"][kind], default=0)
        results.add(f"{label} held open (fewest during the window)", min(in_play) if in_play else None,
                    note=f"{attacker['opened'].get(kind, 0):,} opened in all; {connecting:,} at most still "
                    f"connecting at once; {attacker['connect_failures'].get(kind, 0):,} connects failed")
        results.add(f"{label} cut by the server", len(cuts),
                    note=f"{attacker['answered_cuts'].get(kind, 0):,} of them with an answer first" if cuts else "")
        results.add(f"{label}: median time held before the cut", _round(percentile(cuts, 0.5), 2), "s")
        results.add(f"{label}: longest time held before the cut", _round(max(cuts, default=None), 2), "s")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


QUICK = {"workers": 20, "idle": 100, "slowloris": 20, "duration": 15.0, "calm": 5.0, "ramp": 2.0}
FULL = {"workers": 200, "idle": 1000, "slowloris": 200, "duration": 60.0, "calm": 10.0, "ramp": 3.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connections.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser, "20 workers, 100 idle and 20 slowloris sockets, a 15 s window; explicit options still win")
    parser.add_argument("--workers", type=int, help="simulated worker processes (default 200; quick 20)")
    parser.add_argument("--idle", type=int, help="idle connections held open (default 1,000; quick 100)")
    parser.add_argument("--slowloris", type=int, help="slowloris sockets held open (default 200; quick 20)")
    parser.add_argument("--duration", type=float, help="seconds the attack is measured (default 60; quick 15)")
    parser.add_argument("--calm", type=float, help="seconds measured before the attack (default 10; quick 5)")
    parser.add_argument("--ramp", type=float,
                        help="seconds the attacker gets to open its sockets before the measuring (default 3; quick 2)")
    parser.add_argument("--trickle", type=float, default=5.0,
                        help="seconds between a slowloris socket's header bytes (default 5)")
    parser.add_argument("--frame-min", type=float, default=2.0, help="shortest simulated frame, seconds (default 2)")
    parser.add_argument("--frame-max", type=float, default=5.0, help="longest simulated frame, seconds (default 5)")
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="the coordinator's heartbeat interval in seconds, given with --heartbeat (default 2)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds a worker waits for any answer before it counts the call failed (default 10)")
    parser.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `renderq coordinator` (repeatable), e.g. a server setting")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (workers' logs, the coordinator's)")
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.attack:
        return args
    if args.workers < 1 or args.idle < 0 or args.slowloris < 0:
        parser.error("--workers must be at least 1, --idle and --slowloris at least 0")
    if min(args.duration, args.calm, args.trickle, args.request_timeout, args.heartbeat) <= 0 or args.ramp < 0:
        parser.error("--duration, --calm, --trickle, --request-timeout and --heartbeat must be more than 0")
    if not 0 < args.frame_min <= args.frame_max:
        parser.error("--frame-min must be more than 0 and at most --frame-max")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.attack:
        return attack(args.attack)
    results = Results("connection flood", quick=args.quick)
    # The coordinator inherits the limit: it must be able to hold every attacking socket, and the workers' too.
    limit = raise_open_files_limit()
    needed = args.idle + args.slowloris + args.workers + 200
    if 0 <= limit < needed:
        print(f"note: only {limit} open files are allowed per process; the coordinator needs about {needed}, so "
              "connections beyond that are refused whatever its server", flush=True)
    run_dir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="renderq-connections-")
    os.makedirs(run_dir, exist_ok=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    # The folder is named only when kept: the output's last lines go into docs/benchmarks.md.
    print(f"connections: {args.workers} simulated workers, {args.idle} idle + {args.slowloris} slowloris sockets, "
          f"{args.duration:g} s window" + (f", folder {run_dir}" if args.keep else ""), flush=True)
    outcome: Outcome | None = None
    try:
        outcome = run(args, run_dir)
    except (ConnectionsError, RuntimeError, OSError, subprocess.SubprocessError, HttpError) as error:
        results.fail(f"the run stopped: {error}")
    except KeyboardInterrupt:
        results.fail("interrupted")
    if outcome is not None:
        record(results, outcome, args)
    code = results.finish(args.json_out)
    if not args.keep and not results.problems:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif not args.keep:
        print(f"connections: the run's folder is kept for inspection: {run_dir}")
    return code


def _interrupt(signum: int, frame: object) -> None:
    """A SIGTERM cleans up like Ctrl-C does."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
