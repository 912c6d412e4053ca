"""Task and frame endpoints: submit, claim, report, list, detail, approve, cancel, frame files."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

from flask import Blueprint, current_app, jsonify, request

from renderq.blend_header import read_blend_version
from renderq.model import DEFAULT_RENDER_ORDER
from renderq.paths import check_path_set, check_relative_path

from .. import worker_calls
from ..auth import admin_required, current_identity, requires
from ..blobs import looks_like_blend
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..notify import check_task_urls
from ..scheduler import TaskFile, TaskSpec
from . import validation as v
from .files import send_blob

tasks = Blueprint("tasks", __name__)

def _scheduler():
    return current_app.extensions["renderq.scheduler"]


def _blobs():
    return current_app.extensions["renderq.blobs"]


@tasks.post("/submit_task")
@requires("artist")
def submit_task():
    body = v.json_body()  # typed and bounded by openapi.yaml (TaskSubmission)
    limits = current_app.config["RENDERQ"]
    frame_start, frame_end, frame_step = body["frame_start"], body["frame_end"], body.get("frame_step", 1)
    if frame_end < frame_start:
        raise BadRequest(f"the frame range {frame_start}-{frame_end} is empty: the end is before the start")
    # Counted from the range, before any file is looked at or any frame row built.
    frame_count = (frame_end - frame_start) // frame_step + 1
    if frame_count > limits.max_task_frames:
        raise PayloadTooLarge(f"the task has {frame_count} frames, more than this coordinator's limit of "
                              f"{limits.max_task_frames} per task (--max-task-frames); split it into smaller tasks")
    settings = _settings(body, limits.max_settings_bytes)
    missing_assets = _missing_assets(body, limits.max_missing_assets)
    files, main_file = _task_files(body)
    workers = body.get("workers", [])
    for worker in workers:
        v.check_name(worker, "workers")
    name = body.get("name", main_file.rsplit("/", 1)[-1].removesuffix(".blend"))
    v.check_name(name, "name")
    spec = TaskSpec(
        name=name,
        files=list(files.values()),
        main_file=main_file,
        frame_start=frame_start,
        frame_end=frame_end,
        frame_step=frame_step,
        priority=body.get("priority", 0),
        workers=sorted(set(workers)),
        submitted_by=body.get("submitted_by", ""),
        owner=_owner(),
        settings=settings,
        blender_version=body.get("blender_version") or _version_of(files[main_file].sha256),
        blender_version_exact=body.get("blender_version_exact", False),
        missing_assets=missing_assets,
        needs_python=body.get("needs_python", False),
        frame_timeout=_seconds(body.get("frame_timeout")),
        no_progress_timeout=_seconds(body.get("no_progress_timeout")),
        tags=v.tags(body.get("tags", [])),
        render_engine=body.get("render_engine", ""),
        device=body.get("device", ""),
        video=body.get("video"),
        notify=check_task_urls(body.get("notify", []), limits.notify_task_urls),
        order=body.get("order", DEFAULT_RENDER_ORDER),
        scout_frames=body.get("scout_frames", 0),
        tiles=body.get("tiles", ""),
        denoising=body.get("denoising", False),
    )
    blobs = _blobs()
    # The orphan sweep may have deleted a file since the checks above (one uploaded long ago and used by no task):
    # reserved, each is checked once more and then kept until the task that uses it is stored.
    with blobs.reserved(spec_file.sha256 for spec_file in spec.files):
        _require_uploaded(spec.files, refresh=True)
        task = _scheduler().submit_task(spec)
    return jsonify(task), 201


def _seconds(value: float | None) -> float | None:
    """A duration the contract typed as a JSON number (an integer or not), as the float the store keeps."""
    return None if value is None else float(value)


def _settings(body: dict, max_bytes: int) -> dict:
    """The task's `settings` object, at most max_bytes as JSON (it travels with every lease)."""
    settings = body.get("settings", {})
    size = len(json.dumps(settings, separators=(",", ":")).encode("utf-8"))
    if size > max_bytes:
        raise PayloadTooLarge(f"'settings' takes {size} bytes as JSON, more than this coordinator's limit of "
                              f"{max_bytes} (--max-settings-bytes)")
    return settings


