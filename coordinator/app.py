"""The application factory: wires the store, the scheduler, the blob store and the blueprints."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .blobs import BlobStore
from .config import Config
from .errors import RenderQError
from .scheduler import Policy, Scheduler
from .store import Store


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    """Build the coordinator's Flask app over the data dir in config (created if missing)."""
    config = config or Config.from_env(**overrides)
    os.makedirs(config.data_dir, exist_ok=True)
    app = Flask(__name__)
    app.config["RENDERQ"] = config
    app.config["MAX_CONTENT_LENGTH"] = None  # uploads are capped by our own streaming check, with a JSON error
    app.json.sort_keys = False

    store = Store(os.path.join(config.data_dir, "renderq.sqlite3"), synchronous=config.sqlite_sync)
    policy = Policy(
        lease_seconds=config.lease_seconds,
        alive_timeout=config.alive_timeout,
        heartbeat_seconds=config.heartbeat_seconds,
        max_attempts=config.max_attempts,
        frame_time_window=config.frame_time_window,
    )
    scheduler = Scheduler(store, policy)
    app.extensions["renderq.store"] = store
    app.extensions["renderq.scheduler"] = scheduler
    app.extensions["renderq.blobs"] = BlobStore(os.path.join(config.data_dir, "files"),
                                                        reserve_bytes=config.disk_reserve)

    from .api.files import files
    from .api.health import health
    from .api.logs import logs
    from .api.tasks import tasks
    from .api.workers import workers

    for blueprint in (health, workers, tasks, files, logs):
        app.register_blueprint(blueprint)

    @app.errorhandler(RenderQError)
    def domain_error(error: RenderQError):
        return jsonify({"error": error.message}), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify({"error": error.description or error.name}), error.code

    return app
