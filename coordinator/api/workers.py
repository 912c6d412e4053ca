"""Worker endpoints: registration, heartbeats, the worker list and ON/OFF."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..auth import admin_required, requires
from . import validation as v

workers = Blueprint("workers", __name__)


def _scheduler():
    return current_app.extensions["renderq.scheduler"]


@workers.post("/register_worker")
@requires("worker")
def register_worker():
    body = v.json_body()
    worker = _scheduler().register_worker(
        name=v.name(body, "name"),
        host=v.text(body, "host", default="", max_length=255),
        blender_version=v.text(body, "blender_version", default="", max_length=64),
        cpu_count=v.integer(body, "cpu_count", default=0, minimum=0, maximum=100_000),
        allows_python=v.boolean(body, "allows_python") if body.get("allows_python") is not None else False,
    )
    return jsonify(worker)


@workers.post("/update_worker")
@requires("worker")
def update_worker():
    body = v.json_body()
    leases = body.get("leases", [])
    if not isinstance(leases, list) or not all(isinstance(lease, str) for lease in leases) or len(leases) > 1000:
        raise v.BadRequest("'leases' must be a list of lease ids (strings)")
    return jsonify(_scheduler().heartbeat(v.integer(body, "worker_id", minimum=1), leases))


@workers.get("/list_workers")
@requires("artist")
def list_workers():
    return jsonify({"workers": _scheduler().list_workers()})


@workers.post("/set_worker_enabled")
@admin_required
def set_worker_enabled():
    body = v.json_body()
    enabled = v.boolean(body, "enabled")
    if body.get("worker_id") is not None:
        worker = _scheduler().set_worker_enabled(enabled, worker_id=v.integer(body, "worker_id", minimum=1))
    elif body.get("name") is not None:
        worker = _scheduler().set_worker_enabled(enabled, name=v.name(body, "name"))
    else:
        raise v.BadRequest("give 'worker_id' or 'name' of the worker to switch")
    current_app.extensions["renderq.live"].changed()
    return jsonify(worker)