def _missing_assets(body: dict, max_count: int) -> list[str]:
    """The task's `missing_assets`: at most max_count paths (a limit of this coordinator's, so not the contract's)."""
    missing_assets = body.get("missing_assets", [])
    if len(missing_assets) > max_count:
        raise PayloadTooLarge(f"'missing_assets' lists {len(missing_assets)} paths, more than this coordinator's "
                              f"limit of {max_count} (--max-missing-assets)")
    return missing_assets


def _owner() -> str:
    """Who submits: the artist's name from their token ("artist" for the shared artist token), or "admin"."""
    who = current_identity()
    return who.name if who is not None else ""


def _task_files(body: dict) -> tuple[dict[str, TaskFile], str]:
    """The task's tree from `manifest` + `main_file`, or the one-file tree of `blend_sha256`; all uploaded.

    The contract has typed every field; what is checked here is what a schema cannot say: the path rule, paths
    that clash, and the stored files themselves.
    """
    blobs = _blobs()
    if "manifest" in body:
        if "main_file" not in body:
            raise BadRequest("'main_file' is required with 'manifest': name the .blend to render")
        files: dict[str, TaskFile] = {}
        for entry in body["manifest"]:
            path = _checked_path(entry["path"], "a manifest path")
            if path in files:
                raise BadRequest(f"the manifest lists {path!r} twice")
            files[path] = TaskFile(path, entry["sha256"], entry["size"])
        try:
            check_path_set(files)
        except ValueError as error:
            raise BadRequest(f"the manifest cannot be written on every worker: {error}") from None
        main_file = _checked_path(body["main_file"], "'main_file'")
        if main_file not in files or not main_file.lower().endswith(".blend"):
            raise BadRequest(f"'main_file' must be a .blend listed in the manifest, not {main_file!r}")
    else:
        sha256 = body["blend_sha256"]
        main_file = v.file_name(body.get("blend_filename", "scene.blend"), "'blend_filename'")
        size = blobs.size(sha256) or 0
        files = {main_file: TaskFile(main_file, sha256, size)}
    _require_uploaded(files.values())
    for entry in files.values():
        actual = blobs.size(entry.sha256)
        if actual != entry.size:
            raise BadRequest(f"the manifest says {entry.path!r} has {entry.size} bytes, but its file has {actual}")
    if not looks_like_blend(blobs.head(files[main_file].sha256)):
        raise BadRequest(f"the main file {main_file!r} is not a .blend file")
    return files, main_file


def _require_uploaded(files: Iterable[TaskFile], refresh: bool = False) -> None:
    """Refuse a task whose files are not all stored. With `refresh`, each file's grace period as an orphan starts
    over too: the reservation that guards it holds in this process only, and another coordinator sharing the
    object store sweeps only files older than the grace period."""
    blobs = _blobs()
    hashes = {f.sha256 for f in files}
    present = blobs.touch_many(hashes) if refresh else {sha256 for sha256 in hashes if blobs.exists(sha256)}
    lacking = sorted(hashes - present)
    if lacking:
        raise BadRequest(f"{len(lacking)} file(s) of the task are not uploaded yet (first: {lacking[0]}); "
                         "ask /missing_files and upload them first")


def _checked_path(path: str, what: str) -> str:
    """`path` if it passes the shared path rule (renderq.paths), else BadRequest naming `what` it is."""
    try:
        return check_relative_path(path)
    except ValueError as error:
        raise BadRequest(f"{what} cannot be written on every worker: {error}") from None


def _version_of(sha256: str) -> str:
    """The Blender version in the stored .blend's header; '' when it cannot be read (no version rule then)."""
    try:
        with _blobs().head_file(sha256) as path:
            return read_blend_version(path)
    except ValueError:
        return ""


@tasks.post("/frames/claim")
@requires("worker")
def claim_frame():
    """Claim the worker's next frame (a POST: it changes what the farm holds)."""
    return jsonify(worker_calls.claim(_scheduler(), v.json_body()))


