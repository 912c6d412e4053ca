"""The soak in cluster mode: `soak.py --cluster`, or this script (the same flags; --cluster is implied).

A throwaway PostgreSQL and SeaweedFS (S3) are started as the tests start them (benchmarks/cluster_services.py), then
--coordinators coordinators (3 by default), each with its own data dir, on that one database and bucket. The real
and simulated workers get the coordinators' addresses as one comma-separated list and move to the next when one
stops answering. Besides the soak's worker kills and freezes, a random coordinator is SIGKILLed now and then
(never the last one running) and started again a few seconds later. The soak itself talks to whichever coordinator
is up. The checks are the soak's (benchmarks/soak.py): every frame done once, with the file of its acknowledged
lease, nothing lost or doubled; the coordinators' logs together must hold no traceback.

    python benchmarks/soak_cluster.py [--duration 600] [--sim-workers 200] [--coordinators 3] [--quick]
"""

from __future__ import annotations

import contextlib
import argparse
import os
import signal
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cluster_services import Services, missing
from common import Results
from harness import Api, free_port
from soak import Soak, SoakError, rss_bytes
from soak_processes import Child

# How long the soak's own calls keep trying the coordinators before the run is given up.
API_PATIENCE_SECONDS = 60.0


class FailoverApi:
    """The soak's API client over the cluster: each call goes to a coordinator that runs, the next on no answer."""

    def __init__(self, soak: ClusterSoak) -> None:
        self.soak = soak
        self.token: str | None = None

    def call(self, method: str, path: str, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        """harness.Api.call on the first running coordinator that answers."""
        deadline = time.monotonic() + API_PATIENCE_SECONDS
        problem: Exception | None = None
        while time.monotonic() < deadline:
            for child, api in zip(self.soak.coordinators, self.soak.apis, strict=True):
                if not child.running or child.restart_at is not None:
                    continue
                api.token = self.token
                try:
                    return api.call(method, path, *args, **kwargs)
                except OSError as error:  # not listening yet, or killed meanwhile: the next one
                    problem = error
            time.sleep(0.5)
        raise SoakError(f"no coordinator answered {method} {path} within {API_PATIENCE_SECONDS:g} s: {problem}")


class ClusterSoak(Soak):
    """The soak over several coordinators on PostgreSQL and S3, with coordinator kills among the chaos."""

    def __init__(self, args: argparse.Namespace, root: str) -> None:
        super().__init__(args, root)
        self.services = Services(os.path.join(root, "services"), s3=True)
        self.ports = [free_port() for _ in range(args.coordinators)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        # Workers get every address as one list, the way an admin configures them.
        self.url = ",".join(self.urls)
        self.apis = [Api(url) for url in self.urls]
        self.api = FailoverApi(self)  # type: ignore[assignment]  # the same call() as harness.Api
        self.coordinators: list[Child] = []
        self.coordinator_kills = 0
        self.crashes: list[str] = []
        self.next_coordinator_kill = 0.0

    def token(self, role: str) -> str | None:
        return self.services.tokens[role]

    def start_coordinator(self) -> None:
        """Start PostgreSQL, SeaweedFS and the coordinators on them; wait until each answers /health."""
        why = missing(s3=True)
        if why:
            raise SoakError(f"cluster mode cannot run here: {why}")
        self.services.start()
        args = self.args
        env = {**self.env(), **self.services.coordinator_env()}
        for number, port in enumerate(self.ports, 1):
            data_dir = os.path.join(self.root, f"coordinator-{number}-data")
            command = [sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", str(port),
                       "--data-dir", data_dir, *self.services.coordinator_args("soak"),
                       "--heartbeat", str(args.heartbeat), "--alive-timeout", str(args.alive_timeout),
                       "--frame-fail-workers", str(args.frame_fail_workers),
                       "--bad-worker-failures", str(args.frame_fail_workers), "--http-threads", str(args.http_threads)]
            child = Child(f"coordinator-{number}", "coordinator", command,
                          os.path.join(self.logs, f"coordinator-{number}.log"), env)
            child.start()
            self.coordinators.append(child)
        self.coordinator = self.coordinators[0]
        for child, api in zip(self.coordinators, self.apis, strict=True):
            self.wait_healthy(child, api)
        self.api.token = self.token("admin")
        self.submit_token = self.token("artist")
        self.next_coordinator_kill = time.monotonic() + self.random.uniform(0.5, 1.5) * args.coordinator_kill_every

    def wait_healthy(self, child: Child, api: Api, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if not child.running:
                raise SoakError(f"{child.name} exited at start:\n" + child.log_text()[-3000:])
            with contextlib.suppress(OSError):  # not listening yet
                if api.call("GET", "/health", timeout=2)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise SoakError(f"{child.name} did not answer /health within {seconds:g} s")
            time.sleep(0.2)

    def sample(self) -> None:
        """Every coordinator lives (or was killed by the chaos); note their memory and a /health answer's time."""
        for child in self.coordinators:
            if not child.running and child.restart_at is None:
                self.crashed(child)
            if child.running:
                self.counts.max_coordinator_rss = max(self.counts.max_coordinator_rss, rss_bytes(child.pid))
        started = time.monotonic()
        self.api.call("GET", "/health", timeout=60)
        self.counts.max_health_seconds = max(self.counts.max_health_seconds, time.monotonic() - started)

    def crashed(self, child: Child) -> None:
        """A coordinator exited without being killed: a finding (its log's end kept), and it is started again, so
        that the run still answers whether anything was lost."""
        code = child.popen.returncode if child.popen is not None else None
        text = child.log_text()
        last_error = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        self.crashes.append(f"{child.name} exited by itself with code {code}: {last_error[:300]}; see {child.log_path}")
        self.note("exited", child, f"code {code}")
        child.restart_at = time.monotonic() + self.args.coordinator_down_min

    def more_chaos(self, now: float) -> None:
        """Start again the coordinators whose down time passed; SIGKILL one now and then, never the last one up."""
        self.start_again_due(now)
        args = self.args
        if not args.coordinator_kill_every or now < self.next_coordinator_kill:
            return
        self.next_coordinator_kill = now + self.random.uniform(0.5, 1.5) * args.coordinator_kill_every
        up = [child for child in self.coordinators if child.running and child.restart_at is None]
        if len(up) < 2:
            return
        victim = self.random.choice(up)
        self.note("kill", victim, f"pid {victim.pid}")
        victim.kill()
        self.coordinator_kills += 1
        victim.restart_at = now + self.random.uniform(args.coordinator_down_min, args.coordinator_down_max)

    def start_again_due(self, now: float) -> None:
        for child in self.coordinators:
            if child.restart_at is not None and now >= child.restart_at:
                child.start()
                self.note("restart", child, f"pid {child.pid}")

    def drain(self) -> bool:
        """Every coordinator up again, then the soak's drain."""
        self.start_again_due(float("inf"))
        return super().drain()

    def coordinator_logs(self) -> str:
        return "\n".join(child.log_text() for child in self.coordinators)

    def stop_coordinators(self) -> None:
        """Stop the coordinators, then PostgreSQL and SeaweedFS."""
        for child in self.coordinators:
            child.restart_at = None
            child.stop(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.coordinators:
            child.wait_stopped(deadline)
        self.services.stop()

    def progress(self, text: str) -> None:
        up = sum(1 for child in self.coordinators if child.running)
        super().progress(f"{text}, coordinators up {up}/{len(self.coordinators)}, "
                         f"coordinator kills {self.coordinator_kills}")

    def record_more(self, results: Results) -> None:
        results.add("coordinators", len(self.coordinators), note="on one PostgreSQL database and one S3 bucket")
        results.add("kills of coordinators", self.coordinator_kills,
                    note=f"SIGKILL, started again {self.args.coordinator_down_min:g}-"
                    f"{self.args.coordinator_down_max:g} s later")
        results.add("coordinators that exited by themselves", len(self.crashes), target=0,
                    note="; ".join(self.crashes[:3]))
        for line in self.crashes[:20]:
            print(f"  {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """The soak with --cluster."""
    import soak

    arguments = list(sys.argv[1:] if argv is None else argv)
    return soak.main(arguments if "--cluster" in arguments else ["--cluster", *arguments])


if __name__ == "__main__":
    sys.exit(main())
