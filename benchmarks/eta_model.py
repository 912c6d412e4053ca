"""ETA model: RenderQ's estimator on many simulated renders of eta_accuracy's scene, without a machine's noise.

eta_accuracy renders a few real tasks, so each of its checkpoints is a few samples, and the machine's own speed
changes (20-40% on a shared one) are mixed into them. This script separates the estimator from the machine: it simulates
two workers rendering the same 80 frames with the same costs (every 4th frame 3x the samples, samples drifting 1x
to 3x over the range; seconds = a + b x samples, fitted to a real run on this kind of machine), each frame's time
scattered by --noise (log-normal), each worker's first frame slower by a warm-up. A worker claims its next frame
shortly after it begins one, by the real worker's claim-ahead rule (worker/prefetch.py). At 10, 25, 50 and 75%
done the real estimator (coordinator.eta, the code the coordinator runs) and the seed's are asked for the time
left, and compared with the simulated finish.

Figures: for each checkpoint, the median, mean and 90th percentile of RenderQ's error over --runs renders, the
share of renders where it is under 10%, and the seed's median and mean. Deterministic (seeded). The target is
eta_accuracy's, on the mean error at each checkpoint: RenderQ's within 10% and below the seed's. This shows which
of eta_accuracy's misses the estimator causes and which the machine does.

    python benchmarks/eta_model.py [--runs 200] [--noise 0.05] [--order sampled|sequential] [--quick]
                                   [--json-out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import os
import random
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import Results, add_arguments
from eta_accuracy import CHECKPOINTS, FULL, TARGET_PERCENT, frame_samples

from coordinator import eta
from coordinator.claim_order import in_claim_order, withheld_from_ahead_claim
from renderq.model import DEFAULT_RENDER_ORDER, RENDER_ORDERS
from worker.prefetch import claim_ahead_after

# Seconds of a frame = FIXED_SECONDS + SECONDS_PER_SAMPLE x samples, at one render thread (320 x 180): from a real
# eta_accuracy run here (frame 2, 16 samples, 1.27 s; frame 4, 52 samples, 3.6 s).
FIXED_SECONDS = 0.19
SECONDS_PER_SAMPLE = 0.066
WARM_UP_SECONDS = 0.7  # a Blender session's first frame, on top
GAP_SECONDS = 0.01  # between one frame's end and the next one's start on a worker
WORKERS = 2


@dataclasses.dataclass
class Render:
    """One simulated frame: when its worker claimed it, began and ended it."""

    frame: int
    worker: int
    claimed: float
    start: float
    end: float


def claim_ahead_renders(claim_order: list[int], seconds: list[float]) -> list[Render]:
    """The frames in claim order, each taken by whichever worker claims first, as real workers do
    (worker.prefetch.claim_ahead_after: shortly after beginning a frame, from the times of its last two, or when
    free) and as the coordinator hands them out (a claim ahead gets none of the last frames while the other workers
    hold frames: coordinator.claim_order.withheld_from_ahead_claim); a worker's first frame pays the warm-up."""
    claims = [(0.0, worker) for worker in range(WORKERS)]
    free = [0.0] * WORKERS
    recent: list[list[float]] = [[] for _ in range(WORKERS)]
    current: list[float | None] = [None] * WORKERS
    renders = []
    for index, frame in enumerate(claim_order):
        claimed, worker = heapq.heappop(claims)
        while claimed < free[worker] and withheld_from_ahead_claim(
                len(claim_order) - index, sum(1 for w, end in enumerate(free) if w != worker and end > claimed)):
            # Refused: the worker claims again once its frame is done.
            heapq.heappush(claims, (free[worker], worker))
            claimed, worker = heapq.heappop(claims)
        if current[worker] is not None:
            recent[worker] = [*recent[worker], current[worker]][-2:]
        start = free[worker] + GAP_SECONDS
        duration = seconds[frame - 1] + (WARM_UP_SECONDS if current[worker] is None else 0.0)
        current[worker], free[worker] = duration, start + duration
        renders.append(Render(frame, worker, claimed, start, start + duration))
        heapq.heappush(claims, (min(free[worker], start + claim_ahead_after(recent[worker])), worker))
    return renders


