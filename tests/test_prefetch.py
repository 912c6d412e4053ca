"""When a worker claims its next frame (worker/prefetch.py): the rule the worker follows and eta_model simulates."""

from __future__ import annotations

import time

import pytest

from worker.prefetch import PrefetchTimer, claim_ahead_after


def test_the_next_frame_is_claimed_a_lead_before_the_shorter_of_the_last_two_frames_would_end():
    assert claim_ahead_after([]) == 0.0  # nothing to expect from: at once
    assert claim_ahead_after([4.0, 2.0]) == pytest.approx(2.0 - 0.5 - 0.2)
    assert claim_ahead_after([9.0, 4.0, 2.0]) == pytest.approx(2.0 - 0.5 - 0.2)  # only the last two count
    assert claim_ahead_after([0.4, 5.0]) == 0.0  # frames shorter than the lead: at once


def test_the_timer_counts_from_when_blender_began_the_frame_and_forgets_other_tasks():
    timer = PrefetchTimer()
    began = time.time()
    assert timer.delay(7, began) == 0.0
    timer.note(7, 10.0)
    timer.note(7, 6.0)
    assert timer.delay(7, began) == pytest.approx(claim_ahead_after([10.0, 6.0]), abs=0.05)
    assert timer.delay(7, began - 100.0) == 0.0  # the frame has run past it: claim now
    timer.note(8, 3.0)  # another task's frame starts the record anew
    assert timer.delay(7, began) == 0.0
    assert timer.delay(8, began) == pytest.approx(claim_ahead_after([3.0]), abs=0.05)
