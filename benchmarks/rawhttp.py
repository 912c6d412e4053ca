"""The least HTTP/1.1 client that serves the throughput benchmark's load generator, on asyncio protocols.

A kept-alive connection carries one request at a time; requests are POSTs built from a prebuilt head, answers are
read with a parser for the status line, Content-Length and the body (the coordinator always sends one). Two ways to
call: `Connections.call` from a coroutine (a simulated worker's pool: an idle connection or a new one), and
`Periodic`, a call repeated on its own connection driven by callbacks alone (no task, no future per call), for the
frequent calls that need no coroutine: heartbeats and log lines. Requests waiting longer than REQUEST_TIMEOUT are
failed by one sweep a second (`Coordinator.time_out_late_answers`), cheaper than a timer per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Connection", "Connections", "Coordinator", "Periodic", "REQUEST_TIMEOUT", "parse_answer"]

# The longest one request may take before it counts as failed (the real client's default timeout).
REQUEST_TIMEOUT = 30.0


def parse_answer(buffer: bytearray) -> tuple[int, bytes, bool] | None:
    """(status, body, keep the connection) of the answer at the start of `buffer`, removed from it; None while the
    answer is incomplete. ValueError for an answer this parser does not take (no Content-Length)."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > 65536:
            raise ValueError("an answer head longer than 64 KiB")
        return None
    head = bytes(buffer[:head_end]).lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("an answer without Content-Length")
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
    body_start = head_end + 4
    if len(buffer) < body_start + length:
        return None
    body = bytes(buffer[body_start:body_start + length])
    del buffer[:body_start + length]
    return int(head[9:12]), body, b"\r\nconnection: close" not in head


class Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection carrying one request at a time."""

    __slots__ = ("transport", "buffer", "waiter", "closed", "deadline")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a TCP connection its Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = parse_answer(self.buffer)
        except ValueError as error:
            self.waiter = None
            waiter.set_exception(error)
            return
        if answer is not None:
            self.waiter = None
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("the coordinator closed the connection before answering"))

    def time_out(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"no answer within {REQUEST_TIMEOUT:g} s"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def exchange(self, request: bytes, waiting: set[Connection | Periodic]) -> tuple[int, bytes, bool]:
        """Send one request, wait for its answer: (status, body, keep the connection). `waiting` holds the
        connections waiting for an answer, for the sweep that times them out (cheaper than a timer each)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        self.buffer.clear()  # whatever came unasked between two requests is no answer to this one
        self.deadline = loop.time() + REQUEST_TIMEOUT
        waiting.add(self)
        self.transport.write(request)
        try:
            return await waiter
        finally:
            waiting.discard(self)


class Coordinator:
    """Where the simulated workers call: the address, the prebuilt request heads, and how connections open."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.head = (f"HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "User-Agent: renderq-throughput\r\nContent-Length: ").encode("latin-1")
        self.opened = 0
        # Requests sent again because the coordinator closed their kept-alive connection as they went out.
        self.resent = 0
        self.waiting: set[Connection | Periodic] = set()

    def request(self, target: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
        """The bytes of one POST."""
        return (b"POST " + target.encode("latin-1") + b" " + self.head + str(len(body)).encode()
                + b"\r\nContent-Type: " + content_type + b"\r\n\r\n" + body)

    async def connect(self) -> Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(Connection, self.host, self.port)
        self.opened += 1
        return protocol

    async def time_out_late_answers(self) -> None:
        """Every second, fail the requests that have waited longer than REQUEST_TIMEOUT."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for connection in [c for c in self.waiting if c.deadline < now]:
                connection.time_out()


class Connections:
    """One simulated worker's kept-alive connections: a call takes an idle one or opens another."""

    __slots__ = ("coordinator", "idle")

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.idle: list[Connection] = []

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """One request: (status, body). Raises OSError (TimeoutError too) or ValueError when not answered."""
        waiting = self.coordinator.waiting
        while self.idle:
            connection = self.idle.pop()
            if connection.closed:
                continue
            try:
                return self._kept(connection, await connection.exchange(request, waiting))
            except ConnectionError:
                # Closed by the coordinator as the request went out: once more on a new one, as the real client does.
                self.coordinator.resent += 1
                break
            except BaseException:
                connection.close()
                raise
        connection = await self.coordinator.connect()
        try:
            return self._kept(connection, await connection.exchange(request, waiting))
        except BaseException:
            connection.close()
            raise

    def _kept(self, connection: Connection, answer: tuple[int, bytes, bool]) -> tuple[int, bytes]:
        status, body, keep = answer
        if keep and not connection.closed:
            self.idle.append(connection)
        else:
            connection.close()
        return status, body

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()



