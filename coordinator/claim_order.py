"""The order a task's frames are claimed in: each frame's claim rank, fixed at submit.

"sampled" (the default) hands out the first and the last frame, then every other frame by the fractional part of
its index times the golden ratio: any prefix of the claims is spread evenly over the shot (its gaps take at most
three sizes), so the artist sees the whole shot early and the ETA measures frames from all of it. Unlike halving
the range again and again, it never lines up with a pattern that repeats every 2, 4 or 8 frames (a heavy frame every
4th: the first 8 halving claims of 80 frames hold 4 of its 20 heavy frames, and an ETA from them is 30 % too long).
"sequential" is the lowest number first. Plain Python: the store writes the ranks at submit.
"""

from __future__ import annotations

import math

from renderq.model import DEFAULT_RENDER_ORDER, RENDER_ORDERS

SAMPLED, SEQUENTIAL = RENDER_ORDERS
# 1 / the golden ratio: the irrational number worst approximated by fractions, so its multiples fill [0, 1) most
# evenly (the three-gap theorem) and in step with no period.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# A claim ahead (from a worker still rendering a frame) is refused a task's last frames while at least as many other
# workers hold frames of it, so those frames go to whichever worker is free first: a worker claims ahead from the
# times of its last frames, and one that has just begun a heavy frame after light ones claims seconds too early,
# then holds a last frame that a free worker could have rendered meanwhile. Looked for in at most this many queued
# frames, so a claim's cost stays bounded on a farm of thousands of workers.
AHEAD_GUARD_FRAMES = 256


def withheld_from_ahead_claim(queued: int, other_holders: int) -> bool:
    """Whether a claim ahead gets none of a task's `queued` frames while `other_holders` other workers hold frames
    of it: they are its last frames, kept for workers that are free (the claimant too, once its frame ends)."""
    return queued <= min(other_holders, AHEAD_GUARD_FRAMES)


def sampled_positions(count: int) -> list[int]:
    """The indices 0..count-1 in sampled order: both ends, then the others by frac(index x golden ratio); each index
    exactly once."""
    if count <= 2:
        return list(range(count))
    inner = sorted(range(1, count - 1), key=lambda index: ((index * _GOLDEN) % 1.0, index))
    return [0, count - 1, *inner]


def claim_ranks(count: int, order: str = DEFAULT_RENDER_ORDER) -> list[int]:
    """The claim rank of each of a task's `count` frames (by index, lowest number first): rank 0 is claimed first."""
    if order == SEQUENTIAL:
        return list(range(count))
    if order != SAMPLED:
        raise ValueError(f"unknown render order {order!r}")
    ranks = [0] * count
    for rank, index in enumerate(sampled_positions(count)):
        ranks[index] = rank
    return ranks


def in_claim_order(frames: range, order: str = DEFAULT_RENDER_ORDER) -> list[int]:
    """The frame numbers of `frames` in the order they are claimed."""
    if order == SEQUENTIAL:
        return list(frames)
    if order != SAMPLED:
        raise ValueError(f"unknown render order {order!r}")
    return [frames[index] for index in sampled_positions(len(frames))]
