"""Log endpoints: workers append Blender's output in batches; clients read it from an offset."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..auth import requires
from ..errors import PayloadTooLarge
from . import validation as v

logs = Blueprint("logs", __name__)

# The most one GET /get_log answers with; a client reads on from next_offset.
MAX_LOG_READ = 1024 * 1024


@logs.post("/append_log")
@requires("worker")
def append_log():
    body = v.json_body()
    task_id = v.integer(body, "task_id", minimum=1)
    worker_id = v.integer(body, "worker_id", default=None, minimum=1)
    text = v.text(body, "text", max_length=2**62)  # measured in bytes below
    limit = current_app.config["RENDERQ"].max_log_chunk
    # A character is at most 4 bytes in UTF-8: only text near the limit needs encoding to be measured.
    size = len(text) if len(text) * 4 <= limit else len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(f"the log chunk has {size} bytes, more than this coordinator's limit of {limit} "
                              "(--max-log-chunk); send it in smaller pieces")
    return jsonify({"size": current_app.extensions["renderq.scheduler"].append_log(task_id, worker_id, text)})


@logs.get("/get_log")
@requires("artist", open_read=True)
def get_log():
    return jsonify(current_app.extensions["renderq.scheduler"].read_log(
        v.integer(request.args, "task_id", minimum=1),
        v.integer(request.args, "offset", default=0, minimum=0),
        v.integer(request.args, "max_bytes", default=MAX_LOG_READ, minimum=0, maximum=MAX_LOG_READ),
    ))