class Periodic(asyncio.Protocol):
    """A call repeated on its own kept-alive connection, from loop callbacks alone: `build()` gives the next
    request (None: nothing to send this time), `answered(status, body, error)` takes what came back, and the next
    call is due `interval()` seconds after the last one ended, as a worker thread that waits between its calls.
    `timed(started_wall, seconds, error)` is told of each call."""

    def __init__(self, coordinator: Coordinator, build: Callable[[], bytes | None],
                 answered: Callable[[int, bytes], None], interval: Callable[[], float],
                 timed: Callable[[float, float, str | None, int], None]) -> None:
        self.coordinator = coordinator
        self.build = build
        self.answered = answered
        self.interval = interval
        self.timed = timed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: bytes | None = None
        self.waiting = False
        self.wall = 0.0
        self.started = 0.0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.connecting: asyncio.Future | None = None
        self.request: bytes | None = None
        self.resending = False
        self.calls = 0
        self.stopped = False

    def start(self, delay: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(delay, self.due)

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
        if self.connecting is not None:
            self.connecting.cancel()
        if self.transport is not None:
            self.transport.abort()

    def due(self) -> None:
        if self.stopped:
            return
        request = self.build()
        if request is None:
            self.start(self.interval())
        elif self.transport is None:
            self.pending = request
            self.connecting = asyncio.ensure_future(self._connect())  # held: the loop keeps only weak references
        else:
            self._send(request)

    async def _connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, self.coordinator.host,
                                                               self.coordinator.port)
        except OSError as error:
            if self.waiting:  # a request sent again could not be
                self._ended(0, b"", f"{type(error).__name__}: {error}")
            else:
                self.timed(time.time(), 0.0, f"{type(error).__name__}: {error}", 0)
                self.start(self.interval())
            return
        self.coordinator.opened += 1
        request, self.pending = self.pending, None
        if request is not None and not self.stopped:
            self._send(request)

    def _send(self, request: bytes) -> None:
        assert self.transport is not None
        self.request = request
        self.buffer.clear()
        if not self.resending:
            self.wall, self.started = time.time(), time.perf_counter()
        self.deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT
        self.waiting = True
        self.coordinator.waiting.add(self)
        self.transport.write(request)

    def _ended(self, status: int, body: bytes, error: str | None) -> None:
        self.calls += 1
        self.resending = False
        self.waiting = False
        self.coordinator.waiting.discard(self)
        self.timed(self.wall, time.perf_counter() - self.started, error, status)
        if error is None:
            self.answered(status, body)
        if not self.stopped:
            self.start(self.interval())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a TCP connection its Transport
        self.buffer.clear()
        self.calls = 0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.waiting:
            return
        try:
            answer = parse_answer(self.buffer)
        except ValueError as error:
            self._ended(0, b"", f"ValueError: {error}")
            self.stop_connection()
            return
        if answer is not None:
            status, body, keep = answer
            if not keep:
                self.stop_connection()
            self._ended(status, body, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            return  # the late word of a connection this caller had already let go of
        self.transport = None
        if self.stopped:
            # Closed by stop() at the end of the run: the call in flight is dropped, neither sent again nor counted
            # as the coordinator's error (runs with many calls in flight at the end counted hundreds so).
            self.waiting = False
            self.coordinator.waiting.discard(self)
            return
        if self.waiting:
            if self.calls and not self.resending and self.request is not None:
                # Closed by the coordinator as the request went out on a kept-alive connection: sent once more on a
                # new one, as the real client does.
                self.resending = True
                self.coordinator.resent += 1
                self.pending = self.request
                self.connecting = asyncio.ensure_future(self._connect())
                return
            self._ended(0, b"", "ConnectionError: the coordinator closed the connection before answering")

    def time_out(self) -> None:
        if self.waiting:
            if self.connecting is not None:
                self.connecting.cancel()  # a resend still connecting: the next call is scheduled below instead
            self.pending = None
            self._ended(0, b"", f"TimeoutError: no answer within {REQUEST_TIMEOUT:g} s")
            self.stop_connection()

    def stop_connection(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
