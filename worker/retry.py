"""Calling the coordinator again, with backoff, while it is unreachable or failing."""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from renderq.http_client import CoordinatorError, Unavailable

__all__ = ["GaveUp", "retry", "retryable"]

# The agent's logger, not one of this module's own: these lines belong to the worker loop's log and read as such.
log = logging.getLogger("renderq.worker")

T = TypeVar("T")


class GaveUp(Exception):
    """A retried call was abandoned: the lease was revoked, the worker is stopping, or its time ran out."""


def retryable(exc: CoordinatorError) -> bool:
    """Network trouble or a fault of the coordinator itself: worth trying again later."""
    return isinstance(exc, Unavailable)


def retry(what: str, call: Callable[[], T], *, give_up: Callable[[], bool], max_backoff: float) -> T:
    """Call until it succeeds, backing off (up to `max_backoff` seconds) while the coordinator is unreachable or
    failing (5xx).

    Refusals (4xx) are raised; `give_up()` is asked after every failure and raises GaveUp when true. `what` names
    the call in the log ("cannot <what>").
    """
    delay = min(0.5, max_backoff)
    failures = 0
    while True:
        try:
            result = call()
        except CoordinatorError as exc:
            if not retryable(exc):
                raise
            failures += 1
            if failures == 1:
                log.warning("cannot %s: %s; retrying", what, exc)
            else:
                log.debug("cannot %s (try %d): %s", what, failures, exc)
        else:
            if failures:
                log.info("managed to %s after %d failed tries", what, failures)
            return result
        if give_up():
            raise GaveUp()
        end = time.monotonic() + delay
        while time.monotonic() < end:
            if give_up():
                raise GaveUp()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        delay = min(delay * 2, max_backoff)
