"""The scheduler's knobs (leases, liveness, failures, timeouts, idle polling), taken from the coordinator's Config.

A module of its own so that the scheduler and its read side (coordinator.reading) both use it without importing
each other.
"""

from __future__ import annotations

import dataclasses

__all__ = ["LEASE_HEARTBEATS", "Policy"]

# A lease of a large farm lives this many of its heartbeat intervals: a worker may miss a few before losing it.
LEASE_HEARTBEATS = 4.0


@dataclasses.dataclass
class Policy:
    """The scheduler's knobs. A field named as one of Config's comes from it (see from_config); Config's comments
    say what each means."""

    lease_seconds: float = 15.0
    alive_timeout: float = 15.0
    heartbeat_seconds: float = 2.0
    frame_fail_workers: int = 3
    bad_worker_failures: int = 3
    frame_timeout: float = 0.0
    no_progress_timeout: float = 600.0
    # Idle workers are told to ask for work so that all of them together ask about this often a second, each at
    # most every idle_poll_limits[1] and at least every idle_poll_limits[0] seconds. A new task waits for the first
    # of them to ask, about 1 / idle_claims_per_second seconds whatever the farm's size, and a large idle farm does
    # not flood the coordinator.
    idle_claims_per_second: float = 50.0
    idle_poll_limits: tuple[float, float] = (0.1, 30.0)
    # Heartbeats of the whole farm a second that the coordinator asks for at most: a large farm is told to beat
    # less often (up to heartbeat_limit seconds apart), and its leases grow with the interval so that a lease
    # always spans LEASE_HEARTBEATS heartbeats. A small farm keeps heartbeat_seconds and lease_seconds.
    heartbeats_per_second: float = 250.0
    heartbeat_limit: float = 20.0
    # What a task's estimate prices its render hours at (0: not said): money per worker-hour, and watts per worker.
    cost_per_worker_hour: float = 0.0
    cost_currency: str = ""
    watts_per_worker: float = 0.0

    def liveness(self, live_workers: int) -> tuple[float, float]:
        """(seconds between a worker's heartbeats, seconds a lease lives unrenewed) for a farm of that many live
        workers; the lease is also how long a silent worker still counts as alive."""
        interval = min(max(self.heartbeat_seconds, live_workers / self.heartbeats_per_second),
                       max(self.heartbeat_seconds, self.heartbeat_limit))
        return interval, max(self.lease_seconds, LEASE_HEARTBEATS * interval)

    @classmethod
    def from_config(cls, config: object) -> Policy:
        """The policy of a coordinator's Config: every field Config also has is taken from it."""
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)
                      if hasattr(config, field.name)})
