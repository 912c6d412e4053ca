"""Run a WSGI app (Flask) from the ASGI server in a pool of threads, with as few hops between them as possible.

a2wsgi builds the WSGI environ and reads the request body on demand (`wsgi.input` asks the event loop for each
part). Its own responder hands every part of an answer to the event loop and waits for it to be sent: four hops
between thread and loop for the smallest JSON answer, which more than halved the requests a coordinator served
per second. Here the thread runs the view and gathers its answer; an answer that fits in `WHOLE_ANSWER` bytes goes
back to the loop in the one hop that ends the thread's job. A larger one (a download) is streamed from the thread
in parts of about `STREAM_PART` bytes, each waiting until the connection took it, so a slow reader holds back the
thread, not the memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi.wsgi import Body, build_environ
from a2wsgi.wsgi_typing import Environ

# ASGI's messages and callables, as the gate (http_gate.py) and this bridge pass them.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
# A coroutine, not any awaitable: a thread hands it to the loop with run_coroutine_threadsafe.
Send = Callable[[Message], Coroutine[Any, Any, None]]

WHOLE_ANSWER = 256 * 1024
STREAM_PART = 256 * 1024


@dataclasses.dataclass
class _Answer:
    """An answer as the view gave it: status line, headers, and the parts of the body gathered so far."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    parts: list[bytes] = dataclasses.field(default_factory=list)
    size: int = 0
    # True once the thread started sending the answer itself (it was too large to hand over whole).
    streamed: bool = False

    def start_message(self) -> Message:
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}

    def take(self) -> bytes:
        body = b"".join(self.parts)
        self.parts, self.size = [], 0
        return body


class WsgiPool:
    """An ASGI app that runs `app` (WSGI) in `threads` threads."""

    def __init__(self, app: Callable[..., Iterable[bytes]], threads: int, name: str) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        # The gate passes ASGI's scope and messages as plain dicts; a2wsgi types them as TypedDicts of the same shape.
        environ = build_environ(scope, Body(loop, receive))  # type: ignore[arg-type]
        answer = await loop.run_in_executor(self.executor, self._run, environ, loop, send)
        if not answer.streamed:
            await send(answer.start_message())
            await send({"type": "http.response.body", "body": answer.take(), "more_body": False})

    def close(self) -> None:
        """Drop the requests still queued; the running ones finish on their own."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, environ: Environ, loop: asyncio.AbstractEventLoop, send: Send) -> _Answer:
        """In a thread: run the view and gather its answer, or stream it when it grows too large."""
        answer = _Answer()

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            if exc_info is not None and answer.streamed:
                raise exc_info[1].with_traceback(exc_info[2])
            answer.status = int(status.split(" ", 1)[0])
            answer.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
            return lambda data: self._add(answer, data, loop, send)

        iterable = self.app(environ, start_response)
        try:
            for data in iterable:
                self._add(answer, data, loop, send)
        finally:
            getattr(iterable, "close", lambda: None)()
        if answer.streamed:
            _send_from_thread(loop, send, {"type": "http.response.body", "body": answer.take(), "more_body": False})
        return answer

    def _add(self, answer: _Answer, data: bytes, loop: asyncio.AbstractEventLoop, send: Send) -> None:
        if not data:
            return
        answer.parts.append(data)
        answer.size += len(data)
        limit = STREAM_PART if answer.streamed else WHOLE_ANSWER
        if answer.size < limit:
            return
        if not answer.streamed:
            answer.streamed = True
            _send_from_thread(loop, send, answer.start_message())
        _send_from_thread(loop, send, {"type": "http.response.body", "body": answer.take(), "more_body": True})


def _send_from_thread(loop: asyncio.AbstractEventLoop, send: Send, message: Message) -> None:
    """Send one message on the event loop and wait until the connection took it (or was lost)."""
    asyncio.run_coroutine_threadsafe(send(message), loop).result()
