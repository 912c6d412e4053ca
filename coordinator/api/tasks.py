"""Task and frame endpoints: submit, claim, report, list, detail, cancel, frame files."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request, send_file

from ..blobs import is_sha256
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..scheduler import TaskSpec
from . import validation as v

tasks = Blueprint("tasks", __name__)


def _scheduler():
    return current_app.extensions["renderq.scheduler"]


def _blobs():
    return current_app.extensions["renderq.blobs"]


@tasks.post("/submit_task")
def submit_task():
    body = v.json_body()
    blend_sha256 = v.text(body, "blend_sha256", max_length=64)
    if not is_sha256(blend_sha256):
        raise BadRequest("'blend_sha256' must be a SHA-256 in lowercase hex")
    if not _blobs().exists(blend_sha256):
        raise BadRequest(f"no uploaded .blend has SHA-256 {blend_sha256}; upload it with /upload_blend first")
    frame_start = v.integer(body, "frame_start", minimum=-1_048_574, maximum=1_048_574)
    frame_end = v.integer(body, "frame_end", minimum=-1_048_574, maximum=1_048_574)
    frame_step = v.integer(body, "frame_step", default=1, minimum=1, maximum=1_048_574)
    if frame_end < frame_start:
        raise BadRequest(f"the frame range {frame_start}-{frame_end} is empty: the end is before the start")
    workers = body.get("workers") or []
    if not isinstance(workers, list) or not all(isinstance(w, str) for w in workers) or len(workers) > 10_000:
        raise BadRequest("'workers' must be a list of worker names (empty for automatic assignment)")
    for worker in workers:
        v.check_name(worker, "workers")
    settings = body.get("settings") or {}
    if not isinstance(settings, dict):
        raise BadRequest("'settings' must be a JSON object")
    blend_filename = v.name(body, "blend_filename", default="scene.blend")
    spec = TaskSpec(
        name=v.name(body, "name", default=blend_filename.removesuffix(".blend")),
        blend_sha256=blend_sha256,
        blend_filename=blend_filename,
        frame_start=frame_start,
        frame_end=frame_end,
        frame_step=frame_step,
        priority=v.integer(body, "priority", default=0, minimum=-1_000_000, maximum=1_000_000),
        workers=sorted(set(workers)),
        submitted_by=v.text(body, "submitted_by", default="", max_length=200),
        settings=settings,
    )
    return jsonify(_scheduler().submit_task(spec)), 201


@tasks.route("/get_task", methods=["GET", "POST"])
def get_task():
    source = dict(request.args)
    if request.method == "POST" and request.content_length:
        source.update(v.json_body())
    prefer = v.integer(source, "prefer_task_id", default=None)
    frame, reason = _scheduler().claim(v.integer(source, "worker_id", minimum=1), prefer)
    return jsonify({"frame": frame, "wait_reason": reason})


@tasks.post("/update_task")
def update_task():
    body = v.json_body()
    frame = _scheduler().report(
        worker_id=v.integer(body, "worker_id", minimum=1),
        task_id=v.integer(body, "task_id", minimum=1),
        frame=v.integer(body, "frame"),
        lease_id=v.text(body, "lease_id", max_length=64),
        status=v.text(body, "status", max_length=20),
        started_at=v.number(body, "started_at"),
        ended_at=v.number(body, "ended_at"),
        render_seconds=v.number(body, "render_seconds"),
        error=v.text(body, "error", default=None, max_length=10_000),
        log_tail=v.text(body, "log_tail", default=None, max_length=100_000),
    )
    return jsonify({"frame": frame})


@tasks.post("/upload_frame")
def upload_frame():
    args = request.args
    worker_id = v.integer(args, "worker_id", minimum=1)
    task_id = v.integer(args, "task_id", minimum=1)
    frame = v.integer(args, "frame")
    lease_id = v.text(args, "lease_id", max_length=64)
    filename = v.name(args, "filename")
    # Refuse a fenced-off worker before it spends the coordinator's disk.
    _scheduler().check_lease(worker_id, task_id, frame, lease_id)
    limit = current_app.config["RENDERQ"].upload_limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
    sha256, size = _blobs().put_stream(request.stream, limit=limit)
    _scheduler().record_output(worker_id, task_id, frame, lease_id, filename, sha256, size)
    return jsonify({"sha256": sha256, "size": size, "filename": filename})


@tasks.get("/tasks")
def list_tasks():
    status = request.args.get("status") or None
    return jsonify({"tasks": _scheduler().list_tasks(status)})


@tasks.get("/task")
def task_detail():
    return jsonify(_scheduler().task_detail(v.integer(request.args, "task_id", minimum=1)))


@tasks.post("/cancel_task")
def cancel_task():
    body = v.json_body()
    return jsonify(_scheduler().cancel_task(v.integer(body, "task_id", minimum=1)))


@tasks.get("/download_frame")
def download_frame():
    task_id = v.integer(request.args, "task_id", minimum=1)
    number = v.integer(request.args, "frame")
    frame = _scheduler().frame(task_id, number)
    if frame["status"] != "done" or not frame["output_sha256"]:
        raise NotFound(f"frame {number} of task {task_id} is not rendered yet ({frame['status']})")
    return send_file(_blobs().path(frame["output_sha256"]), as_attachment=True, download_name=frame["output"],
                     mimetype="application/octet-stream", max_age=0)