@tasks.route("/get_task", methods=["GET", "POST"])
@requires("worker")
def get_task():
    """The seed's claim route, kept for its clients: its GET changes state, so new clients POST /frames/claim."""
    source = dict(request.args)
    if request.method == "POST" and request.content_length:
        source.update(v.json_body())
    return jsonify(_scheduler().claim_answer(v.integer(source, "worker_id", minimum=1),
                                             v.integer(source, "prefer_task_id", default=None)))


@tasks.post("/update_task")
@requires("worker")
def update_task():
    return jsonify(worker_calls.report(_scheduler(), v.json_body()))  # typed and bounded by openapi.yaml


@tasks.post("/frames/finish")
@requires("worker")
def finish_frame():
    """One request for a rendered frame: its file as the body, its report in the query string, fenced by the lease.

    The lease and the file name are checked before a byte is stored; the file streams into the blob store; the
    output and the done report are then written in one transaction that matches only while the lease is live.
    """
    fields = v.query()
    who = (fields["worker_id"], fields["task_id"], fields["frame"], fields["lease_id"])
    filename = v.file_name(fields["filename"], "the frame's file name")
    repeat = _scheduler().check_finish(*who, filename)
    if repeat is not None:
        return jsonify({"frame": repeat})
    preview_sha256 = _store_preview(fields.get("preview_size") or 0)
    sha256, size = _store_frame_file()
    frame = _scheduler().finish_frame(*who, (filename, sha256, size), started_at=fields.get("started_at"),
                                      ended_at=fields.get("ended_at"), render_seconds=fields.get("render_seconds"),
                                      preview_sha256=preview_sha256)
    return jsonify({"frame": frame})


def _store_preview(size: int) -> str | None:
    """The frame's preview, the first `size` bytes of the body (the contract caps it at 1 MiB), checked and
    stored; its sha256, or None when the worker sent none. The frame's file follows in the stream."""
    if not size:
        return None
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = request.stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    preview = b"".join(parts)
    worker_calls.check_preview(preview, size)
    return _blobs().put_stream(io.BytesIO(preview), limit=size)[0]


def _store_frame_file() -> tuple[str, int]:
    """Stream the request body into the blob store: (sha256, size), refused when over the upload limit."""
    limit = current_app.config["RENDERQ"].upload_limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the file is larger than the coordinator's upload limit of {limit} bytes")
    return _blobs().put_stream(request.stream, limit=limit)


@tasks.post("/upload_frame")
@requires("worker")
def upload_frame():
    fields = v.query()
    worker_id, task_id, frame, lease_id = fields["worker_id"], fields["task_id"], fields["frame"], fields["lease_id"]
    filename = v.file_name(fields["filename"], "the frame's file name")
    # Refuse a fenced-off worker, or a name another frame has, before it spends the coordinator's disk.
    _scheduler().check_lease(worker_id, task_id, frame, lease_id)
    _scheduler().check_output_name(task_id, frame, filename)
    sha256, size = _store_frame_file()
    _scheduler().record_output(worker_id, task_id, frame, lease_id, filename, sha256, size)
    return jsonify({"sha256": sha256, "size": size, "filename": filename})


@tasks.get("/tasks")
@requires("artist")
def list_tasks():
    return jsonify({"tasks": _scheduler().list_tasks(v.query().get("status"))})


@tasks.get("/task")
@requires("artist")
def task_detail():
    fields = v.query()
    return jsonify(_scheduler().task_detail(fields["task_id"], frames_after=fields.get("frames_after"),
                                            frames_limit=fields["frames_limit"],
                                            frames_status=fields.get("frames_status")))


def _changed(task_id: int) -> None:
    """Let the status pages show an admin's change at their next poll."""
    current_app.extensions["renderq.live"].changed(task_id)


@tasks.post("/cancel_task")
@requires("artist")
def cancel_task():
    body = v.json_body()
    who = current_identity()
    # Admins cancel anything; an artist only the tasks submitted with their own token.
    by_owner = None if who is None or who.role == "admin" else who.name
    task = _scheduler().cancel_task(body["task_id"], by_owner=by_owner)
    _changed(task["task_id"])
    return jsonify(task)


