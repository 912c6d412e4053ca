"""What a task's frames left would take on the farm as it is now: wall time, render hours, and (where the admin set
a price and a power draw) money and energy.

Built on coordinator.eta's cost model (`TaskEstimator.model`): each frame's predicted cost from the exact render
times of the task's done frames (its scouts, then every frame as it finishes), each worker's speed on this task and
its time between frames. What is added here is the farm: the frames left are dealt to the live, switched-ON workers
that may take the task (the claim's rules, applied by the reader), each free once the frame of the task it holds is
done, each taking the next frame as soon as it is free. With frames of equal cost on each worker that is exact: the
wall time is the first moment by which the workers together can have finished every frame left. A worker that has
rendered no frame of the task counts at the average speed of those that have. A worker that holds no frame of the
task starts a Blender session for it first: it pays the start-up the task's first frames showed (from its first
claim to its first frame's start, and what each worker's first frame took beyond the model's prediction, the
warm-up that coordinator.eta leaves out of its model).

Plain Python, no I/O: the reader gives the model, the frames in progress, the workers and the prices.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from . import eta

# The mean predicted cost of a task's frames left is taken over at most this many of them, evenly spaced.
COST_SAMPLE = 512
# Halvings of the search for the wall time: far below a millisecond for any task a farm renders.
SEARCH_ROUNDS = 64
# The start-up measured from a task's first frames counts up to this many seconds: more is a clock that disagrees
# between the coordinator and a worker, or a first download of large files that is not paid again.
START_UP_LIMIT = 30.0


@dataclasses.dataclass(frozen=True)
class Pricing:
    """What the admin said a worker costs and draws (0: not said): money per worker-hour in `currency`, watts."""

    cost_per_worker_hour: float = 0.0
    currency: str = ""
    watts_per_worker: float = 0.0


@dataclasses.dataclass(frozen=True)
class Holding:
    """A frame of the task a worker holds now: being rendered since `started_at` (the worker's clock), or leased."""

    frame: int
    worker_id: int
    rendering: bool
    started_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Left:
    """What a task's done frames say about the rest: the mean predicted cost of a frame left (average worker), how
    many frames are left, and the seconds a worker new to the task spends before its frames run at that pace."""

    mean_cost: float
    frames: int
    start_up: float = 0.0


def start_up_seconds(model: eta.CostModel, done: Sequence[eta.DoneFrame], task_started_at: float | None) -> float:
    """Seconds a worker's first frame of the task costs beyond the rest: from the task's first claim
    (`task_started_at`, the coordinator's clock) to its first frame's start (a worker's clock; bounded, see
    START_UP_LIMIT), plus what each worker's first frame took beyond the model's prediction, on average."""
    if model.trend is None:
        return 0.0
    firsts: dict[int | None, eta.DoneFrame] = {}
    for frame in done:
        if frame.started_at is None or not frame.render_seconds:
            continue
        first = firsts.get(frame.worker_id)
        if first is None or first.started_at is None or frame.started_at < first.started_at:
            firsts[frame.worker_id] = frame
    if not firsts:
        return 0.0
    extra = [max(0.0, f.seconds - model.seconds(f.frame, f.worker_id)) for f in firsts.values()]
    earliest = min(f.started_at for f in firsts.values() if f.started_at is not None)
    session = min(START_UP_LIMIT, max(0.0, earliest - task_started_at)) if task_started_at else 0.0
    return session + sum(extra) / len(extra)


def mean_cost_left(model: eta.CostModel, frames: range, gone: Collection[int]) -> tuple[float, int]:
    """(mean predicted cost of the frames not done or failed, on a worker of average speed; how many there are),
    the mean taken over the frames left among at most COST_SAMPLE frames spread over the range: O(COST_SAMPLE +
    len(gone)), whatever the length of the range."""
    left = len(frames) - sum(1 for frame in gone if frame in frames)
    if not left or model.trend is None:
        return 0.0, left
    step = max(1, len(frames) // COST_SAMPLE)
    sample = [frame for frame in frames[::step] if frame not in gone]
    if not sample:  # the frames left all fell between the sampled ones
        sample = [frame for frame in frames if frame not in gone][:COST_SAMPLE]
    return sum(model.cost(frame) for frame in sample) / len(sample), left


def farm_estimate(model: eta.CostModel, left: Left, holdings: Sequence[Holding], worker_ids: Sequence[int],
                  now: float, pricing: Pricing) -> dict[str, Any] | None:
    """The estimate of a task's frames left (`left`: those held included): {wall_seconds, render_hours, cost,
    currency, energy_kwh, workers}. `worker_ids`: the workers that may take its frames now; `holdings`: the
    frames of it that workers hold. None while no frame of the task has an exact time. wall_seconds is None when
    frames are left and no worker may take them."""
    if model.trend is None:
        return None
    mean_cost, frames_left = left.mean_cost, left.frames
    holders = {holding.worker_id for holding in holdings}
    # When each worker's frame in hand ends; its next frame ends `per_frame` (the time between frames, then the
    # render) after that. A worker new to the task ends its first frame after the start-up and a render.
    ends_at: dict[int, float] = {w: 0.0 if w in holders else left.start_up - model.overhead(w) for w in worker_ids}
    render_seconds = 0.0
    held_frames = set()
    for holding in holdings:
        if holding.frame in held_frames:
            continue
        held_frames.add(holding.frame)
        elapsed = max(0.0, now - holding.started_at) if holding.rendering and holding.started_at else 0.0
        seconds = model.seconds_left(holding.frame, holding.worker_id, elapsed)
        render_seconds += seconds
        # A second frame held by one worker (claimed ahead) starts after the first.
        extra = model.overhead(holding.worker_id) if ends_at.get(holding.worker_id) else 0.0
        ends_at[holding.worker_id] = ends_at.get(holding.worker_id, 0.0) + extra + seconds
    in_hand = max((ends_at[w] for w in holders), default=0.0)
    waiting = max(0, frames_left - len(held_frames))
    per_frame = {w: model.speed(w) * mean_cost + model.overhead(w) for w in worker_ids}
    wall: float | None
    if not waiting:
        wall = in_hand
    elif not per_frame:
        wall = None
    else:
        wall = _finish_time(waiting, {w: ends_at[w] for w in per_frame}, per_frame)
        counts = {w: _frames_by(wall, ends_at[w], per_frame[w]) for w in per_frame}
        dealt = sum(counts.values()) or 1
        render_seconds += waiting * mean_cost * sum(counts[w] * model.speed(w) for w in counts) / dealt
        wall = max(wall, in_hand)
    render_hours = render_seconds / 3600.0
    return {
        "wall_seconds": None if wall is None else round(wall, 1),
        "render_hours": round(render_hours, 4),
        "cost": round(render_hours * pricing.cost_per_worker_hour, 2) if pricing.cost_per_worker_hour else None,
        "currency": pricing.currency,
        "energy_kwh": round(render_hours * pricing.watts_per_worker / 1000.0, 3) if pricing.watts_per_worker
        else None,
        "workers": len(worker_ids),
    }


def _frames_by(moment: float, ends_at: float, per_frame: float) -> int:
    """Frames a worker whose frame in hand ends at `ends_at`, each next one `per_frame` seconds later, has finished
    by `moment` (beyond the one in hand)."""
    if moment < ends_at or per_frame <= 0:
        return 0
    return math.floor((moment - ends_at) / per_frame + 1e-9)


def _finish_time(count: int, ends_at: Mapping[int, float], per_frame: Mapping[int, float]) -> float:
    """The first moment by which the workers, each taking its next frame as soon as it is free, have finished
    `count` frames between them (what dealing them out one by one gives, found by halving)."""
    fastest = min(per_frame.values())
    low, high = 0.0, max(0.0, max(ends_at.values())) + count * max(fastest, 1e-6)
    for _ in range(SEARCH_ROUNDS):
        middle = (low + high) / 2
        if sum(_frames_by(middle, ends_at[w], per_frame[w]) for w in per_frame) >= count:
            high = middle
        else:
            low = middle
    return high


class CostLeftCache:
    """Each estimated task's Left, rebuilt only when its done or failed frames change (the same key as
    eta.EtaCache's). Thread-safe; keeps the most recently used `size` tasks."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[eta.TaskState, Left]] = OrderedDict()

    def costs(self, states: Mapping[int, tuple[eta.TaskState, eta.TaskEstimator, float | None]],
              load_done: Callable[[list[int]], Mapping[int, Sequence[eta.DoneFrame]]]) -> dict[int, Left]:
        """Each task's Left: cached while its state is unchanged, else computed from `load_done(task_ids)` (called
        at most once, with the tasks that need it). `states`: each task's state, estimator and start (its first
        claim, the coordinator's clock)."""
        found: dict[int, Left] = {}
        with self._lock:
            for task_id, (state, _, _) in states.items():
                entry = self._entries.get(task_id)
                if entry is not None and entry[0] == state:
                    self._entries.move_to_end(task_id)
                    found[task_id] = entry[1]
        stale = [task_id for task_id in states if task_id not in found]
        if stale:
            done = load_done(stale)
            for task_id in stale:
                state, estimator, started_at = states[task_id]
                frames = done.get(task_id, ())
                gone = {d.frame for d in frames} | set(state.failed_frames)
                found[task_id] = Left(*mean_cost_left(estimator.model, state.frames(), gone),
                                      start_up_seconds(estimator.model, frames, started_at))
            with self._lock:
                for task_id in stale:
                    self._entries[task_id] = (states[task_id][0], found[task_id])
                    self._entries.move_to_end(task_id)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return found
