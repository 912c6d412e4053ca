"""The worker's frequent calls (heartbeat, claim, report, log, finish), answered by the gate without Flask.

A farm of thousands of workers sends these and little else, so each is served in the event loop: the body (a small
JSON object, or a small frame file) is read there, checked against the contract by the same functions the Flask
views use, and the store work runs in the Batcher's turns (one transaction and one fsync for many calls). A frame
file is written in a small thread pool, as its fsync must not hold up the loop. The same routes stay Flask views
for every other case (no token, tokens off, a chunked or large frame), and both call the same Scheduler methods:
this module only translates between ASGI and the domain, as the views do between WSGI and the domain.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask

from . import worker_calls
from .api import contract
from .api.validation import file_name, json_object
from .batcher import Batcher
from .errors import InsufficientStorage, RenderQError, ServiceUnavailable, database_refusal
from .scheduler import Scheduler
from .wsgi_bridge import Scope, Send

log = logging.getLogger(__name__)

# A finished frame's file at most this large is read whole in the event loop; a larger one (or one sent chunked)
# streams through the Flask view to disk.
SMALL_FRAME_BYTES = 1024 * 1024
# Threads that write (and fsync) small frame files.
FRAME_FILE_THREADS = 4

Handler = Callable[[Scope, bytes], Awaitable[dict[str, Any]]]


class FastRoutes:
    """The gate's fast path for the endpoints in `endpoints`."""

    def __init__(self, app: Flask) -> None:
        self._scheduler = app.extensions["renderq.scheduler"]
        self._blobs = app.extensions["renderq.blobs"]
        self._config = app.config["RENDERQ"]
        self._metrics = app.extensions["renderq.metrics"]
        self._batcher = Batcher(app.extensions["renderq.store"], on_turn=self._metrics.observe_turn)
        self._engine = app.extensions["renderq.store"].engine
        self._database_errors = self._engine.errors
        self._files = ThreadPoolExecutor(max_workers=FRAME_FILE_THREADS, thread_name_prefix="frame-files")
        self._handlers: dict[str, Handler] = {
            "workers.update_worker": self._json_call("/update_worker", worker_calls.heartbeat,
                                                      self._check_ridden_logs),
            "tasks.claim_frame": self._json_call("/frames/claim", worker_calls.claim),
            "tasks.update_task": self._json_call("/update_task", worker_calls.report),
            "logs.append_log": self._json_call("/append_log", worker_calls.append_log, self._check_log),
            "tasks.finish_frame": self._finish,
        }

    def body_limit(self, endpoint: str | None, content_length: int | None, chunked: bool) -> int | None:
        """The most the gate reads of this request's body for the fast path, or None when Flask serves it."""
        if endpoint not in self._handlers:
            return None
        if endpoint == "tasks.finish_frame":
            if chunked or content_length is None or content_length > SMALL_FRAME_BYTES:
                return None
            return SMALL_FRAME_BYTES
        return self._config.body_limit

    async def answer(self, endpoint: str, scope: Scope, body: bytes, send: Send) -> None:
        """Run the call and send its JSON answer (an error as {"error": sentence} with its status)."""
        status = 200
        try:
            answer = await self._handlers[endpoint](scope, body)
        except RenderQError as refusal:
            status, answer = refusal.status, {"error": refusal.message}
        except self._database_errors as error:
            self._metrics.errors.labels("database").inc()
            status, sentence = database_refusal(error, self._engine.is_unreachable(error))
            if status == 500:
                log.error("database error", exc_info=error)
            answer = {"error": sentence}
        payload = json.dumps(answer, separators=(",", ":")).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode("ascii"))]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    def close(self) -> None:
        self._batcher.close()
        self._files.shutdown(wait=False, cancel_futures=True)

    def _json_call(self, rule: str, call: Callable[[Scheduler, dict[str, Any]], dict[str, Any]],
                   check: Callable[[dict[str, Any]], None] | None = None) -> Handler:
        """The handler of a call whose body is a JSON object: checked, then run in a turn of the Batcher."""
        scheduler = self._scheduler

        async def handle(scope: Scope, body: bytes) -> dict[str, Any]:
            fields = _json(scope, body, rule)
            if check is not None:
                check(fields)
            return await self._batcher.call(lambda: call(scheduler, fields))

        return handle

    def _check_log(self, fields: dict[str, Any]) -> None:
        worker_calls.check_log_chunk(fields["text"], self._config.max_log_chunk)

    def _check_ridden_logs(self, fields: dict[str, Any]) -> None:
        worker_calls.check_ridden_logs(fields, self._config.max_log_chunk)

    async def _finish(self, scope: Scope, body: bytes) -> dict[str, Any]:
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        args: dict[str, str] = {}
        for name, value in query:
            args.setdefault(name, value)  # the first of a repeated parameter, as Flask's request.args gives
        fields = contract.query("/frames/finish", "POST", args)
        who = (fields["worker_id"], fields["task_id"], fields["frame"], fields["lease_id"])
        filename = file_name(fields["filename"], "the frame's file name")
        scheduler = self._scheduler
        preview_size = fields.get("preview_size") or 0
        preview, body = body[:preview_size], body[preview_size:]
        if preview_size:
            worker_calls.check_preview(preview, preview_size)

        def check_and_store() -> tuple[dict | None, tuple[str, int], str | None]:
            # The check only reads (committed rows, on this thread's own connection): no turn of the store thread
            # is needed before the file is stored, and the finish below stays fenced by the lease anyway.
            repeat = scheduler.check_finish(*who, filename)
            if repeat is not None:
                return repeat, ("", 0), None
            preview_sha256 = self._store_file(preview)[0] if preview else None
            return None, self._store_file(body), preview_sha256

        repeat, stored, preview_sha256 = await asyncio.get_running_loop().run_in_executor(
            self._files, check_and_store)
        if repeat is not None:
            return {"frame": repeat}
        frame = await self._batcher.call(lambda: scheduler.finish_frame(
            *who, (filename, *stored), started_at=fields.get("started_at"), ended_at=fields.get("ended_at"),
            render_seconds=fields.get("render_seconds"), preview_sha256=preview_sha256))
        return {"frame": frame}

    def _store_file(self, body: bytes) -> tuple[str, int]:
        try:
            return self._blobs.put_stream(io.BytesIO(body), limit=self._config.upload_limit)
        except (OSError, InsufficientStorage, ServiceUnavailable):
            self._metrics.errors.labels("object_store").inc()
            raise


def _json(scope: Scope, body: bytes, rule: str) -> dict[str, Any]:
    """The body as the JSON object the operation documents (the Flask views' own parser and checks)."""
    mimetype = ""
    for name, value in scope["headers"]:
        if name == b"content-type":
            mimetype = value.decode("latin-1").split(";", 1)[0].strip().lower()
            break
    return json_object(body, mimetype, rule, scope["method"])
