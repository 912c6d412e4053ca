"""The cost of a task's frames as a function of their number: a straight trend through the done frames' level, its
slope measured robustly (Theil-Sen on the logarithm of the costs) and shrunk towards flat while uncertain. Split
out of eta.py, which builds its cost model on it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

# A slope needs this many timed frames; fewer cannot tell a trend from noise and heavy frames.
MIN_FRAMES_FOR_TREND = 6
# Predicted costs stay within these multiples of the done frames' mean (a steep trend carried far must not go
# negative or explode).
COST_FLOOR = 0.33
COST_CEILING = 4.0
# How hard an uncertain slope is pulled towards flat: kept slope / slope = t^2 / (t^2 + TREND_SHRINK), t the slope
# over its standard error. About the square of the t value that few frames need before a trend is believable.
TREND_SHRINK = 6.0
# ... times (1 + SHRINK_DOF / (points - 2)): fewer points, harder pull.
SHRINK_DOF = 4.0
# Points further than this many robust standard deviations off the first line are left out of the second.
OUTLIER_SPREADS = 3.0
# The trend's slope is measured over at most this many points (pairs: its square / 2).
TREND_POINTS = 48


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def mad(values: Sequence[float], center: float) -> float:
    """Median absolute deviation, scaled to a standard deviation for normal data."""
    return 1.4826 * median([abs(v - center) for v in values])


@dataclasses.dataclass(frozen=True)
class Trend:
    """Cost by frame number: `level` at `center_frame`, changing by `relative_slope` x level per frame (a straight
    line), kept within [low, high]."""

    center_frame: float
    level: float
    relative_slope: float
    low: float
    high: float

    def __call__(self, frame: float) -> float:
        cost = self.level * (1.0 + self.relative_slope * (frame - self.center_frame))
        return min(self.high, max(self.low, cost))

    def level_of(self, frames: Sequence[float], costs: Sequence[float]) -> tuple[float, float]:
        """The mean frame and the level there of `costs` at `frames`, on this trend's slope (_level_at)."""
        return _level_at(frames, costs, self.relative_slope)

    def leveled(self, center_frame: float, level: float) -> Trend:
        """The same relative slope through another mean: `level` at `center_frame`, bounds as fit's."""
        return Trend(center_frame, level, self.relative_slope, COST_FLOOR * level, COST_CEILING * level)

    def sum_over(self, frames: range) -> float:
        """The sum of the costs of a range of frames (step > 0), in O(1): arithmetic series over the parts of the
        range below, on and above the line's stretch between the bounds."""
        n = len(frames)
        if n == 0:
            return 0.0
        slope = self.level * self.relative_slope  # cost = intercept + slope x frame, within the bounds
        intercept = self.level - slope * self.center_frame
        if slope == 0:
            return n * min(self.high, max(self.low, intercept))
        # The frames before `first_cross` are clamped to first_value, those after `last_cross` to last_value.
        if slope > 0:
            first_value, last_value = self.low, self.high
        else:
            first_value, last_value = self.high, self.low
        first_cross, last_cross = (first_value - intercept) / slope, (last_value - intercept) / slope
        start, step = frames.start, frames.step
        i1 = min(n, max(0, math.ceil((first_cross - start) / step)))
        i2 = min(n, max(i1, math.floor((last_cross - start) / step) + 1))
        count = i2 - i1
        frame_sum = count * start + step * (i1 + i2 - 1) * count / 2
        return first_value * i1 + intercept * count + slope * frame_sum + last_value * (n - i2)

    @classmethod
    def fit(cls, frames: Sequence[int], costs: Sequence[float]) -> Trend:
        """The trend of costs (positive) over frame numbers (same length, at least one, distinct frames).

        The slope is measured on the logarithm of the costs, where a heavy frame is heavy by the same factor
        wherever it falls, as the median of the slopes between all pairs of frames (Theil-Sen): frames several times
        heavier than the rest are outliers to it whatever the drift and however they recur. Beyond TREND_POINTS
        frames, consecutive frames are pooled (their mean cost) so that the pairs stay few. The slope is then
        applied as a straight line from the level at the mean frame (level_of).
        """
        n = len(frames)
        slope = 0.0
        if n >= MIN_FRAMES_FOR_TREND:
            points = _pooled(sorted(zip(frames, costs, strict=True)), TREND_POINTS)
            robust, se = _theil_sen(points)
            # Heavy frames placed unevenly among the light ones (all early, say) still pull the median a little:
            # measured again without the points far off the line, the slope is that of the typical frames, which
            # in logarithms is the slope of all of them.
            offsets = [c - robust * f for f, c in points]
            middle = median(offsets)
            spread = mad(offsets, middle)
            typical = [p for p, o in zip(points, offsets, strict=True) if abs(o - middle) <= OUTLIER_SPREADS * spread]
            if MIN_FRAMES_FOR_TREND <= len(typical) < len(points):
                robust, se = _theil_sen(typical)
            else:
                typical = points
            if robust and math.isfinite(se):
                # Pulled harder the fewer the points: their spread itself is uncertain then (as Student's t is
                # wider than the normal for few degrees of freedom).
                shrink = TREND_SHRINK * (1.0 + SHRINK_DOF / max(1, len(typical) - 2))
                t_squared = (robust / se) ** 2 if se > 0 else math.inf
                slope = robust * (1.0 if math.isinf(t_squared) else t_squared / (t_squared + shrink))
        mean_frame, level = _level_at(frames, costs, slope)
        return cls(mean_frame, level, slope, COST_FLOOR * level, COST_CEILING * level)


