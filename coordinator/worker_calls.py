"""What the worker's frequent calls do with their checked JSON fields: one function per call, used by the Flask
views (api/) and the gate's fast routes (fast_routes.py) alike, so each call is written once.

The fields were checked against openapi.yaml before they get here; these functions check only what a schema
cannot say, and run inside a store transaction of whoever calls them.
"""

from __future__ import annotations

from typing import Any

from .errors import PayloadTooLarge
from .scheduler import Scheduler


def heartbeat(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /update_worker: renew the worker's leases."""
    return scheduler.heartbeat(fields["worker_id"], fields.get("leases", []))


def claim(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /frames/claim: the worker's next frame, or why there is none."""
    return scheduler.claim_answer(int(fields["worker_id"]), fields.get("prefer_task_id"))


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


def append_log(scheduler: Scheduler, fields: dict[str, Any]) -> dict[str, Any]:
    """POST /append_log: add a chunk of Blender's output to the task's log (its size checked beforehand)."""
    return {"size": scheduler.append_log(fields["task_id"], fields.get("worker_id"), fields["text"])}
