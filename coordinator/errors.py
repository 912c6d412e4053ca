"""Domain errors: each carries the HTTP status the API layer answers with and a plain sentence."""


class RenderQError(Exception):
    """A request the coordinator refuses; nothing stored was changed."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RenderQError):
    status = 400


class NotFound(RenderQError):
    status = 404


class Conflict(RenderQError):
    """The request is well formed but contradicts the current state (a lost lease, an ended task)."""

    status = 409


class PayloadTooLarge(RenderQError):
    status = 413


class UnsupportedMediaType(RenderQError):
    """A body sent with the wrong Content-Type (JSON must be declared as application/json)."""

    status = 415


class InsufficientStorage(RenderQError):
    status = 507


class Forbidden(RenderQError):
    """The caller is known but may not do this (an artist canceling someone else's task)."""

    status = 403


class RequestTimeout(RenderQError):
    """The client stopped sending its request (a body that does not arrive in time, an upload that stalls)."""

    status = 408
