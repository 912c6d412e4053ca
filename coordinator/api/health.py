"""Liveness, the coordinator's clock (the one that decides leases) and its metrics for Prometheus."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from renderq import __version__

from ..auth import reader_required
from ..metrics import CONTENT_TYPE

health = Blueprint("health", __name__)


@health.get("/health")
def get_health():
    scheduler = current_app.extensions["renderq.scheduler"]
    return jsonify({"ok": True, "version": __version__, "time": scheduler.clock()})


@health.get("/metrics")
@reader_required()
def get_metrics():
    """The farm and this coordinator in Prometheus' text format: readable as the status page is (the admin token,
    or anyone with --open-status)."""
    return Response(current_app.extensions["renderq.metrics"].exposition(), content_type=CONTENT_TYPE)
