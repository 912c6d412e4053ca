"""What an admin's Prometheus scrapes from GET /metrics: the farm's state, its rates and this coordinator's health.

The farm's state (workers alive and ON, frames by status) is read from the store at each scrape, so every
coordinator of a cluster reports the same farm. The rates (requests and their latency by endpoint, frames handed
out and finished, lease expiries) and the errors (database, object store) are this process's own counters: sum
them over the coordinators. One registry per app, not the library's global one, so that several apps in one
process (the tests) do not share counters.

A coordinator serving with --processes answers each scrape from whichever process the kernel gave the connection:
there each process keeps its counters in a file of a folder they share (the library's multiprocess mode, see
count_across_processes), and a scrape sums the files, so every scrape sees the whole coordinator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from renderq.model import FrameStatus

from .scheduler import Scheduler

__all__ = ["CONTENT_TYPE", "Metrics", "count_across_processes"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets in seconds: the workers' calls are answered in milliseconds, a target is 100 ms, uploads take longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


# The library's setting naming the folder of multiprocess mode's files.
_SHARED_FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Set in a serving process of --processes by count_across_processes.
_shared_folder: str | None = None


def count_across_processes(folder: str, index: int) -> None:
    """Make this serving process (number `index` of --processes) keep the counters of every Metrics made from now
    on in `folder`, which all serving processes share and which starts empty. Files are named by index, not process
    id: a serving process started again in place of a dead one goes on from its counts, so none goes backwards."""
    global _shared_folder
    _shared_folder = os.environ[_SHARED_FOLDER_VARIABLE] = folder
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: f"serving{index}")


class Metrics:
    """The coordinator's counters and the collector of the farm's state."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "renderq_request_seconds", "Seconds from a request's arrival to the end of its answer, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.frames_dispatched = Counter(
            "renderq_frames_dispatched", "Frames handed to workers (leases given out) by this coordinator",
            registry=self.registry)
        self.frames_finished = Counter(
            "renderq_frames_finished", "Frames whose rendered file and done report this coordinator took",
            registry=self.registry)
        self.reports = Counter(
            "renderq_frame_reports", "Workers' reports about a frame (rendering, failed, released), by status",
            ["status"], registry=self.registry)
        self.lease_expiries = Counter(
            "renderq_lease_expiries", "Frames queued again because their worker stopped renewing the lease",
            registry=self.registry)
        self.errors = Counter(
            "renderq_errors", "Failures of what the coordinator stands on, by kind (database, object_store)",
            ["kind"], registry=self.registry)
        self.store_turns = Histogram(
            "renderq_store_turn_seconds", "Seconds each turn of the workers' calls held the store's write turn, its "
            "COMMIT included: one thread runs the turns, so their sum over time is how busy it is",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_turn_calls = Counter(
            "renderq_store_turn_calls", "Workers' calls applied in turns (claims, heartbeats, finishes, reports)",
            registry=self.registry)
        self.store_turn_commit_seconds = Counter(
            "renderq_store_turn_commit_seconds",
            "Seconds of the turns spent in their COMMIT (on SQLite without its fsync, which another thread makes "
            "while the next turn runs)",
            registry=self.registry)
        if _shared_folder is not None:
            # Every process's counters from the shared files, not this process's own registry.
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=_shared_folder)
        else:
            self.exposed = self.registry
        self.exposed.register(FarmCollector(scheduler))
        scheduler.count = self.count

    def count(self, event: str, number: int) -> None:
        """The scheduler's events (see Scheduler.count) into the counters."""
        if number <= 0:
            return
        if event == "dispatched":
            self.frames_dispatched.inc(number)
        elif event == "finished":
            self.frames_finished.inc(number)
        elif event == "expired":
            self.lease_expiries.inc(number)
        elif event.startswith("report:"):
            self.reports.labels(event.partition(":")[2]).inc(number)

    def observe_request(self, endpoint: str | None, started: float) -> None:
        """One request to `endpoint` (None: no route matched, or the request was refused before its route was
        known) ended; `started` is its time.perf_counter()."""
        self.requests.labels(endpoint or "unmatched").observe(time.perf_counter() - started)

    def observe_turn(self, calls: int, seconds: float, commit_seconds: float) -> None:
        """One turn of the workers' calls (coordinator/batcher.py) ended."""
        self.store_turns.observe(seconds)
        self.store_turn_calls.inc(calls)
        self.store_turn_commit_seconds.inc(commit_seconds)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.exposed)


class FarmCollector(Collector):
    """The farm's state as gauges, read from the store at each scrape."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []  # no reads of the store when the collector is registered

    def collect(self) -> Iterator[Metric]:
        workers = self._scheduler.list_workers()
        gauge = GaugeMetricFamily("renderq_workers", "Registered workers, by state", labels=["state"])
        gauge.add_metric(["registered"], len(workers))
        gauge.add_metric(["alive"], sum(1 for worker in workers if worker["alive"]))
        gauge.add_metric(["alive_and_on"], sum(1 for worker in workers if worker["alive"] and worker["enabled"]))
        yield gauge
        frames = GaugeMetricFamily("renderq_frames", "Frames of every task, by status", labels=["status"])
        counts = self._scheduler.store.frame_totals()
        for status in FrameStatus:
            frames.add_metric([status.value], counts.get(status.value, 0))
        yield frames
        webhooks = GaugeMetricFamily("renderq_webhook_deliveries", "Webhook deliveries of the last week, by state "
                                     "(pending, delivered, given_up)", labels=["state"])
        for state, number in self._scheduler.store.notification_counts().items():
            webhooks.add_metric([state], number)
        yield webhooks
