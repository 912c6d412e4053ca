"""Log endpoints: workers append Blender's output in batches; clients read it from an offset."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..auth import requires
from ..errors import PayloadTooLarge
from . import validation as v

logs = Blueprint("logs", __name__)


@logs.post("/append_log")
@requires("worker")
def append_log():
    body = v.json_body()  # typed by openapi.yaml; the text's length is this coordinator's limit, measured below
    task_id, worker_id, text = body["task_id"], body.get("worker_id"), body["text"]
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
    fields = v.query()  # max_bytes is at most 1 MiB by the contract: a client reads on from next_offset
    return jsonify(current_app.extensions["renderq.scheduler"].read_log(fields["task_id"], fields["offset"],
                                                                        fields["max_bytes"]))