def simulate(seed: int, samples: list[int], noise: float,
             order: str = DEFAULT_RENDER_ORDER) -> dict[int, tuple[float, float]]:
    """One simulated render with its frames claimed in `order`: {checkpoint percent: (RenderQ's error %, the seed's
    error %)}."""
    rng = random.Random(seed)
    frames = len(samples)
    seconds = [(FIXED_SECONDS + SECONDS_PER_SAMPLE * s) * math.exp(rng.gauss(0.0, noise)) for s in samples]
    claim_order = in_claim_order(range(1, frames + 1), order)
    renders = claim_ahead_renders(claim_order, seconds)
    finish = max(r.end for r in renders)
    by_end = sorted(renders, key=lambda r: r.end)
    errors = {}
    for percent in CHECKPOINTS:
        now = by_end[math.ceil(frames * percent / 100) - 1].end + 1e-6
        done = [r for r in renders if r.end <= now]
        active = [eta.ActiveFrame(r.frame, r.worker, now >= r.start, r.start if now >= r.start else None)
                  for r in renders if r.claimed <= now < r.end]
        model = eta.CostModel([eta.DoneFrame(r.frame, r.end - r.start, r.worker, r.start, r.end) for r in done])
        gone = {r.frame for r in done}
        estimator = eta.TaskEstimator(model, range(1, frames + 1), gone, [f for f in claim_order if f not in gone])
        left = finish - now
        renderq = estimator.eta_seconds(active, now)
        recent = [r.end - r.start for r in sorted(done, key=lambda r: r.end)[-8:]]
        seed_eta = eta.estimate_eta(recent, frames - len(done), WORKERS)
        errors[percent] = (abs(renderq - left) / left * 100, abs(seed_eta - left) / left * 100)
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="simulated renders (default 200; quick 20)")
    parser.add_argument("--noise", type=float, default=0.05,
                        help="scatter of a frame's time about its cost, as a log-normal sigma (default 0.05)")
    parser.add_argument("--order", choices=RENDER_ORDERS, default=DEFAULT_RENDER_ORDER,
                        help=f"the order the frames are claimed in (default {DEFAULT_RENDER_ORDER})")
    add_arguments(parser, "20 renders")
    args = parser.parse_args()
    runs = args.runs or (20 if args.quick else 200)
    samples = frame_samples(FULL.frames, FULL.base_samples)
    results = Results("eta_model", quick=args.quick)
    by_checkpoint: dict[int, list[tuple[float, float]]] = {percent: [] for percent in CHECKPOINTS}
    for seed in range(runs):
        for percent, errors in simulate(seed, samples, args.noise, args.order).items():
            by_checkpoint[percent].append(errors)
    about = (f"{runs} simulated renders, {FULL.frames} frames, {WORKERS} workers, noise {args.noise:g}, "
             f"{args.order} order")
    met = 0
    for percent, pairs in by_checkpoint.items():
        ours = sorted(renderq for renderq, _ in pairs)
        seeds = [seed_error for _, seed_error in pairs]
        under = sum(1 for error in ours if error < TARGET_PERCENT) / len(ours) * 100
        better = sum(1 for renderq, seed_error in pairs if renderq < seed_error) / len(pairs) * 100
        results.add(f"RenderQ ETA error at {percent}% done, median", round(statistics.median(ours), 1),
                    "% of time left", note=f"mean {statistics.fmean(ours):.1f}%; 90th percentile "
                                          f"{ours[int(0.9 * (len(ours) - 1))]:.1f}%; {about}")
        results.add(f"renders with RenderQ's error under {TARGET_PERCENT:g}% at {percent}% done", round(under, 1),
                    "%", note=f"below the seed's in {better:.0f}%")
        results.add(f"seed ETA error at {percent}% done, median", round(statistics.median(seeds), 1),
                    "% of time left", note=f"mean {statistics.fmean(seeds):.1f}%")
        met += statistics.fmean(ours) <= TARGET_PERCENT and statistics.fmean(ours) < statistics.fmean(seeds)
    # The same targets as eta_accuracy's, on the mean error over the renders.
    results.add(f"checkpoints where RenderQ's mean error is within {TARGET_PERCENT:g}% and below the seed's", met,
                "", len(CHECKPOINTS), ">=")
    return results.finish(args.json_out)


if __name__ == "__main__":
    sys.exit(main())
