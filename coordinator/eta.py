"""Finish-time estimates of a task from the exact render times of its done frames.

What the coordinator knows exactly: each done frame's number, its render time (render_pre to render_write, measured
inside Blender), which worker rendered it and when (on that worker's clock); which frames are left, which of them
are being rendered, by whom and since when. From that:

- The cost of a frame as a function of its number: a straight trend through the mean of the done frames. Its slope
  is measured on the logarithm of the costs as the median of the slopes between pairs of frames (Theil-Sen), so
  frames several times heavier than the rest do not tip it however they recur, and it is shrunk towards flat as far
  as the done frames leave it uncertain. The level is the mean of each frame's cost over the trend at its frame,
  so heavy frames count at the rate they were seen (the sum over the frames left is what matters, not the typical
  frame) and by the factor they are heavy, wherever they fell: among the sampled order's first frames, heavy ones
  that happen to lie where the trend is dear would otherwise price the whole shot dearer still. Each worker's first
  frame is left out of the slope and the speeds (a Blender session's first frame pays one-time costs) and counts in
  the level only up to the dearest of the other frames against the trend: in the sampled render order the first
  frames are the ends of the shot, and leaving them out would leave out what they say about its dearest or
  cheapest part. With a repeating pattern, the trend and the pattern together price the done frames at what they
  cost.
- Each worker's speed relative to the others, from its frames against that trend (shrunk towards the average while
  it has rendered few), and its overhead between frames (upload, report, setting up the next frame) from the gaps
  between its own consecutive frames: one clock, so clocks that disagree between machines do not matter.
- The time left of a frame being rendered, given how long it has run: the mean over the done frames that ran at
  least that long (relative to their prediction), so a frame that runs long is taken for one of the heavy ones. Such
  a frame is also evidence that frames cost more than the done ones say: the frames not started yet are scaled by
  what the frames in progress add to the done ones.
- The frames left dealt out in the task's claim order (its frames' ranks: coordinator/claim_order.py) to the
  workers on the task, each taking the next frame when it is free: the estimate is when the last of them ends, so
  the tail of the last frames counts. Before the last TAIL_FRAMES frames the work is spread evenly (water-filling),
  which is exact enough and keeps an estimate cheap for tasks of many frames.
- A range about the estimate while few frames are done: the frames' spread about the model over the square root of
  the done and of the left frames' counts (eta_range).

What cannot be known is not guessed: a heavy section that no done frame has shown, or a machine that gets slower
(other work on it) while the task renders, only shows in the estimate once frames show it.

`TaskEstimator` holds what depends only on the done and failed frames (the model and the frames left, priced); it
is built in O(done frames), the model from at most MODEL_FRAMES of them, and `EtaCache` keeps it until one of those
changes, so each estimate after that costs O(workers + TAIL_FRAMES). Everything is deterministic: the same frames
give the same estimate.

`estimate_eta` is the first, simple estimate (mean of the recent frame times x frames left / workers), kept as the
baseline the benchmark compares against.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from .eta_trend import MIN_FRAMES_FOR_TREND, OUTLIER_SPREADS, Pattern, Trend, mad, median

__all__ = ["MIN_FRAMES_FOR_TREND", "ActiveFrame", "CostModel", "DoneFrame", "EtaCache", "Pattern", "TaskEstimator",
           "TaskState", "Trend", "estimate_eta"]

# Workers' speeds differ by about this much (standard deviation of the logarithm of their speed ratios), and a
# frame's time about its prediction by at least SPEED_NOISE_FLOOR: with few frames, a speed leans on the average.
SPEED_PRIOR_SPREAD = 0.5
SPEED_NOISE_FLOOR = 0.1
MIN_FRAMES_FOR_SPEED = 3
SPEED_LIMITS = (0.2, 5.0)
SPEED_ROUNDS = 2
# The model is fitted to at most this many done frames, the latest by number.
MODEL_FRAMES = 4096
# How actual times spread about the prediction is kept as at most this many quantiles.
RATIO_QUANTILES = 200
# A frame running longer than any done frame did (relative to its prediction) is taken to have this share of its
# prediction left.
OVERRUN_SHARE_LEFT = 0.1
# Each worker's first frame is left out of the model once this many other frames are timed.
MIN_FRAMES_AFTER_WARM_UP = 3
# A frame being rendered counts as evidence of frame costs up to this multiple of its prediction.
EVIDENCE_CAP = 4.0
# The last frames in claim order that are dealt out one by one; the frames before them are spread evenly.
TAIL_FRAMES = 128
# A frame's time about its prediction: a relative standard deviation of SPREAD_PRIOR until frames say otherwise,
# weighed as SPREAD_PRIOR_FRAMES frames. The ETA's range is RANGE_Z of its standard deviations each way (80 %).
SPREAD_PRIOR = 0.5
SPREAD_PRIOR_FRAMES = 2
RANGE_Z = 1.28
# A worker's own overhead is used from this many gaps on; before, the task's.
MIN_GAPS_PER_WORKER = 3


def estimate_eta(recent_frame_seconds: Sequence[float], frames_left: int, workers_rendering: int) -> float | None:
    """The simple estimate: mean of the recent exact frame times x frames left / workers on it (the baseline).

    None while no frame has finished, since there is nothing to measure yet.
    """
    if frames_left <= 0:
        return 0.0
    if not recent_frame_seconds:
        return None
    mean = sum(recent_frame_seconds) / len(recent_frame_seconds)
    return mean * frames_left / max(1, workers_rendering)


@dataclasses.dataclass(frozen=True, slots=True)
class DoneFrame:
    """A done frame: its number, exact render time (None if the worker sent none), worker and times."""

    frame: int
    render_seconds: float | None
    worker_id: int | None = None
    started_at: float | None = None  # worker's clock, at render_pre
    ended_at: float | None = None  # worker's clock, at render_write

    @property
    def seconds(self) -> float:
        """render_seconds of a frame the model counts: only those with a usable time get that far."""
        assert self.render_seconds is not None, "an untimed frame reached the cost model"
        return self.render_seconds


@dataclasses.dataclass(frozen=True, slots=True)
class ActiveFrame:
    """A frame leased to a worker: being rendered (since started_at, the worker's clock) or about to be."""

    frame: int
    worker_id: int | None
    rendering: bool
    started_at: float | None = None


def _usable(seconds: float | None) -> bool:
    return seconds is not None and math.isfinite(seconds) and seconds > 0


class CostModel:
    """What a task's done frames say about the frames left: cost by frame number (for a worker of average speed),
    each worker's speed and overhead between frames, and how actual times spread about the prediction."""

    def __init__(self, done: Iterable[DoneFrame]) -> None:
        # In frame order, so that the same frames give the same model (to the last bit) in whatever order they come.
        timed = sorted((d for d in done if _usable(d.render_seconds)), key=lambda d: d.frame)
        # The latest frames by number, nearest to the frames left, keep the model's cost bounded.
        with_warm_up = timed[-MODEL_FRAMES:]
        timed = _without_warm_up(with_warm_up)
        self.frames_measured = len(timed)
        # The relative standard deviation of a frame's time about its prediction (see _relative_spread).
        self.spread = SPREAD_PRIOR
        self.measured_seconds: float = sum(d.seconds for d in timed)
        self._speeds: dict[int | None, float] = {}
        self._overheads, self._overhead = _overheads(timed)
        if not timed:
            self.trend: Trend | None = None
            self.pattern = Pattern()
            self._ratios: list[float] = []
            self._ratio_suffix_sums: list[float] = [0.0]
            return
        frames = [d.frame for d in timed]
        trend = Trend.fit(frames, [d.seconds for d in timed])
        # Speeds come from the frames that fit the common pattern only. Heavy frames tend to fall to the same
        # worker again and again (it is busy with one while the others take the light ones, then takes the next
        # heavy one): counted, they would make that worker look slow.
        typical = _typical(timed, trend)
        for _ in range(SPEED_ROUNDS):
            speeds = _speeds(typical, trend)
            if not speeds:
                break
            self._speeds = speeds
            trend = Trend.fit(frames, [d.seconds / speeds.get(d.worker_id, 1.0) for d in timed])
        self.trend, self.pattern = _trend_and_pattern(with_warm_up, timed, trend, self._speeds)
        ratios = sorted(d.seconds / self.seconds(d.frame, d.worker_id) for d in timed)
        self.spread = _relative_spread(ratios)
        # Evenly spaced order statistics stand for the rest, so a model of many frames stays small in the cache.
        if len(ratios) > RATIO_QUANTILES:
            ratios = [ratios[(2 * i + 1) * len(ratios) // (2 * RATIO_QUANTILES)] for i in range(RATIO_QUANTILES)]
        self._ratios = ratios
        # _ratio_suffix_sums[i] = sum(self._ratios[i:])
        sums = [0.0] * (len(self._ratios) + 1)
        for i in range(len(self._ratios) - 1, -1, -1):
            sums[i] = sums[i + 1] + self._ratios[i]
        self._ratio_suffix_sums = sums

    def cost(self, frame: int) -> float:
        """Predicted render seconds of the frame on a worker of average speed."""
        assert self.trend is not None, "no frame has been timed yet"
        return self.trend(frame) * self.pattern(frame)

    def sum_over(self, frames: range) -> float:
        """The predicted cost of a range of frames on a worker of average speed, in O(pattern period)."""
        assert self.trend is not None, "no frame has been timed yet"
        # frames[j::period] is a range whose frames all fall in one class of the pattern.
        period = self.pattern.period
        return sum(self.pattern(frames[j]) * self.trend.sum_over(frames[j::period])
                   for j in range(min(period, len(frames))))

    def speed(self, worker_id: int | None) -> float:
        """The worker's render time relative to the average worker's (2.0: twice as slow)."""
        return self._speeds.get(worker_id, 1.0)

    def overhead(self, worker_id: int | None) -> float:
        """Seconds the worker spends between the end of one frame's render and the start of the next."""
        return self._overheads.get(worker_id, self._overhead)

    def seconds(self, frame: int, worker_id: int | None) -> float:
        """Predicted render seconds of the frame on this worker."""
        return self.speed(worker_id) * self.cost(frame)

    def seconds_left(self, frame: int, worker_id: int | None, elapsed: float) -> float:
        """Expected render seconds left of a frame that has rendered for `elapsed` seconds on this worker."""
        expected = self.seconds(frame, worker_id)
        if elapsed <= 0:
            return expected
        # The done frames that ran longer than this one has so far (relative to their prediction): it is one of
        # them, so it runs as long as they did on average.
        first = bisect.bisect_right(self._ratios, elapsed / expected)
        longer = len(self._ratios) - first
        if longer == 0:
            return max(expected - elapsed, OVERRUN_SHARE_LEFT * expected)
        return max(0.0, expected * self._ratio_suffix_sums[first] / longer - elapsed)


def _relative_spread(ratios: Sequence[float]) -> float:
    """The standard deviation of actual / predicted times over their mean, pooled with SPREAD_PRIOR as if it were
    SPREAD_PRIOR_FRAMES frames more: a few frames alone would say too little about how much frames differ."""
    n = len(ratios)
    if n == 0:
        return SPREAD_PRIOR
    mean = sum(ratios) / n
    squares = sum((r - mean) ** 2 for r in ratios) / mean ** 2 if mean > 0 else 0.0
    return math.sqrt((SPREAD_PRIOR_FRAMES * SPREAD_PRIOR ** 2 + squares) / (SPREAD_PRIOR_FRAMES + n - 1))


def _trend_and_pattern(with_warm_up: Sequence[DoneFrame], timed: Sequence[DoneFrame], trend: Trend,
                       speeds: Mapping[int | None, float]) -> tuple[Trend, Pattern]:
    """The trend through the level of all the done frames (_level) and the pattern that repeats over it, scaled so
    that the two price the done frames at what they cost. Once a pattern prices each first frame, what the first
    frames paid once is measured: the least any of them cost over its price (the same scene loads about as long
    everywhere), and taken out of the level."""
    first_frames_counted = len(with_warm_up) > len(timed)
    leveled_on = with_warm_up if first_frames_counted else timed
    if first_frames_counted:
        center, level, total = _level(with_warm_up, timed, trend, speeds)
        trend = trend.leveled(center, level)
    else:
        total = sum(d.seconds / speeds.get(d.worker_id, 1.0) for d in timed)
    # Without the warm-up frames: what a session's first frame paid once would pass for a pattern.
    offsets = [math.log(d.seconds / speeds.get(d.worker_id, 1.0) / trend(d.frame)) for d in timed]
    found = Pattern.fit([d.frame for d in timed], offsets)
    pattern = found.normalized([d.frame for d in leveled_on], trend, total)
    if pattern.period == 1 or not first_frames_counted:
        return trend, pattern
    kept = {id(d) for d in timed}
    warm_up = max(0.0, min(d.seconds / speeds.get(d.worker_id, 1.0) - trend(d.frame) * pattern(d.frame)
                           for d in with_warm_up if id(d) not in kept))
    center, level, total = _level(with_warm_up, timed, trend, speeds, warm_up)
    trend = trend.leveled(center, level)
    return trend, found.normalized([d.frame for d in leveled_on], trend, total)


def _level(with_warm_up: Sequence[DoneFrame], timed: Sequence[DoneFrame], trend: Trend,
           speeds: Mapping[int | None, float], warm_up: float = 0.0) -> tuple[float, float, float]:
    """The mean frame, the level there (Trend.level_of) and the total cost (each time over its worker's speed) of
    all the frames, each worker's first counted less `warm_up` and at most as dear, against the trend, as the
    dearest of the others: what it paid once is left out, what it says about its part of the shot is kept."""
    def cost(d: DoneFrame) -> float:
        return d.seconds / speeds.get(d.worker_id, 1.0)

    dearest = max(cost(d) / trend(d.frame) for d in timed)
    kept = {id(d) for d in timed}
    costs = [cost(d) if id(d) in kept else min(cost(d) - warm_up, dearest * trend(d.frame)) for d in with_warm_up]
    center, level = trend.level_of([d.frame for d in with_warm_up], costs)
    return center, level, sum(costs)


def _without_warm_up(timed: list[DoneFrame]) -> list[DoneFrame]:
    """The frames without each worker's first one (by start time) while enough others remain: the first frame of a
    Blender session pays one-time costs (loading kernels, syncing the scene) that the frames left will not."""
    first: dict[int | None, tuple[float, DoneFrame]] = {}  # worker -> (start, frame)
    for d in timed:
        if d.started_at is None:
            continue
        known = first.get(d.worker_id)
        if known is None or d.started_at < known[0]:
            first[d.worker_id] = (d.started_at, d)
    if len(timed) - len(first) < MIN_FRAMES_AFTER_WARM_UP:
        return timed
    warm_up = {id(d) for _, d in first.values()}
    return [d for d in timed if id(d) not in warm_up]


def _overheads(timed: Sequence[DoneFrame]) -> tuple[dict[int | None, float], float]:
    """Each worker's median gap between the end of a frame and the start of its next one, and the task's."""
    by_worker: dict[int | None, list[tuple[float, float]]] = {}  # worker -> (start, end) of its frames
    for d in timed:
        if d.started_at is not None and d.ended_at is not None:
            by_worker.setdefault(d.worker_id, []).append((d.started_at, d.ended_at))
    gaps_by_worker: dict[int | None, list[float]] = {}
    for worker_id, spans in by_worker.items():
        spans.sort(key=lambda span: span[0])
        gaps = [after[0] - before[1] for before, after in itertools.pairwise(spans)]
        # A negative gap means clocks or times that do not add up; leave it out.
        gaps_by_worker[worker_id] = [g for g in gaps if g >= 0]
    every_gap = [g for gaps in gaps_by_worker.values() for g in gaps]
    task_overhead = median(every_gap) if every_gap else 0.0
    return ({worker_id: median(gaps) for worker_id, gaps in gaps_by_worker.items()
             if len(gaps) >= MIN_GAPS_PER_WORKER}, task_overhead)


def _typical(timed: Sequence[DoneFrame], trend: Trend) -> list[DoneFrame]:
    """The frames whose cost is within OUTLIER_SPREADS robust standard deviations of the trend (in logarithms)."""
    offsets = [math.log(d.seconds / trend(d.frame)) for d in timed]
    middle = median(offsets)
    spread = mad(offsets, middle)
    return [d for d, o in zip(timed, offsets, strict=True) if abs(o - middle) <= OUTLIER_SPREADS * spread]


def _speeds(timed: Sequence[DoneFrame], trend: Trend) -> dict[int | None, float]:
    """Each worker's speed against the trend: the median of log(actual / predicted) over its frames, pulled towards
    the average as far as its frames leave it uncertain (a normal prior of SPEED_PRIOR_SPREAD; the frames' scatter
    measured within each worker, over all of them), scaled so that the frame-weighted mean of the logs is 0. A worker
    with fewer than MIN_FRAMES_FOR_SPEED frames counts as average. Empty when fewer than two workers qualify."""
    logs: dict[int | None, list[float]] = {}
    for d in timed:
        logs.setdefault(d.worker_id, []).append(math.log(d.seconds / trend(d.frame)))
    logs = {w: values for w, values in logs.items() if len(values) >= MIN_FRAMES_FOR_SPEED}
    if len(logs) < 2:
        return {}
    middles = {w: median(values) for w, values in logs.items()}
    scatter = max(SPEED_NOISE_FLOOR, mad([v - middles[w] for w, values in logs.items() for v in values], 0.0))
    prior = SPEED_PRIOR_SPREAD ** 2
    estimates = {w: middles[w] * prior / (prior + scatter * scatter / len(values)) for w, values in logs.items()}
    total = sum(len(values) for values in logs.values())
    mean = sum(estimates[w] * len(logs[w]) for w in logs) / total
    low, high = SPEED_LIMITS
    return {w: min(high, max(low, math.exp(value - mean))) for w, value in estimates.items()}


class TaskEstimator:
    """A task's cost model and its frames left (neither done nor failed), priced once: estimates from it need only
    the frames in progress and the time."""

    def __init__(self, model: CostModel, frames: range, gone: Collection[int] = (),
                 claimed_last: Sequence[int] | None = None) -> None:
        """frames: all the task's frames; gone: those done or failed; claimed_last: the frames left (not gone) that
        are claimed last, in claim order (at least the last TAIL_FRAMES of them, or all), None when the claim order
        is the frame numbers'. Costs O(len(gone) + TAIL_FRAMES), whatever the length of the range."""
        self.model = model
        gone = {frame for frame in gone if frame in frames}
        if claimed_last is None:
            claimed_last = _last_left(frames, gone)
        tail = [frame for frame in claimed_last if frame not in gone][-TAIL_FRAMES:]
        self._bulk_count = len(frames) - len(gone) - len(tail)
        self._bulk_cost = 0.0
        if model.trend is not None and self._bulk_count:
            # Every frame but the gone and the tail ones: a sum over the whole range (O(1)) less theirs.
            self._bulk_cost = max(0.0, model.sum_over(frames) - sum(map(model.cost, gone))
                                  - sum(map(model.cost, tail)))
        self._tail_frames = tail
        self._tail_set = frozenset(tail)
        self._tail_costs = list(map(model.cost, tail)) if model.trend is not None else []
        self.frames_left = self._bulk_count + len(tail)

    @property
    def measured(self) -> bool:
        """Whether any done frame has an exact time (without one there is nothing to estimate from)."""
        return self.model.trend is not None

    def eta_range(self, seconds: float | None) -> tuple[float | None, float | None]:
        """The range (low, high) the time left, estimated at `seconds`, is likely in (meant as 8 times in 10): the
        frames left cost what the done ones say up to the error of the done frames' mean and the frames left's own
        scatter, each as a frame's spread about the model over the square root of their count. It narrows as
        frames finish; (None, None) without an estimate."""
        if seconds is None:
            return None, None
        if not seconds or not self.frames_left:
            return seconds, seconds
        relative = self.model.spread * math.sqrt(1.0 / max(1, self.model.frames_measured) + 1.0 / self.frames_left)
        return seconds * math.exp(-RANGE_Z * relative), seconds * math.exp(RANGE_Z * relative)

    def eta_seconds(self, active: Sequence[ActiveFrame], now: float) -> float | None:
        """Seconds until the last frame left is done, given the frames leased now; None while nothing is timed."""
        if not self.frames_left:
            return 0.0
        if not self.measured:
            return None
        model = self.model
        held: dict[int | None, list[ActiveFrame]] = {}
        active_frames = set()
        # What the frames being rendered say: each has run `elapsed` and is expected to need `left` more, where
        # the model alone expected `predicted`. A frame running long is evidence that frames cost more than the
        # done ones say, weighed like one more done frame: all the frames not started yet are scaled by it.
        in_progress: dict[int, float] = {}
        observed = expected = model.measured_seconds
        for a in sorted(active, key=lambda a: (a.frame, not a.rendering)):
            if a.frame in active_frames:
                continue
            active_frames.add(a.frame)
            held.setdefault(a.worker_id, []).append(a)
            if a.rendering and a.started_at is not None:
                # Clamped: a worker clock ahead of ours must not make a frame look like it has not started.
                elapsed = max(0.0, now - a.started_at)
                left = model.seconds_left(a.frame, a.worker_id, elapsed)
                in_progress[a.frame] = left
                predicted = model.seconds(a.frame, a.worker_id)
                # Bounded: a hung frame, or a worker clock far behind ours, must not scale every other frame
                # without limit.
                observed += min(elapsed + left, EVIDENCE_CAP * predicted)
                expected += predicted
        scale = observed / expected if expected > 0 else 1.0
        free_in: dict[int | None, float] = {}
        for worker_id, frames in held.items():
            seconds = 0.0
            for a in frames:
                if a.frame in in_progress:
                    seconds += in_progress[a.frame]
                else:
                    seconds += scale * model.seconds(a.frame, worker_id)
                seconds += model.overhead(worker_id)
            free_in[worker_id] = seconds
        if not free_in:
            # Nobody holds a frame of it: count on one worker of average speed taking it up now.
            free_in[None] = 0.0
        bulk_count, bulk_cost = self._bulk_count, self._bulk_cost
        for frame in active_frames:
            if frame not in self._tail_set:
                bulk_count -= 1
                bulk_cost -= model.cost(frame)
        if bulk_count > 0 and bulk_cost > 0:
            _water_fill(free_in, scale * bulk_cost, bulk_count, model)
        # Deal the last frames one by one, in claim order, to whichever worker is free first.
        workers = list(free_in)
        speed = [scale * model.speed(w) for w in workers]
        overhead = [model.overhead(w) for w in workers]
        start = [free_in[w] for w in workers]
        tail = [cost for frame, cost in zip(self._tail_frames, self._tail_costs, strict=False)
                if frame not in active_frames]
        return _deal(start, speed, overhead, tail)


def _deal(free_at: list[float], speed: list[float], overhead: list[float], costs: Sequence[float]) -> float:
    """When the last of `costs` (average-worker seconds, in claim order) ends, each dealt to whichever worker is
    free first (worker i free at free_at[i], taking speed[i] x cost + overhead[i])."""
    heap = [(free, i) for i, free in enumerate(free_at)]
    heapq.heapify(heap)
    latest = max(free_at)
    for cost in costs:
        seconds, i = heap[0]
        seconds += speed[i] * cost + overhead[i]
        latest = max(latest, seconds)
        heapq.heapreplace(heap, (seconds, i))
    return latest


def _last_left(frames: range, gone: Collection[int]) -> list[int]:
    """The last TAIL_FRAMES frames of the range (by number) not in `gone`, by number."""
    tail: list[int] = []
    for frame in reversed(frames):
        if frame not in gone:
            tail.append(frame)
            if len(tail) == TAIL_FRAMES:
                break
    tail.reverse()
    return tail


def _water_fill(free_in: dict[int | None, float], cost: float, count: int, model: CostModel) -> None:
    """Spread `count` frames of total `cost` (average-worker seconds) over the workers so that they all end together,
    the ones free earliest taking more: each worker's free time is raised to the common level it reaches."""
    mean_cost = cost / count
    # Seconds a worker needs per average-worker second of work, its overhead spread over the frame's cost.
    per_unit = {w: model.speed(w) + model.overhead(w) / mean_cost for w in free_in}
    ordered = sorted(free_in.items(), key=lambda item: item[1])
    rate = weighted = 0.0
    level = ordered[0][1]
    for i, (worker_id, free) in enumerate(ordered):
        rate += 1.0 / per_unit[worker_id]
        weighted += free / per_unit[worker_id]
        level = (cost + weighted) / rate
        if i + 1 == len(ordered) or level <= ordered[i + 1][1]:
            break
    for worker_id, free in ordered:
        free_in[worker_id] = max(free, level)


@dataclasses.dataclass(frozen=True)
class TaskState:
    """What a task's estimator depends on besides the frames in progress: when any of it changes, it is rebuilt."""

    task_id: int
    created_at: float
    frame_start: int
    frame_end: int
    frame_step: int
    frames_done: int
    failed_frames: tuple[int, ...] = ()

    def frames(self) -> range:
        return range(self.frame_start, self.frame_end + 1, self.frame_step)


class EtaCache:
    """Each open task's TaskEstimator, rebuilt only when its done or failed frames change. Thread-safe; keeps the
    most recently used `size` tasks."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[TaskState, TaskEstimator]] = OrderedDict()

    def estimators(self, states: Iterable[TaskState],
                   load_done: Callable[[list[int]], Mapping[int, Sequence[DoneFrame]]],
                   load_claimed_last: Callable[[list[int]], Mapping[int, Sequence[int]]] | None = None,
                   ) -> dict[int, TaskEstimator]:
        """The estimator of each task: the cached one while its state is unchanged, else one built from
        `load_done(task_ids)` and `load_claimed_last(task_ids)` (each called at most once, with the tasks that need
        building; the second gives each task's frames left claimed last, in claim order: TaskEstimator's
        claimed_last; without it, the claim order is taken to be the frame numbers')."""
        by_id = {state.task_id: state for state in states}
        found: dict[int, TaskEstimator] = {}
        with self._lock:
            for task_id, state in by_id.items():
                entry = self._entries.get(task_id)
                if entry is not None and entry[0] == state:
                    self._entries.move_to_end(task_id)
                    found[task_id] = entry[1]
        stale = [task_id for task_id in by_id if task_id not in found]
        if not stale:
            return found
        done_by_task = load_done(stale)
        claimed_last = load_claimed_last(stale) if load_claimed_last is not None else {}
        built = {}
        for task_id in stale:
            done = done_by_task.get(task_id, [])
            gone = {d.frame for d in done}
            gone.update(by_id[task_id].failed_frames)
            built[task_id] = TaskEstimator(CostModel(done), by_id[task_id].frames(), gone, claimed_last.get(task_id))
        with self._lock:
            for task_id, estimator in built.items():
                self._entries[task_id] = (by_id[task_id], estimator)
                self._entries.move_to_end(task_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return {**found, **built}
