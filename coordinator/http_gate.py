"""The coordinator's front door: an ASGI app that decides from a request's head alone whether, and how much of,
its body the coordinator reads, then runs the Flask app in a thread pool.

Before any byte of a body is read, the gate matches the route with the Flask app's own URL map, checks the Bearer
token against the role of the route's `@requires` decorator, and checks the announced size:
- a request whose credentials cannot pass the route's check goes to Flask without its body; Flask's own check
  refuses it (401/403) and the connection closes. Nothing unauthenticated is read, let alone spooled;
- an upload (an upload route, with a token that may use it) is streamed to its view, which writes it into the data
  dir: its announced size is checked against the upload limit and against the free space (less what uploads in
  progress still announce) minus the disk reserve; a chunked one is counted as it arrives; one that stalls is cut;
- any other body is read whole in the event loop, within the body timeout and the body limit (a small fixed limit
  without a token), before a thread runs the view, so a slow client never holds a thread.
Flask runs in two thread pools (see wsgi_bridge.py): one for uploads and downloads, which may take long, and one
for everything else, so heartbeats never wait behind slow transfers. The views keep their own checks: the gate is
an early door, not the only one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.http import parse_cookie
from werkzeug.routing import RequestRedirect

from .auth import parse_bearer
from .config import Config
from .errors import BadRequest, PayloadTooLarge, RenderQError, RequestTimeout
from .fast_routes import FastRoutes
from .wsgi_bridge import Message, Receive, Scope, Send, WsgiPool

# The routes whose body is a file: the only ones that take more than the body limit.
UPLOAD_ENDPOINTS = frozenset({"files.upload_blend", "files.upload_file", "tasks.upload_frame",
                              "tasks.finish_frame"})
# Routes whose answer is a file, which a slow client may take long to read.
DOWNLOAD_ENDPOINTS = frozenset({"files.download_file", "tasks.download_frame", "files.download_frames_zip"})
TRANSFER_ENDPOINTS = UPLOAD_ENDPOINTS | DOWNLOAD_ENDPOINTS
# Without a valid token a request sends a few form fields at most (the login form, a change from the status page).
ANONYMOUS_BODY_LIMIT = 64 * 1024
# After an answer that came before the body was read, the rest of the body is read and dropped when it is at most
# this many bytes, for at most this many seconds; a larger rest is not waited for, the connection just closes.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 2.0

_NO_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


class _ClientGone(Exception):
    """The client closed its connection while the gate was reading the body: nobody to answer."""


@dataclasses.dataclass(frozen=True)
class RequestHead:
    """What the gate needs from a request's head."""

    method: str
    path: str
    content_length: int | None
    chunked: bool
    authorization: str | None
    cookie: str

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def unread_at_start(self) -> float:
        """Bytes of body still to come before any is read (a chunked body: as many as the gate would drain)."""
        return DRAIN_BYTES if self.chunked else self.content_length or 0

    @classmethod
    def of(cls, scope: Scope) -> "RequestHead":
        """Read the head of an ASGI HTTP scope."""
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            found.setdefault(name, value)
        length = found.get(b"content-length")
        if length is not None and not length.strip().isdigit():
            raise BadRequest("the Content-Length header must be a number of bytes")
        authorization = found.get(b"authorization")
        return cls(method=scope["method"], path=scope["path"],
                   content_length=int(length) if length is not None else None,
                   chunked=b"transfer-encoding" in found,
                   authorization=authorization.decode("latin-1") if authorization is not None else None,
                   cookie=found.get(b"cookie", b"").decode("latin-1"))


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the gate handles one request's body: `limit` 0 means Flask gets none (it refuses the request)."""

    endpoint: str | None
    limit: int
    streamed: bool
    # Answered by the fast routes (fast_routes.py), not Flask.
    fast: bool = False


