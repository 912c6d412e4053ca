"""Liveness and the coordinator's clock, which is the one that decides leases."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from renderq import __version__

health = Blueprint("health", __name__)


@health.get("/health")
def get_health():
    scheduler = current_app.extensions["renderq.scheduler"]
    return jsonify({"ok": True, "version": __version__, "time": scheduler.clock()})
