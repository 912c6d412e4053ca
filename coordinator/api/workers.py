"""Worker endpoints: registration, heartbeats, the worker list and ON/OFF."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from renderq.capabilities import worker_offers

from .. import worker_calls
from ..auth import admin_required, requires
from . import validation as v

workers = Blueprint("workers", __name__)


def _scheduler():
    return current_app.extensions["renderq.scheduler"]


@workers.post("/register_worker")
@requires("worker")
def register_worker():
    body = v.json_body()  # typed and bounded by openapi.yaml
    v.check_name(body["name"], "name")
    worker = _scheduler().register_worker(
        name=body["name"], host=body.get("host", ""), blender_version=body.get("blender_version", ""),
        cpu_count=body.get("cpu_count", 0), allows_python=bool(body.get("allows_python")), offered=_offered(body),
    )
    return jsonify(worker)


def _offered(body: dict) -> dict:
    """What a registering worker offers (devices, engines, tags, its FFmpeg's encoders) and its bits; a worker that
    names no engines (one from before they were probed) keeps every engine."""
    engines = body.get("engines")
    video_encoders = body.get("video_encoders", "")
    return {"devices": body.get("devices", []), "engines": engines or [], "tags": v.tags(body.get("tags", [])),
            "video_encoders": video_encoders,
            "offers": worker_offers(engines, bool(body.get("gpu")), can_encode=bool(video_encoders))}


@workers.post("/update_worker")
@requires("worker")
def update_worker():
    """The heartbeat: renews the leases the worker still holds."""
    body = v.json_body()  # typed and bounded by openapi.yaml
    worker_calls.check_ridden_logs(body, current_app.config["RENDERQ"].max_log_chunk)
    return jsonify(worker_calls.heartbeat(_scheduler(), body))


@workers.get("/list_workers")
@requires("artist")
def list_workers():
    return jsonify({"workers": _scheduler().list_workers()})


@workers.get("/worker")
@requires("artist", open_read=True)
def worker_detail():
    """One worker by name: what it offers, what it renders now (with its log lines), its latest frames and
    failures. Its page polls this; `renderq workers NAME` prints it."""
    name = v.query()["name"]
    v.check_name(name, "name")
    return jsonify(_scheduler().worker_detail(name))


@workers.post("/set_worker_enabled")
@admin_required
def set_worker_enabled():
    body = v.json_body()  # typed and bounded by openapi.yaml
    enabled = body["enabled"]
    if body.get("worker_id") is not None:
        worker = _scheduler().set_worker_enabled(enabled, worker_id=body["worker_id"])
    elif body.get("name") is not None:
        v.check_name(body["name"], "name")
        worker = _scheduler().set_worker_enabled(enabled, name=body["name"])
    else:
        raise v.BadRequest("give 'worker_id' or 'name' of the worker to switch")
    current_app.extensions["renderq.live"].changed()
    return jsonify(worker)


@workers.post("/set_worker_tags")
@admin_required
def set_worker_tags():
    """An admin sets a worker's tags; they outlast the worker's own (--tag) until an admin changes them."""
    body = v.json_body()  # typed and bounded by openapi.yaml
    tags = v.tags(body["tags"])
    if body.get("worker_id") is not None:
        worker = _scheduler().set_worker_tags(tags, worker_id=body["worker_id"])
    elif body.get("name") is not None:
        v.check_name(body["name"], "name")
        worker = _scheduler().set_worker_tags(tags, name=body["name"])
    else:
        raise v.BadRequest("give 'worker_id' or 'name' of the worker whose tags to set")
    current_app.extensions["renderq.live"].changed()
    return jsonify(worker)
