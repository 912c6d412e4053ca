"""Domain errors: each carries the HTTP status the API layer answers with and a plain sentence."""

from __future__ import annotations

from typing import Any


class RenderQError(Exception):
    """A request the coordinator refuses; nothing stored was changed."""

    status = 400

    def __init_subclass__(cls, status: int | None = None, **kwargs: Any) -> None:
        # Each error class names its status once, in its header: `class NotFound(RenderQError, status=404)`; a
        # subclass that names none keeps its parent's.
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RenderQError, status=400):
    """The request is malformed or names a value the coordinator cannot accept."""


class NotFound(RenderQError, status=404):
    """The task, worker, frame or file the request names does not exist."""


class Conflict(RenderQError, status=409):
    """The request is well formed but contradicts the current state (a lost lease, an ended task)."""


class PayloadTooLarge(RenderQError, status=413):
    """The request is larger than a configured limit allows."""


class UnsupportedMediaType(RenderQError, status=415):
    """A body sent with the wrong Content-Type (JSON must be declared as application/json)."""


class InsufficientStorage(RenderQError, status=507):
    """Storing the upload would eat into the disk reserve of the data dir."""


class ServiceUnavailable(RenderQError, status=503):
    """A service the coordinator relies on (the object store) cannot serve the request now; nothing was changed."""


class Forbidden(RenderQError, status=403):
    """The caller is known but may not do this (an artist canceling someone else's task)."""


class RequestTimeout(RenderQError, status=408):
    """The client stopped sending its request (a body that does not arrive in time, an upload that stalls)."""


def database_refusal(error: Exception, unreachable: bool = False) -> tuple[int, str]:
    """The (status, sentence) a database error is answered with: a database that cannot be reached now
    (`unreachable`, as its engine says) is a 503, on which a client of a cluster moves to another coordinator, and
    so is a write that lost to another coordinator's locks; a full disk says so (its transaction rolled back,
    nothing was stored); any other is a server error, to be logged with its traceback."""
    if unreachable:
        return 503, "the coordinator cannot reach its database now; try again, or another coordinator of the farm"
    # PostgreSQL: a write that waited too long for (or deadlocked on) rows another coordinator holds, even after the
    # batcher's turns gave way (lock_not_available, deadlock_detected, serialization_failure). Undone; worth again.
    if getattr(error, "sqlstate", None) in ("55P03", "40P01", "40001"):
        return 503, ("the farm's database is busy with the same rows on another coordinator: nothing was changed; "
                     "try again")
    # SQLite says "database or disk is full"; PostgreSQL gives SQLSTATE 53100 (disk_full).
    if "full" in str(error).lower() or getattr(error, "sqlstate", None) == "53100":
        return 507, ("the coordinator's disk is full: nothing was changed; free space on its data dir and try "
                     "again")
    return 500, "the coordinator's database failed; see its log"