class Gate:
    """The ASGI app the HTTP server runs: see the module docstring."""

    def __init__(self, app: Flask, config: Config) -> None:
        missing = TRANSFER_ENDPOINTS - set(app.view_functions)
        if missing:
            raise ValueError(f"the HTTP gate names routes the app does not have: {', '.join(sorted(missing))}")
        self._app = app
        self._config = config
        self._tokens = app.extensions["renderq.tokens"]
        self._blobs = app.extensions["renderq.blobs"]
        self._urls = app.url_map.bind("localhost")
        self._static_routes = _static_routes(app)
        self._session_cookie = app.config["SESSION_COOKIE_NAME"]
        wsgi = _terminated_input(app)
        self._api = WsgiPool(wsgi, config.http_threads, "http")
        self._transfers = WsgiPool(wsgi, config.transfer_threads, "transfer")
        self._uploads: set[_UploadBody] = set()
        self._fast = FastRoutes(app)
        self._metrics = app.extensions["renderq.metrics"]

    def close(self) -> None:
        """Stop the thread pools: queued requests are dropped, running ones finish on their own."""
        for pool in (self._api, self._transfers):
            pool.close()
        self._fast.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan events (the server runs without them) and no WebSocket routes
        started = time.perf_counter()
        endpoint: str | None = None
        try:
            endpoint = await self._serve(scope, receive, send)
        finally:
            self._metrics.observe_request(endpoint, started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> str | None:
        """Answer one request; returns its endpoint (None when no route matched or the head was refused)."""
        unread: float = DRAIN_BYTES  # the body left unread if the gate refuses the request
        try:
            head = RequestHead.of(scope)
            unread = head.unread_at_start
            plan = self._plan(head)
            if plan.streamed:
                upload = self._admit_upload(head, receive)
            else:
                body = await self._read_body(receive, head, plan.limit) if plan.limit else b""
        except _ClientGone:
            return None
        except (RenderQError, HTTPException) as refusal:
            # A client that stopped sending gets no time to send the rest.
            await _refuse(send, receive, refusal, math.inf if isinstance(refusal, RequestTimeout) else unread)
            return None
        if plan.fast:
            await self._fast.answer(plan.endpoint or "", scope, body, send)
            return plan.endpoint
        pool = self._transfers if plan.limit and plan.endpoint in TRANSFER_ENDPOINTS else self._api
        if not plan.limit:
            # Flask's own check refuses it without reading anything.
            await pool(scope, _no_body, _finishing(send, receive, lambda: unread))
        elif plan.streamed:
            self._uploads.add(upload)
            try:
                await pool(scope, upload.receive, _finishing(send, receive, upload.unread))
            finally:
                self._uploads.discard(upload)
        else:
            await pool(_with_length(scope, head, len(body)), _replay(body, receive), send)
        return plan.endpoint

    def _plan(self, head: RequestHead) -> Plan:
        """Match the route and weigh the credentials; refuses (an exception) a route that does not exist."""
        endpoint = self._static_routes.get((head.path, head.method))
        if endpoint is None:
            try:
                endpoint, _ = self._urls.match(head.path, method=head.method)
            except RequestRedirect:
                return Plan(None, ANONYMOUS_BODY_LIMIT, streamed=False)  # Flask answers with the redirect
        role = getattr(self._app.view_functions.get(endpoint), "renderq_role", None)
        trusted, entitled = self._credentials(head, role)
        if not entitled:
            return Plan(endpoint, 0, streamed=False)
        if not trusted:
            return Plan(endpoint, ANONYMOUS_BODY_LIMIT, streamed=False)
        # A worker's frequent calls with a worker (or admin) token skip Flask; without tokens, Flask's own
        # same-origin check applies, so they go through it.
        fast_limit = self._fast.body_limit(endpoint, head.content_length, head.chunked) \
            if self._tokens.enabled else None
        if fast_limit is not None:
            return Plan(endpoint, fast_limit, streamed=False, fast=True)
        if endpoint in UPLOAD_ENDPOINTS:
            return Plan(endpoint, self._config.upload_limit, streamed=True)
        return Plan(endpoint, self._config.body_limit, streamed=False)

    def _credentials(self, head: RequestHead, role: str | None) -> tuple[bool, bool]:
        """(trusted: a valid token, or auth is off; entitled: the route's own check may let the request through)."""
        if not self._tokens.enabled:
            return True, True
        token = parse_bearer(head.authorization) if head.authorization is not None else None
        if token is not None:
            found = self._tokens.identify(token)
            if found is None:
                return False, role is None
            return True, role is None or found.has(role)
        if role is None:
            return False, True  # public routes and pages: they check the login cookie themselves
        # The login cookie is checked by Flask (it is signed); until then the request is anonymous.
        has_session = self._session_cookie in parse_cookie(head.cookie)
        open_read = self._config.open_status and head.method in ("GET", "HEAD")
        return False, has_session or open_read

    async def _read_body(self, receive: Receive, head: RequestHead, limit: int) -> bytes:
        """The whole body, read in the event loop within the body timeout and the limit."""
        if head.content_length is not None and head.content_length > limit:
            raise PayloadTooLarge(_too_large(limit))
        if not head.has_body:
            return b""
        if _arrived_whole(receive):
            return await _take_body(receive, limit)  # nothing to wait for: no timer to arm
        try:
            async with asyncio.timeout(self._config.body_timeout):
                return await _take_body(receive, limit)
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {self._config.body_timeout:g} "
                                 "seconds") from None

    def _admit_upload(self, head: RequestHead, receive: Receive) -> "_UploadBody":
        """Check an upload's announced size against the limit and the disk; its body, to stream to the view."""
        limit = self._config.upload_limit
        announced = head.content_length or 0
        if announced > limit:
            raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
        # Uploads in progress will still write what they announced: count it as already gone.
        self._blobs.check_space(announced + sum(upload.still_coming for upload in self._uploads))
        return _UploadBody(receive, announced, limit, self._config.transfer_idle_timeout)


