"""File endpoints: content-addressed uploads and downloads, task trees, frame zips and disk hygiene."""

from __future__ import annotations

import itertools
import os
import shutil
import urllib.parse
from collections.abc import Iterable, Iterator

from flask import Blueprint, Response, current_app, jsonify, redirect, request, send_file
from werkzeug.wrappers import Response as AnyResponse

from renderq.model import FRAME_KIND_TILE
from renderq.paths import collision_key, is_safe_file_name

from ..auth import admin_required, requires
from ..blobs import looks_like_blend
from ..zipstream import stream_zip
from ..errors import NotFound, PayloadTooLarge
from . import validation as v

files = Blueprint("files", __name__)


def _check_blend_head(head: bytes) -> str | None:
    if not looks_like_blend(head):
        return "this file is not a .blend: it does not start with 'BLENDER' and is not gzip- or zstd-compressed"
    return None


@files.post("/upload_blend")
@requires("artist")
def upload_blend():
    filename = v.query()["filename"]  # a .blend's name, by the contract's pattern and default
    v.check_name(filename, "filename")
    limit = current_app.config["RENDERQ"].upload_limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
    current_app.extensions["renderq.blobs"].check_space(request.content_length or 0)
    sha256, size = current_app.extensions["renderq.blobs"].put_stream(
        request.stream, limit=limit, check_head=_check_blend_head
    )
    return jsonify({"sha256": sha256, "size": size, "filename": filename})


def send_blob(sha256: str, download_name: str, *, direct: bool = True, **send_options) -> AnyResponse:
    """Answer with a stored file: a redirect to the blob store's own URL for it when it has one and `direct`, so
    the bytes skip the coordinator (the client follows it without the farm's token), else the bytes themselves
    with Flask's send_file and these options."""
    blobs = current_app.extensions["renderq.blobs"]
    url = blobs.download_url(sha256, download_name) if direct else None
    if url:
        return redirect(url, 302)
    path = blobs.local_path(sha256)
    return send_file(path or blobs.open(sha256), download_name=download_name, **send_options)


@files.get("/download_file")
@requires("worker")
def download_file():
    sha256 = v.query()["sha256"]
    if not current_app.extensions["renderq.blobs"].exists(sha256):
        raise NotFound(f"no stored file has SHA-256 {sha256}")
    return send_blob(sha256, sha256, mimetype="application/octet-stream", max_age=0)


@files.post("/missing_files")
@requires("artist")
def missing_files():
    hashes = v.json_body()["sha256"]  # at most 100,000 SHA-256s, by the contract
    blobs = current_app.extensions["renderq.blobs"]
    # The files reported present get a new grace period as orphans: the client will submit a task using them.
    stored = blobs.touch_many(hashes)
    return jsonify({"missing": sorted({h for h in hashes if h not in stored})})


@files.post("/upload_file")
@requires("artist")
def upload_file():
    sha256 = v.query()["sha256"]
    limit = current_app.config["RENDERQ"].upload_limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
    blobs = current_app.extensions["renderq.blobs"]
    if blobs.touch(sha256):
        # Already stored (hashes name their content): nothing to write, so a nearly full disk is no reason to refuse.
        return jsonify({"sha256": sha256, "size": blobs.size(sha256) or 0})
    blobs.check_space(request.content_length or 0)
    stored, size = blobs.put_stream(request.stream, limit=limit, expected_sha256=sha256)
    return jsonify({"sha256": stored, "size": size})


@files.post("/upload_target")
@requires("artist")
def upload_target():
    """Where the client may put a large file straight into the object store: {"upload_id", "url", "method",
    "headers"}, or {"url": null} when it uploads through POST /upload_file (the coordinator keeps its files)."""
    body = v.json_body()
    limit = current_app.config["RENDERQ"].upload_limit
    if body["size"] > limit:
        raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
    target = current_app.extensions["renderq.blobs"].upload_target(body["size"])
    return jsonify(target or {"url": None})