def _level_at(frames: Sequence[float], costs: Sequence[float], relative_slope: float) -> tuple[float, float]:
    """The mean frame and the level there of `costs` at `frames` (same length, at least one): the mean of each cost
    over the line's shape at its frame (1 + slope x distance from the mean frame, within the cost bounds).
    Consistent with the slope being measured on the logarithms, where a heavy frame is heavy by the same factor
    wherever it falls: heavy frames that happen to lie where the trend is dear count as heavy, not as dearer still."""
    center = sum(frames) / len(frames)
    shapes = (min(COST_CEILING, max(COST_FLOOR, 1.0 + relative_slope * (frame - center))) for frame in frames)
    return center, sum(cost / shape for cost, shape in zip(costs, shapes, strict=True)) / len(costs)


def _theil_sen(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The median of the slopes between all pairs of points, and its standard error: the robust spread of the points
    about the line over the spread of their frame numbers."""
    slopes = [(points[j][1] - points[i][1]) / (points[j][0] - points[i][0])
              for i in range(len(points)) for j in range(i + 1, len(points))]
    slope = median(slopes)
    center = sum(f for f, _ in points) / len(points)
    residuals = [c - slope * (f - center) for f, c in points]
    sxx = sum((f - center) ** 2 for f, _ in points)
    if sxx <= 0:
        return slope, math.inf
    return slope, mad(residuals, median(residuals)) / math.sqrt(sxx)


def _pooled(frame_costs: Sequence[tuple[int, float]], most: int) -> list[tuple[float, float]]:
    """(frame, log cost) points, at most `most`: runs of consecutive frames pooled into their mean frame and the log
    of their mean cost."""
    n = len(frame_costs)
    groups = min(n, most)
    points = []
    for g in range(groups):
        run = frame_costs[g * n // groups:(g + 1) * n // groups]
        points.append((sum(f for f, _ in run) / len(run), math.log(sum(c for _, c in run) / len(run))))
    return points


# Periods a frame-cost pattern is looked for at (a heavy frame every 2nd to 8th: a strobe, alternating shots).
PATTERN_PERIODS = range(2, 9)
# A pattern needs this many frames per residue class on average, and every class seen: fewer find patterns in noise.
PATTERN_FRAMES_PER_CLASS = 4
# The frames' own scatter (log) is taken to be at least this: a fit of few frames can be perfect by chance.
PATTERN_NOISE_FLOOR = 0.02
# BIC's penalty per factor, times this: seven periods are tried on few frames, and one would fit noise by chance
# (1 in 10 sets of 8-60 frames that only scatter, at 1x; none in 400 at 3x).
PATTERN_PENALTY = 3.0


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Costs that repeat every `period` frames: the frame's cost against the trend is factors[frame % period].
    Period 1 (factors (1.0,)) is no pattern."""

    period: int = 1
    factors: tuple[float, ...] = (1.0,)

    def __call__(self, frame: int) -> float:
        return self.factors[frame % self.period]

    def normalized(self, frames: Sequence[int], trend: Trend, total: float) -> Pattern:
        """The same pattern scaled so that, with it, the trend predicts `total` for `frames`: their actual cost,
        which holds their mix of heavy and light frames already."""
        if self.period == 1 or not frames:
            return self
        scale = total / sum(trend(f) * self(f) for f in frames)
        return Pattern(self.period, tuple(f * scale for f in self.factors))

    @classmethod
    def fit(cls, frames: Sequence[int], log_offsets: Sequence[float]) -> Pattern:
        """The pattern (or none) that best explains the frames' log costs against the trend, chosen by the Bayesian
        information criterion, so that a period must explain more than its factors' count would by chance. Each
        class's factor is shrunk towards the mean as far as its few frames leave it uncertain (empirical Bayes)."""
        n = len(frames)
        mean = sum(log_offsets) / n if n else 0.0
        floor = n * PATTERN_NOISE_FLOOR ** 2
        best_score = n * math.log((sum((o - mean) ** 2 for o in log_offsets) + floor) / n) if n else 0.0
        best = cls()
        for period in PATTERN_PERIODS:
            if n < PATTERN_FRAMES_PER_CLASS * period:
                break
            classes: list[list[float]] = [[] for _ in range(period)]
            for frame, offset in zip(frames, log_offsets, strict=True):
                classes[frame % period].append(offset)
            if not all(classes):
                continue
            means = [sum(c) / len(c) for c in classes]
            within = sum((o - m) ** 2 for c, m in zip(classes, means, strict=True) for o in c)
            score = n * math.log((within + floor) / n) + PATTERN_PENALTY * (period - 1) * math.log(n)
            if score < best_score:
                best_score, best = score, cls._shrunk(classes, means, within, mean, floor)
        return best

    @classmethod
    def _shrunk(cls, classes: list[list[float]], means: list[float], within: float, mean: float,
                floor: float) -> Pattern:
        """Factors from the classes' mean log offsets, each pulled towards the overall mean by its uncertainty."""
        n, period = sum(map(len, classes)), len(classes)
        noise = (within + floor) / max(1, n - period)
        between = sum((m - mean) ** 2 for m in means) / max(1, period - 1)
        signal = max(0.0, between - noise * period / n)
        factors = []
        for c, m in zip(classes, means, strict=True):
            kept = signal / (signal + noise / len(c)) if signal > 0 else 0.0
            factors.append(math.exp(kept * (m - mean)))
        return cls(period, tuple(factors))
