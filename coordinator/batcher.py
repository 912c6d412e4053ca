"""One thread that applies the workers' frequent calls (claims, heartbeats, finishes) to the store in turns.

Each turn takes every call queued since the last one (after a 2 ms wait for more when only a few are queued) and
runs them in one transaction (each in its own savepoint, so one that fails undoes only itself): one COMMIT, and one
fsync, for all of them. Only after that COMMIT is on disk is each call's answer handed back to the event loop, in
one wake-up for the whole turn, so no answer promises a write that a crash could still lose. Compared with a
thread per request, the calls pay no thread hand-off each and never wait for a lock: under load the turns simply
grow.

On SQLite the fsync is a second thread's (the store's make_durable): while the disk writes one turn's COMMIT, the
next turn already runs, and one fsync may cover several turns. In the turn thread the fsync took about 40 % of
its time at 2,500 simulated workers, and every call queued behind a turn waited for it too.

With coordinators sharing a PostgreSQL database, a call after the first of a turn that would wait for another
coordinator's row lock gives way (the store undoes it, see Store.batch) and runs first in the next turn, where it
may wait: so two coordinators' turns never wait for each other in a deadlock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .store import Store
from .store.task_writes import settled

log = logging.getLogger(__name__)

Result = TypeVar("Result")
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
# A queued call: its work, its future, and how many times it gave way to another coordinator's locks.
_Call = tuple[Callable[[], Any], "asyncio.Future[Any]", int]

# The most calls one turn runs: a turn's transaction holds the write lock, and other writers (submits, the page's
# changes) wait meanwhile.
MAX_CALLS_PER_TURN = 256
# A turn that would start with fewer calls than this first waits GATHER_SECONDS for more: every COMMIT writes each
# page it changed to the WAL, so larger turns write fewer pages a call (at 5,000 simulated workers, 0.58-0.70 ms of
# coordinator CPU per request instead of 0.71-0.78, for 2 ms more on each answer).
GATHER_BELOW_CALLS = 16
GATHER_SECONDS = 0.002
# A call that gave way this many times is answered with the error (each later try goes first in its turn).
MAX_GIVE_WAYS = 5

# Told of each turn: its calls, its seconds from the start of its transaction to the end of its COMMIT, and the
# COMMIT's part of them. A coordinator at its limit is one whose turns take all of the thread's time.
TurnObserver = Callable[[int, float, float], None]


class Batcher:
    """Runs store calls for the event loop (see the module docstring)."""

    def __init__(self, store: Store, name: str = "store-turns", on_turn: TurnObserver | None = None) -> None:
        self._store = store
        self._on_turn = on_turn
        self._pending: collections.deque[_Call] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # Turns committed but maybe not yet on disk: (their batch number, their outcomes), for the sync thread.
        self._unsynced: list[tuple[int, list[_Outcome]]] = []
        self._unsynced_wake = threading.Condition()
        if store.engine.syncs_after_commit:
            threading.Thread(target=self._sync_turns, name=name + "-sync", daemon=True).start()

    async def call(self, work: Callable[[], Result]) -> Result:
        """Run `work` (which uses the store) in the next turn; its result once that turn is committed and on disk."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._closing:
                raise RuntimeError("the coordinator is stopping")
            self._pending.append((work, future, 0))
            self._wake.notify()
        return await future

    def close(self) -> None:
        """Stop after the turn in progress; calls still queued are not run (their clients get no answer)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        with self._unsynced_wake:
            self._unsynced_wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                few = len(self._pending) < GATHER_BELOW_CALLS
            if few:
                time.sleep(GATHER_SECONDS)
            with self._wake:
                if self._closing:
                    return
                turn = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_CALLS_PER_TURN))]
            outcomes, gave_way, number = self._apply(turn)
            if gave_way:
                with self._wake:
                    self._pending.extendleft(reversed(gave_way))
            if not outcomes:
                continue
            if self._store.engine.syncs_after_commit:
                with self._unsynced_wake:
                    self._unsynced.append((number, outcomes))
                    self._unsynced_wake.notify()
            elif not _answer(outcomes):
                return

    def _sync_turns(self) -> None:
        """The sync thread: put the committed turns on disk, then answer their calls."""
        while True:
            with self._unsynced_wake:
                while not self._unsynced and not self._closing:
                    self._unsynced_wake.wait()
                if self._closing:
                    return
                turns, self._unsynced = self._unsynced, []
            outcomes = [outcome for _, turn_outcomes in turns for outcome in turn_outcomes]
            try:
                self._store.make_durable(max(number for number, _ in turns))
            except Exception as problem:  # noqa: BLE001 - the fsync failed: no answer may promise these writes
                log.warning("%d worker calls were committed but could not be put on disk: %s", len(outcomes), problem)
                outcomes = [(future, None, problem) for future, _, _ in outcomes]
            if not _answer(outcomes):
                return

    def _apply(self, turn: list[_Call]) -> tuple[list[_Outcome], list[_Call], int]:
        """Run the turn's calls in one transaction: their outcomes, the calls that gave way (to run again), and the
        number of the batch they were committed in (on disk only once the store's make_durable says so)."""
        outcomes: list[_Outcome] = []
        gave_way: list[_Call] = []
        started = time.perf_counter()
        try:
            with self._store.batch(sync=False):
                for work, future, give_ways in turn:
                    try:
                        outcomes.append((future, work(), None))
                    except Exception as problem:  # noqa: BLE001 - it is the answer of that one call
                        if self._store.engine.is_lock_conflict(problem) and give_ways < MAX_GIVE_WAYS:
                            gave_way.append((work, future, give_ways + 1))
                        else:
                            outcomes.append((future, None, problem))
                ran = time.perf_counter()
        except Exception as problem:  # noqa: BLE001 - the COMMIT failed: no call of the turn happened
            log.warning("a turn of %d worker calls could not be committed: %s", len(turn), problem)
            return [(future, None, problem) for _, future, _ in turn], [], 0
        if self._on_turn is not None:
            ended = time.perf_counter()
            self._on_turn(len(turn), ended - started, ended - ran)
        # The log sizes the turn's answers promise were written at its end (store/task_writes.py).
        outcomes = [(future, settled(result), problem) for future, result, problem in outcomes]
        return outcomes, gave_way, self._store.last_batch()


def _answer(outcomes: list[_Outcome]) -> bool:
    """Hand the outcomes to their event loop; False when it is closed (the server is gone, and its clients)."""
    try:
        outcomes[0][0].get_loop().call_soon_threadsafe(_settle, outcomes)
    except RuntimeError:
        return False
    return True


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: hand each call its answer (a client that went away meanwhile is skipped)."""
    for future, result, problem in outcomes:
        if future.done():
            continue
        if problem is not None:
            future.set_exception(problem)
        else:
            future.set_result(result)
