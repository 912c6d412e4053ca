"""The API's own description: GET /openapi.yaml serves the OpenAPI document shipped with the coordinator."""

from __future__ import annotations

import functools
from importlib import resources

from flask import Blueprint, Response

openapi = Blueprint("openapi", __name__)


@functools.cache
def spec_bytes() -> bytes:
    """The OpenAPI document (YAML), read once from the installed coordinator package."""
    return resources.files("coordinator").joinpath("openapi.yaml").read_bytes()


@openapi.get("/openapi.yaml")
def get_openapi() -> Response:
    """Public: clients and tools need the description before they have a token."""
    return Response(spec_bytes(), mimetype="application/yaml")
