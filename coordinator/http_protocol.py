"""uvicorn's HTTP/1.1 protocol (httptools) with the guards it lacks against idle, slow and greedy connections.

uvicorn times out nothing before a request's headers are complete (its keep-alive timer only runs between requests,
and every byte cancels it), bounds neither the size of those headers nor the number of connections, and waits
forever on a client that stops reading an answer. Each connection here gets:
- a deadline for the request head, armed when it connects or a request's first byte arrives; past it, it is closed;
- a cap on the head's size (431 past it);
- a cap on open connections (503 past it);
- a stall timer while the answer waits for the client to read: past it, the connection is aborted, so a thread
  sending a download is freed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("renderq.coordinator.http")

# Request line plus headers: a token, a cookie and a few standard headers take a few KB.
MAX_HEAD_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """The guards' settings, shared by every connection of one server."""

    header_timeout: float
    stall_timeout: float
    max_connections: int


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that applies `limits` to every connection."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def canned_answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP answer with a JSON error body that closes the connection, for the protocol layer."""
    body = json.dumps({"error": message}).encode("utf-8")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; `limits` is set by guarded_protocol()."""

    limits: ConnectionLimits

    # Narrower than asyncio's BaseTransport, as in uvicorn's own protocol: a TCP server hands it a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        over_limit = len(self.server_state.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if over_limit:
            _warn_now_and_then(f"refusing connections: {self.limits.max_connections} are open, the most allowed "
                               "(--max-connections)")
            self._answer_and_close(503, "Service Unavailable",
                                   "the coordinator has too many open connections; try again shortly")
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        self._cancel_stall_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        reading_head = self._head_timer is not None
        if reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still no end of the head after more than the cap: the head alone is too big (a body never counts here,
        # since the count restarts once a head is complete).
        if reading_head and self._head_timer is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._cancel_head_deadline()
            self._answer_and_close(431, "Request Header Fields Too Large",
                                   f"the request's headers are larger than {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.limits.stall_timeout, self._reading_stalled)

    def resume_writing(self) -> None:
        self._cancel_stall_timer()
        super().resume_writing()

    def timeout_keep_alive_handler(self) -> None:
        self._close_now()

    def _arm_head_deadline(self) -> None:
        # Armed once per head: a byte now and then does not push the deadline back.
        if self._head_timer is None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a request still being answered: its time starts when that answer is done.
            self._arm_head_deadline()
            return
        log.debug("closed a connection from %s: no complete request head within %g s", _peer(self.client),
                  self.limits.header_timeout)
        self._close_now()

    def _reading_stalled(self) -> None:
        self._stall_timer = None
        log.debug("aborted a connection from %s: it read nothing of its answer for %g s", _peer(self.client),
                  self.limits.stall_timeout)
        self.transport.abort()

    def _answer_and_close(self, status: int, reason: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(canned_answer(status, reason, message))
            self.transport.close()

    def _close_now(self) -> None:
        # close() would wait for the client to read what is still buffered, which an idle client never does.
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()


_last_warning = 0.0
# A flood of connections must not become a flood of log lines (another way to fill the disk).
_WARNING_INTERVAL = 60.0


def _warn_now_and_then(message: str) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARNING_INTERVAL:
        _last_warning = now
        log.warning(message)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown address"
