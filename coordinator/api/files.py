"""Blob endpoints: upload a .blend, download any stored file by its hash."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request, send_file

from ..blobs import is_sha256, looks_like_blend
from ..errors import BadRequest, NotFound, PayloadTooLarge
from . import validation as v

files = Blueprint("files", __name__)


def _check_blend_head(head: bytes) -> str | None:
    if not looks_like_blend(head):
        return "this file is not a .blend: it does not start with 'BLENDER' and is not gzip- or zstd-compressed"
    return None


@files.post("/upload_blend")
def upload_blend():
    filename = v.name(request.args, "filename", default="scene.blend")
    if not filename.lower().endswith(".blend"):
        raise BadRequest(f"'filename' must end in .blend, not {filename!r}")
    limit = current_app.config["RENDERQ"].upload_limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
    sha256, size = current_app.extensions["renderq.blobs"].put_stream(
        request.stream, limit=limit, check_head=_check_blend_head
    )
    return jsonify({"sha256": sha256, "size": size, "filename": filename})


@files.get("/download_file")
def download_file():
    sha256 = request.args.get("sha256", "")
    if not is_sha256(sha256):
        raise BadRequest("'sha256' must be a SHA-256 in lowercase hex")
    blobs = current_app.extensions["renderq.blobs"]
    if not blobs.exists(sha256):
        raise NotFound(f"no stored file has SHA-256 {sha256}")
    return send_file(blobs.path(sha256), mimetype="application/octet-stream", max_age=0)
