"""Shared fixtures: a Flask app over a fresh data dir, and its test client."""

from __future__ import annotations

import pytest

from coordinator.app import create_app
from coordinator.config import Config


@pytest.fixture
def app(tmp_path):
    """The coordinator app on an empty data dir, with a small upload limit so limits are testable."""
    config = Config(data_dir=str(tmp_path / "data"), upload_limit=1024 * 1024)
    return create_app(config)


@pytest.fixture
def client(app):
    return app.test_client()