@files.post("/upload_done")
@requires("artist")
def upload_done():
    """Count a direct upload once the object store's copy hashes to `sha256`; refused (400) and deleted if not."""
    body = v.json_body()
    blobs = current_app.extensions["renderq.blobs"]
    sha256, size = blobs.finish_upload(body["sha256"], body["upload_id"], current_app.config["RENDERQ"].upload_limit)
    return jsonify({"sha256": sha256, "size": size})


@files.get("/task_manifest")
@requires("worker")
def task_manifest():
    return jsonify(current_app.extensions["renderq.scheduler"].task_manifest(v.query()["task_id"]))


@files.get("/video_frames")
@requires("worker")
def video_frames():
    """One page of the frames a task's video is made of, for the worker encoding it."""
    fields = v.query()
    scheduler = current_app.extensions["renderq.scheduler"]
    return jsonify(scheduler.video_frames(fields["task_id"], fields.get("frames_after")))


@files.get("/download_frames_zip")
@requires("artist", open_read=True)
def download_frames_zip():
    task_id = v.query()["task_id"]
    scheduler = current_app.extensions["renderq.scheduler"]
    task = scheduler.task_detail(task_id, with_frames=False)
    blobs = current_app.extensions["renderq.blobs"]
    # Read from the database a page at a time while the zip streams, not all of a big task's frames at once.
    # A tiled still's tiles are parts of its one image (the merge job's output), not outputs of their own.
    entries = _zip_entries(f for f in scheduler.iter_frames(task_id, "done")
                           if f["output_sha256"] and f["kind"] != FRAME_KIND_TILE and blobs.exists(f["output_sha256"]))
    first = next(entries, None)
    if first is None:
        raise NotFound(f"task {task_id} has no rendered frames to download")
    name = f"{task['name']}-frames.zip"
    return Response(stream_zip(itertools.chain([first], entries), blobs.open), mimetype="application/zip",
                    headers={"Content-Disposition": _attachment(name)})


def _zip_entries(frames: Iterable[dict]) -> Iterator[tuple[str, str]]:
    """(name in the zip, SHA-256 of the stored file) of done frames, every name unique by renderq.paths.collision_key.

    The coordinator refuses a second frame with an output name a task has, but frames stored before that rule (or
    named against it) still get into the zip: under `frame_<number>` and their extension.
    """
    taken: set[str] = set()
    for frame in frames:
        name = frame["output"]
        if not is_safe_file_name(name) or collision_key(name) in taken:
            suffix = os.path.splitext(name or "")[1]
            suffix = suffix if is_safe_file_name("frame" + suffix) else ""
            name, copy = f"frame_{frame['frame']}{suffix}", 1
            while collision_key(name) in taken:
                copy += 1
                name = f"frame_{frame['frame']}_{copy}{suffix}"
        taken.add(collision_key(name))
        yield name, frame["output_sha256"]


def _attachment(filename: str) -> str:
    """A Content-Disposition for any task name: HTTP headers carry Latin-1 only, so the name goes in UTF-8 in
    `filename*` (RFC 6266), with a plain ASCII stand-in for old clients."""
    plain = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


@files.get("/disk_usage")
@admin_required
def disk_usage():
    blobs = current_app.extensions["renderq.blobs"]
    total, _, free = shutil.disk_usage(blobs.root)
    return jsonify({"total": total, "free": free, "reserve": blobs.reserve_bytes,
                    "tasks": current_app.extensions["renderq.scheduler"].disk_usage()})


@files.post("/delete_task_files")
@admin_required
def delete_task_files():
    task_id = v.json_body()["task_id"]
    scheduler = current_app.extensions["renderq.scheduler"]
    unused = scheduler.forget_task_files(task_id)
    # Checked again with the blob store's guard held: a task submitted meanwhile may use one of them.
    deleted, freed = current_app.extensions["renderq.blobs"].delete_unreferenced(unused,
                                                                                 scheduler.store.referenced_blobs)
    current_app.extensions["renderq.live"].changed(task_id)
    return jsonify({"task_id": task_id, "files_deleted": deleted, "bytes_freed": freed})
