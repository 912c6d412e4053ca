"""Soak run: a real coordinator, real Blender workers and hundreds of simulated ones, under chaos.

Starts `renderq coordinator` with fast heartbeats, two real `renderq worker`s rendering a small Blender-made scene,
and (by default) 200 simulated workers (benchmarks/simworker.py, one process each). It keeps submitting tasks of
20-60 frames so there is always work, while a chaos loop SIGKILLs random workers (simulated ones often, real ones
now and then, the real worker together with its Blender) and restarts them after a short delay, and freezes random
workers with SIGSTOP for longer than the alive timeout before letting them go on (SIGCONT), so they come back to
lost leases.

Then the chaos stops, every task is let finish, and the run is checked through the API and the workers' records:

- every frame of every task submitted is done, with one output (frames lost = 0);
- no (task, frame) was acknowledged done twice: simulated workers append each acknowledged done report to an
  fsynced file, real workers log it; the coordinator's per-worker frames_done counters must also add up to the
  frames done (duplicates = 0);
- each acknowledged frame is recorded on the coordinator as done by that worker, and a simulated worker's frame
  keeps exactly the file that worker uploaded under that lease;
- the coordinator never answered 5xx and logged no traceback.

Prints the figures (and writes them as JSON with --json-out, in the format common.py describes); exits 1 when
anything was lost or doubled, or a check above failed, also in --quick mode, and 2 when the run could not be done
(no Blender, the coordinator died). Every process it started is stopped on the way out, also on Ctrl-C. With
--keep DIR the logs stay: each worker's log, the simulated workers' ack files, logs/chaos.log (every kill, freeze,
thaw and restart, with its time) and the coordinator's data.

    python benchmarks/soak.py [--duration 600] [--sim-workers 200] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from common import Results
from harness import Api, free_port
from simworker import frame_png
from soak_options import MUST_BE_ZERO, NOTES, QUICK, Counts, Findings, build_parser, parse_args, record
from soak_processes import Child, descendants, rss_bytes

__all__ = ["MUST_BE_ZERO", "NOTES", "QUICK", "Child", "Counts", "Findings", "Soak", "SoakError", "build_parser",
           "descendants", "main", "parse_args", "record", "rss_bytes"]

from renderq.scenes import make_scene
from worker.blender_session import SessionError, blender_version, find_blender

SIMWORKER = os.path.join(HERE, "simworker.py")
# Lines a real worker logs once the coordinator accepted its done report, and when it learns a lease was lost.
REAL_DONE = re.compile(r" renderq\.worker: task (\d+) frame (-?\d+) done(?: in [0-9.]+ s)?$")
REAL_REFUSED = re.compile(r"lease lost|not given back")
TRACEBACK = "Traceback (most recent call last)"
CLAIMED = re.compile(r"^([0-9.]+) \S+ claimed .* lease=([0-9a-f]+)", re.MULTILINE)
REFUSED = re.compile(r"^([0-9.]+) \S+ refused409 (.* lease=([0-9a-f]+).*)$", re.MULTILINE)
SLOW = re.compile(r"^([0-9.]+) \S+ slow (\w+ /\w+) took ([0-9.]+) s", re.MULTILINE)


# -- the run --------------------------------------------------------------------------------------------------------


class Soak:
    """Runs the farm, the submitter and the chaos, then checks the outcome."""

    def __init__(self, args: argparse.Namespace, root: str) -> None:
        self.args = args
        self.root = root
        self.random = random.Random(args.seed)
        self.data_dir = os.path.join(root, "coordinator-data")
        self.logs = os.path.join(root, "logs")
        self.acks = os.path.join(root, "acks")
        for folder in (self.data_dir, self.logs, self.acks):
            os.makedirs(folder, exist_ok=True)
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = Api(self.url)
        self.submit_token: str | None = None
        self.coordinator: Child | None = None
        self.real: list[Child] = []
        self.sims: list[Child] = []
        self.counts = Counts()
        self.blend_sha256 = ""
        self.started = time.monotonic()
        self.chaos_log = open(os.path.join(self.logs, "chaos.log"), "a", buffering=1, encoding="utf-8")

    def note(self, event: str, child: Child, text: str = "") -> None:
        """One line in logs/chaos.log, to line up with the workers' logs afterwards."""
        self.chaos_log.write(f"{time.time():.3f} {event} {child.name} {text}".rstrip() + "\n")

    # -- set-up -----------------------------------------------------------------------------------------------------

    def env(self, token: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("RENDERQ_TOKEN", None)
        if token:
            env["RENDERQ_TOKEN"] = token
        return env

    def token(self, role: str) -> str | None:
        """The coordinator's token for `role` (admin, artist, worker): its RENDERQ_ variable, else its file."""
        from_env = os.environ.get(f"RENDERQ_{role.upper()}_TOKEN")
        if from_env:
            return from_env
        try:
            with open(os.path.join(self.data_dir, f"{role}_token"), encoding="utf-8") as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def start_coordinator(self) -> None:
        args = self.args
        command = [sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", self.data_dir, "--heartbeat", str(args.heartbeat),
                   "--alive-timeout", str(args.alive_timeout), "--frame-fail-workers", str(args.frame_fail_workers),
                   "--bad-worker-failures", str(args.frame_fail_workers), "--http-threads", str(args.http_threads)]
        self.coordinator = Child("coordinator", "coordinator", command,
                                 os.path.join(self.logs, "coordinator.log"), self.env())
        self.coordinator.start()
        deadline = time.monotonic() + 60
        while True:
            if not self.coordinator.running:
                raise SoakError("the coordinator exited at start:\n" + self.coordinator.log_text()[-3000:])
            try:
                if self.api.call("GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SoakError("the coordinator did not answer /health within 60 s")
            time.sleep(0.2)
        self.api.token = self.token("admin")
        self.submit_token = self.token("artist") or self.api.token

    def start_workers(self, blender: str, version: str) -> None:
        args = self.args
        worker_env = self.env(self.token("worker"))
        for number in range(1, args.real_workers + 1):
            name = f"real-{number}"
            command = [sys.executable, "-m", "renderq", "worker", "--coordinator", self.url, "--name", name,
                       "--threads", "1", "--work-dir", os.path.join(self.root, f"work-{name}"), "--blender", blender]
            child = Child(name, "real", command, os.path.join(self.logs, f"{name}.log"), worker_env)
            child.start()
            self.real.append(child)
        # -S: the simulated worker needs only the standard library; skipping site starts it faster.
        for number in range(1, args.sim_workers + 1):
            name = f"sim-{number:03d}"
            command = [sys.executable, "-S", SIMWORKER, "--coordinator", self.url, "--name", name,
                       "--acks", os.path.join(self.acks, f"{name}.jsonl"), "--frame-min", str(args.frame_min),
                       "--frame-max", str(args.frame_max), "--fail-rate", str(args.fail_rate),
                       "--poll", str(args.poll), "--blender-version", version,
                       "--max-seconds", str(args.duration + args.drain_timeout + 600),
                       "--seed", str(self.random.randrange(1 << 30))]
            child = Child(name, "sim", command, os.path.join(self.logs, f"{name}.log"), worker_env)
            child.start()
            self.sims.append(child)
            if number % 20 == 0:
                time.sleep(0.5)  # a gentle ramp: hundreds of interpreters starting at once starve the coordinator

    def upload_scene(self, blend: str) -> None:
        with open(blend, "rb") as handle:
            status, answer = self.api.call("POST", "/upload_blend?filename=soak.blend", raw=handle.read(),
                                           token=self.submit_token)
        if status != 200:
            raise SoakError(f"uploading the scene failed: HTTP {status} {answer}")
        self.blend_sha256 = answer["sha256"]

    # -- during the run ---------------------------------------------------------------------------------------------

    def open_tasks(self) -> list[dict]:
        tasks = []
        for status in ("queued", "running"):
            code, answer = self.api.call("GET", f"/tasks?status={status}")
            if code != 200:
                raise SoakError(f"GET /tasks answered HTTP {code}: {answer}")
            tasks.extend(answer["tasks"])
        return tasks

    def keep_work_waiting(self) -> int:
        """Submit tasks until enough frames wait; returns the frames waiting.

        Hundreds of simulated workers empty a task within seconds, so a real worker would rarely render two frames
        of one task in a row; one task at a time is therefore assigned to the real workers alone.
        """
        tasks = self.open_tasks()
        waiting = sum(t["progress"]["queued"] for t in tasks)
        real_names = sorted(c.name for c in self.real)
        if self.args.real_task_frames and real_names and not any(t["workers"] for t in tasks):
            self.submit(self.args.real_task_frames, real_names)
        while waiting < self.args.queue_frames:
            frames = self.random.randint(self.args.task_frames_min, self.args.task_frames_max)
            self.submit(frames, [], priority=self.random.choice((0, 0, 0, 1)))
            waiting += frames
        return waiting

    def submit(self, frames: int, workers: list[str], priority: int = 0) -> None:
        body = {"name": f"soak-{len(self.counts.submitted) + 1:04d}", "blend_sha256": self.blend_sha256,
                "blend_filename": "soak.blend", "frame_start": 1, "frame_end": frames, "priority": priority,
                "workers": workers, "submitted_by": "soak"}
        status, answer = self.api.call("POST", "/submit_task", body, token=self.submit_token)
        if status != 201:
            raise SoakError(f"submitting a task failed: HTTP {status} {answer}")
        self.counts.submitted.append(answer["task_id"])

    def sample(self) -> None:
        """Check that the coordinator lives; note its memory and how long it takes to answer /health."""
        if not self.coordinator.running:
            raise SoakError("the coordinator died:\n" + self.coordinator.log_text()[-3000:])
        self.counts.max_coordinator_rss = max(self.counts.max_coordinator_rss, rss_bytes(self.coordinator.pid))
        started = time.monotonic()
        self.api.call("GET", "/health", timeout=60)
        self.counts.max_health_seconds = max(self.counts.max_health_seconds, time.monotonic() - started)

    def kill(self, child: Child) -> None:
        self.note("kill", child, f"pid {child.pid}")
        self.counts.blender_survivors += len(child.kill())
        if child.kind == "real":
            self.counts.kills_real += 1
        else:
            self.counts.kills_sim += 1
        child.restart_at = time.monotonic() + self.random.uniform(self.args.restart_min, self.args.restart_max)

    def freeze(self, child: Child) -> None:
        # Longer than the alive timeout: the coordinator gives its frame to another worker meanwhile.
        seconds = self.args.alive_timeout + self.random.uniform(1.0, 3.0)
        self.note("freeze", child, f"for {seconds:.1f} s")
        child.freeze(seconds)
        if child.kind == "real":
            self.counts.stalls_real += 1
        else:
            self.counts.stalls_sim += 1

    def tend(self) -> None:
        """Restart killed workers whose delay passed; let frozen ones go on when their time is up.

        A worker that exited without being killed is a finding (it crashed, or was refused): it is noted and
        restarted.
        """
        now = time.monotonic()
        for child in self.real + self.sims:
            if child.restart_at is None and child.popen is not None and not child.running:
                self.counts.unexpected_exits.append(f"{child.name} exited by itself with code "
                                                    f"{child.popen.returncode}; see {child.log_path}")
                self.note("exited", child, f"code {child.popen.returncode}")
                child.restart_at = now
            if child.restart_at is not None and now >= child.restart_at:
                self.restart(child)
            if child.thaw_at is not None and now >= child.thaw_at:
                self.thaw(child)

    def restart(self, child: Child) -> None:
        child.start()
        self.note("restart", child, f"pid {child.pid}")
        self.counts.restarts += 1

    def thaw(self, child: Child) -> None:
        self.note("thaw", child)
        child.thaw()

    def healthy(self, children: list[Child]) -> list[Child]:
        """Running, not frozen, not waiting for a restart: fair game for the chaos."""
        return [c for c in children if c.running and c.thaw_at is None and c.restart_at is None]

    def run_chaos(self) -> None:
        """Submit, kill, freeze and restart until --duration is over."""
        args = self.args
        end = time.monotonic() + args.duration
        now = time.monotonic()
        jitter = self.random.uniform
        next_sim_kill = now + jitter(0.5, 1.5) * args.kill_every
        next_sim_stall = now + jitter(0.5, 1.5) * args.stall_every
        next_real = now + jitter(0.5, 1.0) * args.real_chaos_every
        next_report = now + 10
        while (now := time.monotonic()) < end:
            self.sample()
            waiting = self.keep_work_waiting()
            self.tend()
            if args.kill_every and now >= next_sim_kill:
                victims = self.healthy(self.sims)
                if victims:
                    self.kill(self.random.choice(victims))
                next_sim_kill = now + jitter(0.5, 1.5) * args.kill_every
            if args.stall_every and now >= next_sim_stall:
                victims = self.healthy(self.sims)
                if victims:
                    self.freeze(self.random.choice(victims))
                next_sim_stall = now + jitter(0.5, 1.5) * args.stall_every
            if args.real_chaos_every and now >= next_real:
                victims = self.healthy(self.real)
                if victims:
                    victim = self.random.choice(victims)
                    # Mostly kills (the first hit always, so a short run has one); now and then a freeze, after
                    # which the worker finds its lease revoked.
                    if self.counts.kills_real == 0 or self.random.random() < 0.7:
                        self.kill(victim)
                    else:
                        self.freeze(victim)
                next_real = now + jitter(0.5, 1.5) * args.real_chaos_every
            self.more_chaos(now)
            if now >= next_report:
                self.progress(f"waiting frames {waiting}")
                next_report = now + 10
            time.sleep(0.5)

    def record_more(self, results: Results) -> None:
        """Figures beyond record()'s (the cluster soak's coordinator kills); none for one coordinator."""

    def more_chaos(self, now: float) -> None:
        """Chaos beyond the workers' (the cluster soak kills coordinators); none for one coordinator."""

    def coordinator_logs(self) -> str:
        """What the coordinator logged (every coordinator, in the cluster soak)."""
        return self.coordinator.log_text() if self.coordinator is not None else ""

    def stop_coordinators(self) -> None:
        """Stop the coordinator (a clean shutdown, then SIGKILL if it lingers)."""
        if self.coordinator is not None:
            self.coordinator.stop(signal.SIGTERM)
            self.coordinator.wait_stopped(time.monotonic() + 10)

    def progress(self, text: str) -> None:
        c = self.counts
        print(f"[{time.monotonic() - self.started:6.0f} s] tasks {len(c.submitted)}, {text}, "
              f"kills {c.kills_real} real / {c.kills_sim} sim, stalls {c.stalls_real}/{c.stalls_sim}, "
              f"restarts {c.restarts}, coordinator RSS {c.max_coordinator_rss / 2**20:.0f} MiB", flush=True)

    def drain(self) -> bool:
        """Stop the chaos: every worker back at work, then wait for every task to end; False on timeout."""
        for child in self.real + self.sims:
            if child.thaw_at is not None:
                self.thaw(child)
            if child.restart_at is not None:
                self.restart(child)
        deadline = time.monotonic() + self.args.drain_timeout
        next_report = time.monotonic() + 10
        while True:
            self.sample()
            self.tend()
            left = self.open_tasks()
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            if time.monotonic() >= next_report:
                frames_left = sum(t["progress"]["total"] - t["progress"]["done"] for t in left)
                self.progress(f"draining: {len(left)} tasks with {frames_left} frames to go")
                next_report = time.monotonic() + 10
            time.sleep(0.5)

    # -- the checks -------------------------------------------------------------------------------------------------

    def check(self) -> Findings:
        """Compare the coordinator's view with the workers' acknowledgements."""
        frames_by_worker: collections.Counter[str] = collections.Counter()
        done: dict[tuple[int, int], dict] = {}
        lost: list[str] = []
        total_frames = 0
        for task_id in self.counts.submitted:
            status, task = self.api.call("GET", f"/task?task_id={task_id}", timeout=60)
            if status != 200:
                raise SoakError(f"GET /task?task_id={task_id} answered HTTP {status}: {task}")
            for frame in task["frames"]:
                total_frames += 1
                key = (task_id, frame["frame"])
                if frame["status"] != "done" or not frame["output_sha256"] or not frame["output_size"]:
                    lost.append(f"task {task_id} frame {frame['frame']}: {frame['status']}"
                                f"{'' if frame['output_sha256'] else ', no output'}")
                    continue
                done[key] = frame
                frames_by_worker[frame["worker"]] += 1

        acks, torn = self.read_acks()
        acked: dict[tuple[int, int], list[dict]] = collections.defaultdict(list)
        for ack in acks:
            acked[(ack["task"], ack["frame"])].append(ack)
        duplicates = sum(len(group) - 1 for group in acked.values() if len(group) > 1)
        mismatches = []
        for key, group in acked.items():
            frame = done.get(key)
            for ack in group:
                if frame is None:
                    mismatches.append(f"task {key[0]} frame {key[1]} acknowledged to {ack['worker']} but not done")
                elif frame["worker"] != ack["worker"]:
                    mismatches.append(f"task {key[0]} frame {key[1]} acknowledged to {ack['worker']} but done by "
                                      f"{frame['worker']}")
                elif ack.get("lease") and frame["output_sha256"] != _sha256(frame_png(key[0], key[1], ack["lease"])):
                    mismatches.append(f"task {key[0]} frame {key[1]}: the stored file is not the one "
                                      f"{ack['worker']} uploaded under its acknowledged lease")

        status, answer = self.api.call("GET", "/list_workers")
        counters = {w["name"]: w["frames_done"] for w in answer["workers"]}
        counter_mismatches = [f"{name}: frames_done {count}, but {frames_by_worker.get(name, 0)} frames done by it"
                              for name, count in sorted(counters.items()) if count != frames_by_worker.get(name, 0)]
        if sum(counters.values()) != len(done):
            counter_mismatches.append(f"the workers' frames_done add up to {sum(counters.values())}, "
                                      f"the tasks have {len(done)} frames done")

        logs, unexplained, slowest = self.scan_logs()
        real_names = {c.name for c in self.real}
        by_real = sum(n for name, n in frames_by_worker.items() if name in real_names)
        acked_done = {key for key, group in acked.items() if any(a["worker"] not in real_names for a in group)}
        unacked_sim = sum(1 for key, frame in done.items() if frame["worker"] not in real_names
                          and key not in acked_done)
        return Findings(
            numbers={
                "tasks": len(self.counts.submitted),
                "frames": total_frames,
                "frames by real workers": by_real,
                "frames by simulated workers": len(done) - by_real,
                "frames lost": len(lost),
                "duplicates": duplicates,
                "acknowledgements the coordinator contradicts": len(mismatches),
                "frames_done counter mismatches": len(counter_mismatches),
                **logs,
                "done but not acknowledged": unacked_sim,
                "torn ack lines": torn,
                "slowest answer to a simulated worker": round(slowest[0], 2),
            },
            slowest_request=slowest[1],
            details=lost[:20] + mismatches[:20] + counter_mismatches[:20] + unexplained[:20],
        )

    def scan_logs(self) -> tuple[dict[str, int], list[str], tuple[float, str]]:
        """What the logs show: counts by name, the 409 refusals no freeze explains, and the slowest answer to a
        simulated worker (seconds, request) not explained by a freeze."""
        refusals = 0
        unexplained: list[str] = []
        for child in self.sims:
            text = child.log_text()
            claimed_at = {m[2]: float(m[1]) for m in CLAIMED.finditer(text)}
            for match in REFUSED.finditer(text):
                refusals += 1
                refused_at, lease = float(match[1]), match[3]
                # A freeze between the claim and the refusal explains a lost lease; anything else is worth a look.
                if not child.was_frozen(claimed_at.get(lease, refused_at), refused_at):
                    unexplained.append(f"{child.name}: {match[2]}")
        refusals += sum(len(REAL_REFUSED.findall(c.log_text())) for c in self.real)
        revokes = sum(c.log_text().count(" revoked ") for c in self.sims)
        revokes += sum(c.log_text().count("revoked by the coordinator") for c in self.real)
        slow = [(float(m[3]), m[2]) for c in self.sims for m in SLOW.finditer(c.log_text())
                if not c.was_frozen(float(m[1]) - float(m[3]), float(m[1]))]
        counts = {
            "server errors (5xx)": sum(c.log_text().count(" server_error ") for c in self.sims),
            "coordinator tracebacks": self.coordinator_logs().count(TRACEBACK),
            "worker tracebacks": sum(c.log_text().count(TRACEBACK) for c in self.real + self.sims),
            "409 refusals seen": refusals,
            "409 refusals of simulated workers that were not frozen": len(unexplained),
            "leases revoked by heartbeat": revokes,
            "requests of simulated workers taking 2 s or more": len(slow),
            "coordinator request queue warnings": self.coordinator_logs().count("Task queue depth"),
        }
        return counts, unexplained, max(slow, default=(0.0, ""))

    def read_acks(self) -> tuple[list[dict], int]:
        """Every acknowledged done report: the simulated workers' ack files and the real workers' logs."""
        acks: list[dict] = []
        torn = 0
        for child in self.sims:
            path = os.path.join(self.acks, f"{child.name}.jsonl")
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        acks.append(json.loads(line))
                    except ValueError:
                        torn += 1  # a SIGKILL in the middle of a write: the report was never acted on
        for child in self.real:
            for line in child.log_text().splitlines():
                match = REAL_DONE.search(line)
                if match:
                    acks.append({"task": int(match[1]), "frame": int(match[2]), "worker": child.name})
        return acks, torn

    # -- tear-down --------------------------------------------------------------------------------------------------

    def stop_workers(self) -> None:
        """Stop every worker this run started; they give back the frames they hold."""
        workers = self.real + self.sims
        for child in workers:
            child.restart_at = None
            child.stop(signal.SIGINT if child.kind == "real" else signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in workers:
            child.wait_stopped(deadline)

    def stop_all(self) -> None:
        """Stop every process this run started: workers first, then the coordinator."""
        self.stop_workers()
        self.stop_coordinators()
        self.chaos_log.close()

    def sim_rss(self) -> int:
        """Mean resident memory of the running simulated workers."""
        sizes = [rss_bytes(c.pid) for c in self.sims if c.running]
        sizes = [s for s in sizes if s]
        return sum(sizes) // len(sizes) if sizes else 0


class SoakError(Exception):
    """The run could not go on (the coordinator died, refused a submission, ...)."""


def _interrupt(signum: int, frame: object) -> None:
    """A SIGTERM cleans up like Ctrl-C does."""
    raise KeyboardInterrupt


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Not quick=args.quick: the soak's targets are counts that must be zero at any size, so they are always enforced.
    results = Results("soak cluster" if args.cluster else "soak")
    try:
        blender = find_blender(args.blender)
        version = blender_version(blender)
    except SessionError as error:
        results.fail(f"cannot use Blender: {error}")
        return results.finish(args.json_out)
    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="renderq-soak-")
    os.makedirs(root, exist_ok=True)
    if args.cluster:
        from soak_cluster import ClusterSoak

        soak: Soak = ClusterSoak(args, root)
    else:
        soak = Soak(args, root)
    # Ctrl-C and SIGTERM both stop the run and clean up, even when started with SIGINT ignored (in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    findings: Findings | None = None
    sim_rss = 0
    try:
        print(f"soak: {args.sim_workers} simulated + {args.real_workers} real workers, {args.duration:g} s of chaos, "
              f"folder {root}", flush=True)
        blend = make_scene(os.path.join(root, "soak.blend"), blender=blender, frames=args.task_frames_max,
                           resolution=(64, 36), samples=4)
        soak.start_coordinator()
        soak.upload_scene(blend)
        soak.keep_work_waiting()
        soak.start_workers(blender, version)
        soak.progress("all workers started")
        soak.run_chaos()
        sim_rss = soak.sim_rss()
        soak.progress("chaos over; letting every task finish")
        if not soak.drain():
            print(f"soak: tasks are still open {args.drain_timeout:g} s after the chaos stopped", flush=True)
        # The workers' ack files and logs are complete only once they stopped; the coordinator answers the checks.
        soak.stop_workers()
        findings = soak.check()
    except SoakError as error:
        results.fail(str(error))
    except KeyboardInterrupt:
        results.fail("interrupted")
    finally:
        # Nothing may interrupt the clean-up: it is what stops the hundreds of processes started.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if findings is not None:
        record(results, findings, soak.counts, time.monotonic() - soak.started, sim_rss)
        soak.record_more(results)
    code = results.finish(args.json_out)
    for line in (findings.details if findings else []) + soak.counts.unexpected_exits[:20]:
        print(f"  {line}")
    print(f"soak: {'PASSED' if code == 0 else 'FAILED'}")
    if not args.keep and code == 0:
        shutil.rmtree(root, ignore_errors=True)
    elif not args.keep:
        print(f"soak: the run's folder is kept for inspection: {root}")
    return code


if __name__ == "__main__":
    # Through the module `soak`, the one soak_cluster.py imports: one SoakError class, which main() catches.
    import soak

    sys.exit(soak.main())
