"""Log endpoints: workers append Blender's output in batches; clients read it from an offset."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..auth import requires
from .. import worker_calls
from . import validation as v

logs = Blueprint("logs", __name__)


@logs.post("/append_log")
@requires("worker")
def append_log():
    body = v.json_body()  # typed by openapi.yaml
    worker_calls.check_log_chunk(body["text"], current_app.config["RENDERQ"].max_log_chunk)
    return jsonify(worker_calls.append_log(current_app.extensions["renderq.scheduler"], body))


@logs.get("/get_log")
@requires("artist", open_read=True)
def get_log():
    fields = v.query()  # max_bytes is at most 1 MiB by the contract: a client reads on from next_offset
    return jsonify(current_app.extensions["renderq.scheduler"].read_log(fields["task_id"], fields["offset"],
                                                                        fields["max_bytes"]))
