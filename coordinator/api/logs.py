"""Log endpoints: workers append Blender's output in batches; clients read it from an offset."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..auth import requires
from .. import worker_calls
from . import validation as v

logs = Blueprint("logs", __name__)

# The most one GET /get_log answers with; a client reads on from next_offset.
MAX_LOG_READ = 1024 * 1024


@logs.post("/append_log")
@requires("worker")
def append_log():
    body = v.json_body()  # typed by openapi.yaml
    worker_calls.check_log_chunk(body["text"], current_app.config["RENDERQ"].max_log_chunk)
    return jsonify(worker_calls.append_log(current_app.extensions["renderq.scheduler"], body))


@logs.get("/get_log")
@requires("artist", open_read=True)
def get_log():
    return jsonify(current_app.extensions["renderq.scheduler"].read_log(
        v.integer(request.args, "task_id", minimum=1),
        v.integer(request.args, "offset", default=0, minimum=0),
        v.integer(request.args, "max_bytes", default=MAX_LOG_READ, minimum=0, maximum=MAX_LOG_READ),
    ))