async def _take_body(receive: Receive, limit: int) -> bytes:
    """Read a body to its end, refusing it past `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit))
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _arrived_whole(receive: Receive) -> bool:
    """Whether the server already holds the request's whole body, so reading it cannot wait. Most bodies of the
    workers' calls arrive with their head; arming a timer for them cost more than the rest of reading them. (This
    reads uvicorn's request cycle, whose version is pinned for http_protocol.py anyway.)"""
    cycle = getattr(receive, "__self__", None)
    return (cycle is not None and getattr(cycle, "more_body", True) is False
            and getattr(cycle, "message_event", None) is not None and cycle.message_event.is_set())


class _UploadBody:
    """An upload's body as the view reads it: counted, cut past the limit, and cut when it stalls."""

    def __init__(self, receive: Receive, announced: int, limit: int, idle_timeout: float) -> None:
        self._receive = receive
        self._announced = announced
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.received = 0
        self.done = False

    @property
    def still_coming(self) -> int:
        """Bytes announced but not received yet."""
        return max(0, self._announced - self.received)

    def unread(self) -> float:
        """Bytes of the body not read yet (a chunked body: as many as the gate would drain)."""
        if self.done:
            return 0
        return self.still_coming if self._announced else DRAIN_BYTES

    async def receive(self) -> Message:
        """The next part of the body; errors reach the view as exceptions from its read, so Flask answers them."""
        if self.done:
            return _NO_BODY
        try:
            async with asyncio.timeout(self._idle_timeout):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeout(f"the upload stalled: nothing arrived for {self._idle_timeout:g} seconds") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client closed the connection before the whole upload arrived")
        self.received += len(message.get("body", b""))
        if self.received > self._limit:
            raise PayloadTooLarge(f"the upload is larger than the coordinator's upload limit of {self._limit} bytes")
        self.done = not message.get("more_body", False)
        return message


def _static_routes(app: Flask) -> dict[tuple[str, str], str]:
    """{(path, method): endpoint} of the routes without variable parts: an exact path is looked up in this dict,
    as matching it through the URL map costs more than the rest of a heartbeat. Other paths use the map."""
    routes: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        if rule.arguments or rule.host or rule.subdomain:
            continue
        for method in rule.methods or ():
            routes.setdefault((rule.rule, method), rule.endpoint)
    return routes


def _terminated_input(app: Flask) -> Callable[..., Any]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # The gate hands every body over whole, or ending in an exception: never cut short without a word. This
        # also lets Werkzeug read a chunked upload, which has no Content-Length.
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return wsgi


async def _no_body() -> Message:
    return _NO_BODY


def _replay(body: bytes, receive: Receive) -> Receive:
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _with_length(scope: Scope, head: RequestHead, length: int) -> Scope:
    """The scope with the body's real length (a chunked body was read whole), so Flask sees a plain body."""
    if not head.chunked:
        return scope
    headers = [(name, value) for name, value in scope["headers"]
               if name not in (b"transfer-encoding", b"content-length")]
    headers.append((b"content-length", str(length).encode("ascii")))
    return {**scope, "headers": headers}


def _finishing(send: Send, receive: Receive, unread: Callable[[], float]) -> Send:
    """`send`, for an answer that may come before the whole body was read: that closes the connection, after the
    rest of a small body was drained."""
    closing = False

    async def wrapped(message: Message) -> None:
        nonlocal closing
        if message["type"] == "http.response.start" and unread():
            closing = True
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        elif message["type"] == "http.response.body" and closing and not message.get("more_body", False):
            await send({**message, "more_body": True})
            await _drain(receive, unread())
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return wrapped


async def _drain(receive: Receive, unread: float) -> None:
    """Read and drop the rest of a body, if small, so that a client which sends its whole body before reading
    (most do) gets the answer already sent rather than a broken pipe. Dropped bytes cost no disk and no thread."""
    if not 0 < unread <= DRAIN_BYTES:
        return
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while drained <= DRAIN_BYTES:
                message = await receive()
                drained += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes, the most the coordinator reads for this request"


async def _refuse(send: Send, receive: Receive, refusal: RenderQError | HTTPException, unread: float) -> None:
    """Answer with a JSON error ({"error": sentence}) from the gate itself, before the body (`unread` bytes of it)
    was read."""
    if isinstance(refusal, RenderQError):
        status, message, extra = refusal.status, refusal.message, []
    else:
        status, message = refusal.code or 400, refusal.description or refusal.name
        extra = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                 for name, value in refusal.get_headers() if name.lower() == "allow"]
    body = json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii")), *extra]
    finish = _finishing(send, receive, lambda: unread)
    await finish({"type": "http.response.start", "status": status, "headers": headers})
    await finish({"type": "http.response.body", "body": body, "more_body": False})
