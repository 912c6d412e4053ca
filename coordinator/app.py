"""The application factory: wires the store, the scheduler, the blob store and the blueprints."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from . import auth
from .blobs import BlobStore, ContentStore
from .config import Config
from .errors import RenderQError, ServiceUnavailable, database_refusal
from .live import LiveStatus
from .metrics import Metrics
from .scheduler import Policy, Scheduler
from .sessions import LoginSessions
from .store import Store


class _KeyOrderJSON(DefaultJSONProvider):
    """JSON answers keep their keys in the order the code wrote them (Flask sorts them by default)."""

    sort_keys = False


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    """Build the coordinator's Flask app over the data dir in config (created if missing)."""
    config = config or Config.from_env(**overrides)
    os.makedirs(config.data_dir, exist_ok=True)
    app = Flask(__name__, template_folder="pages/templates", static_folder="pages/static")
    app.config["RENDERQ"] = config
    store = Store(config.database or os.path.join(config.data_dir, "renderq.sqlite3"), synchronous=config.sqlite_sync)
    # Coordinators sharing a database share its tokens: a token works on any of them.
    auth.setup(app, config, store.share_secret, store.artist_tokens)
    app.config["MAX_CONTENT_LENGTH"] = None  # uploads are capped by our own streaming check, with a JSON error
    app.json = _KeyOrderJSON(app)

    scheduler = Scheduler(store, Policy.from_config(config))
    app.extensions["renderq.store"] = store
    app.extensions["renderq.sessions"] = LoginSessions(store)
    app.extensions["renderq.scheduler"] = scheduler
    app.extensions["renderq.live"] = LiveStatus(scheduler, config.poll_interval)
    app.extensions["renderq.metrics"] = Metrics(scheduler)
    app.extensions["renderq.blobs"] = open_blob_store(config)

    from .api.files import files
    from .api.health import health
    from .api.logs import logs
    from .api.openapi import openapi
    from .api.status import pages
    from .api.tasks import tasks
    from .api.workers import workers

    for blueprint in (health, workers, tasks, files, logs, pages, openapi):
        app.register_blueprint(blueprint)
    from .api import contract

    contract.load()

    @app.after_request
    def page_headers(response):
        if response.mimetype == "text/html":
            # Only our own files run in the page, and no other site may frame it to trick a click on a switch.
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                "form-action 'self'; frame-ancestors 'none'",
            )
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(RenderQError)
    def domain_error(error: RenderQError):
        if isinstance(error, ServiceUnavailable):  # only the object store says so
            app.extensions["renderq.metrics"].errors.labels("object_store").inc()
        return jsonify({"error": error.message}), error.status

    def database_error(error: Exception):
        app.extensions["renderq.metrics"].errors.labels("database").inc()
        status, sentence = database_refusal(error, store.engine.is_unreachable(error))
        if status == 500:
            app.logger.error("database error", exc_info=error)
        return jsonify({"error": sentence}), status

    for error_class in store.engine.errors:
        app.register_error_handler(error_class, database_error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify({"error": error.description or error.name}), error.code

    return app


def open_blob_store(config: Config) -> ContentStore:
    """The blob store a coordinator's settings name: the data dir's `files` folder, or an S3 bucket."""
    root = os.path.join(config.data_dir, "files")
    if not config.blob_store:
        return BlobStore(root, reserve_bytes=config.disk_reserve)
    try:
        from .blobs_s3 import S3BlobStore
    except ImportError:
        raise ValueError("--blob-store s3://... needs boto3: install RenderQ with its s3 extra "
                         "(pip install 'renderq[s3]')") from None
    try:
        return S3BlobStore(config.blob_store, root, endpoint=config.s3_endpoint,
                           public_endpoint=config.s3_public_endpoint, region=config.s3_region,
                           reserve_bytes=config.disk_reserve)
    except RenderQError as error:  # the store cannot be reached at start: a sentence, not a traceback
        raise ValueError(error.message) from None
