"""What the worker's frequent calls do with their checked JSON fields: one function per call, used by the Flask
views (api/) and the gate's fast routes (fast_routes.py) alike, so each call is written once.

The fields were checked against openapi.yaml before they get here; these functions check only what a schema
cannot say, and run inside a store transaction of whoever calls them.
"""

from __future__ import annotations

from typing import Any

from .errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from .scheduler import Scheduler


def heartbeat(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /update_worker: take the reports and log lines riding on it, then renew the worker's leases."""
    worker_id = fields["worker_id"]
    _take_rendering_reports(scheduler, worker_id, fields.get("rendering", ()))
    answer = scheduler.heartbeat(worker_id, fields.get("leases", []))
    for chunk in fields.get("logs", ()):
        try:
            # No check of the worker per chunk: the heartbeat above refused a worker that does not exist.
            scheduler.append_log(chunk["task_id"], None, chunk["text"])
        except NotFound:
            continue  # the task was deleted meanwhile: its log is gone too, as a post of its own would find
    return answer


def claim(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /frames/claim: take the rendering reports riding on it, then the worker's next frame, or why there is
    none."""
    worker_id = int(fields["worker_id"])
    _take_rendering_reports(scheduler, worker_id, fields.get("rendering", ()))
    return scheduler.claim_answer(worker_id, fields.get("prefer_task_id"), bool(fields.get("ahead")))


def _take_rendering_reports(scheduler: Scheduler, worker_id: int, reports: Any) -> None:
    """Apply the "rendering" reports a large farm's worker sends with its next call instead of on their own.

    A report on a lease the worker lost changes nothing: the heartbeat's `revoked` tells the worker, and a claim
    must not fail because of an older frame.
    """
    for started in reports:
        try:
            scheduler.report(worker_id=worker_id, task_id=started["task_id"], frame=started["frame"],
                             lease_id=started["lease_id"], status="rendering", started_at=started.get("started_at"))
        except (Conflict, NotFound):
            continue


def report(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /update_task: a frame started rendering, failed, or was given back."""
    frame = scheduler.report(
        worker_id=fields["worker_id"], task_id=fields["task_id"], frame=fields["frame"],
        lease_id=fields["lease_id"], status=fields["status"], started_at=fields.get("started_at"),
        ended_at=fields.get("ended_at"), render_seconds=fields.get("render_seconds"), error=fields.get("error"),
        log_tail=fields.get("log_tail"), needs_python=bool(fields.get("needs_python")),
    )
    return {"frame": frame}


def check_log_chunk(text: str, limit: int) -> None:
    """Refuse (413) a log chunk of more than `limit` bytes (the coordinator's --max-log-chunk)."""
    # A character is at most 4 bytes in UTF-8: only text near the limit needs encoding to be measured.
    size = len(text) if len(text) * 4 <= limit else len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(f"the log chunk has {size} bytes, more than this coordinator's limit of {limit} "
                              "(--max-log-chunk); send it in smaller pieces")


def check_ridden_logs(fields: dict[str, Any], limit: int) -> None:
    """Refuse (413) a heartbeat whose log lines add up to more than `limit` bytes, as one chunk of its own would."""
    check_log_chunk("".join(chunk["text"] for chunk in fields.get("logs", ())), limit)


def append_log(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /append_log: add a chunk of Blender's output to the task's log (its size checked beforehand)."""
    return {"size": scheduler.append_log(fields["task_id"], fields.get("worker_id"), fields["text"])}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_preview(preview: bytes, size: int) -> None:
    """A finished frame's preview (the first `preview_size` bytes of the body) must be whole and a PNG: it is
    served to the page inline as image/png."""
    if len(preview) < size:
        raise BadRequest(f"the body holds {len(preview)} bytes, fewer than the preview_size of {size}")
    if not preview.startswith(PNG_SIGNATURE):
        raise BadRequest("the frame's preview is not a PNG image")