@tasks.post("/approve_task")
@requires("artist")
def approve_task():
    who = current_identity()
    # As for cancel: admins approve anything; an artist only the tasks submitted with their own token.
    by_owner = None if who is None or who.role == "admin" else who.name
    task = _scheduler().approve_task(v.json_body()["task_id"], by_owner=by_owner)
    _changed(task["task_id"])
    return jsonify(task)


@tasks.post("/set_task_priority")
@admin_required
def set_task_priority():
    body = v.json_body()
    task = _scheduler().set_task_priority(body["task_id"], body["priority"])
    _changed(task["task_id"])
    return jsonify(task)


@tasks.post("/pause_task")
@admin_required
def pause_task():
    task = _scheduler().pause_task(v.json_body()["task_id"])
    _changed(task["task_id"])
    return jsonify(task)


@tasks.post("/resume_task")
@admin_required
def resume_task():
    task = _scheduler().resume_task(v.json_body()["task_id"])
    _changed(task["task_id"])
    return jsonify(task)


@tasks.post("/retry_failed_frames")
@admin_required
def retry_failed_frames():
    task = _scheduler().retry_failed_frames(v.json_body()["task_id"])
    _changed(task["task_id"])
    return jsonify(task)


# Images a browser may show inline, by their first bytes. Anything else (an .exr, or a file that only claims to be
# an image) is only ever sent as a download, so an uploaded HTML or SVG file can never run in the page's origin.
INLINE_IMAGES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                 (b"RIFF", "image/webp"), (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


# A task's video plays in its page: ISO media (an `ftyp` box first: MP4, QuickTime) and Matroska's WebM, by their
# first bytes too.
INLINE_VIDEOS = ((b"qt  ", "video/quicktime"), (b"", "video/mp4"))
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"


def _inline_type(sha256: str) -> str | None:
    head = _blobs().head(sha256, 16)
    for magic, mimetype in INLINE_IMAGES:
        if head.startswith(magic) and (mimetype != "image/webp" or head[8:12] == b"WEBP"):
            return mimetype
    return _video_type(head)


def _video_type(head: bytes) -> str | None:
    """The video type of a file starting with `head`, or None."""
    if head.startswith(WEBM_MAGIC):
        return "video/webm"
    if head[4:8] == b"ftyp":
        return next(mimetype for brand, mimetype in INLINE_VIDEOS if head[8:12].startswith(brand))
    return None


@tasks.get("/download_frame")
@requires("artist", open_read=True)
def download_frame():
    fields = v.query()
    task_id, number, inline = fields["task_id"], fields["frame"], fields.get("inline", False)
    frame = _scheduler().frame(task_id, number)
    if frame["status"] == "done" and not frame["output_sha256"]:
        raise NotFound(f"the files of task {task_id} were deleted")
    if frame["status"] != "done" or not frame["output_sha256"]:
        raise NotFound(f"frame {number} of task {task_id} is not rendered yet ({frame['status']})")
    sha256 = frame["output_sha256"]
    if inline:
        # The preview the worker made for a format a browser cannot show (or shows at a great size), else the
        # frame itself when it is such an image.
        name = frame["output"]
        mimetype: str | None
        if frame.get("preview_sha256"):
            sha256, mimetype, name = frame["preview_sha256"], "image/png", preview_name(name)
        else:
            mimetype = _inline_type(sha256)
        if mimetype is None:
            raise BadRequest(f"frame {number} of task {task_id} ({frame['output']}) is not an image a browser "
                             "can show; download it instead")
        # A done frame's file never changes (a re-render gets a new hash), so the browser may keep it a while.
        # Sent by the coordinator, never redirected: the page's own origin and these headers must hold.
        response = send_blob(sha256, name, direct=False, mimetype=mimetype, max_age=3600, etag=sha256)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response
    return send_blob(sha256, frame["output"], as_attachment=True, mimetype="application/octet-stream", max_age=0)


def preview_name(output: str) -> str:
    """The name a frame's preview is sent under: the frame's own name with `.preview.png` in place of its
    extension (f_0001.exr -> f_0001.preview.png)."""
    stem = output.rsplit(".", 1)[0] if "." in output.lstrip(".") else output
    return f"{stem}.preview.png"
