"""The errors of the coordinator's HTTP client (renderq.http_client), one class per way a call can fail.

Callers catch what they can act on (LeaseLost: drop the frame; Unavailable: try again later; Unauthorized: fix the
token) instead of comparing status numbers; every error still carries the HTTP `status` (0 when there was none).
Standard library only: the Blender add-on bundles this file.
"""

from __future__ import annotations

import http.client
import socket

__all__ = ["Conflict", "CoordinatorError", "CoordinatorUnreachable", "DiskFull", "DownloadRefused", "Forbidden",
           "Invalid", "LeaseLost", "NotFound", "TooLarge", "Unauthorized", "Unavailable", "describe_failure",
           "error_for"]


class CoordinatorError(Exception):
    """The coordinator refused a request, or the exchange with it failed.

    `status` is the HTTP status of the refusal, or 0 when there was no HTTP error answer (coordinator unreachable,
    a download that does not match its hash). `message` is one plain sentence.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


class Invalid(CoordinatorError):
    """The request was refused as malformed or too large (400, 413, 415, 422): sending it again will not help."""


class TooLarge(Invalid):
    """The upload or the request is larger than the coordinator takes (413)."""


class Unauthorized(CoordinatorError):
    """The token is missing or unknown (401), or its role may not do this (403: Forbidden)."""


class Forbidden(Unauthorized):
    """The token is known, but its role (or its owner) may not do this (403)."""


class NotFound(CoordinatorError):
    """What the request names does not exist (404): a task, a worker, a stored file."""


class Conflict(CoordinatorError):
    """The request contradicts the farm's state (409): a task still running, an ended task."""


class LeaseLost(Conflict):
    """409 on a call fenced by a lease: this worker no longer holds the frame, so it must drop it."""


class Unavailable(CoordinatorError):
    """The coordinator could not answer now (5xx, a request timeout, no connection): try again later."""


class DiskFull(Unavailable):
    """The coordinator's disk is too full to store the upload (507)."""


class DownloadRefused(CoordinatorError):
    """The client itself refused a download (status 0): a link or folder in the way, an unsafe file name, bytes
    that do not match their hash, a download cut short."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


class CoordinatorUnreachable(Unavailable):
    """The coordinator could not be reached: connection refused, unknown host, timeout, connection cut."""

    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach the coordinator at {base_url} ({reason})")
        self.reason = reason


_ERRORS_BY_STATUS: dict[int, type[CoordinatorError]] = {
    400: Invalid, 413: TooLarge, 415: Invalid, 422: Invalid, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    408: Unavailable, 409: Conflict, 507: DiskFull,
}


def error_for(status: int, message: str, *, lease_fenced: bool = False) -> CoordinatorError:
    """The typed error for an HTTP refusal; a 409 on a lease-fenced call is LeaseLost."""
    if status == 409 and lease_fenced:
        return LeaseLost(status, message)
    kind = _ERRORS_BY_STATUS.get(status) or (Unavailable if status >= 500 else CoordinatorError)
    return kind(status, message)


def describe_failure(exc: BaseException, timeout: float) -> str:
    """Turn a socket-level exception into a short human reason."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"host name not found: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "the connection was cut"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = str(exc) or type(exc).__name__
    return text
