"""What a webhook is, for the coordinator that sends it and the clients that name its URL: the URL rule and the
signature (see the README's "Webhooks"). Standard library only.

Every delivery carries X-RenderQ-Timestamp (Unix seconds) and X-RenderQ-Signature: `sha256=` and the hex
HMAC-SHA256, keyed with the farm's notify secret, of the timestamp, a '.', and the body's exact bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse

__all__ = ["DELIVERY_HEADER", "EVENT_HEADER", "MAX_URL_LENGTH", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "signature",
           "url_problem"]

SIGNATURE_HEADER = "X-RenderQ-Signature"
TIMESTAMP_HEADER = "X-RenderQ-Timestamp"
DELIVERY_HEADER = "X-RenderQ-Delivery"
EVENT_HEADER = "X-RenderQ-Event"
MAX_URL_LENGTH = 2000


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook's URL, in a sentence; None when it can."""
    shown = url if len(url) <= 80 else url[:77] + "..."
    if len(url) > MAX_URL_LENGTH:
        return f"a notify URL may have at most {MAX_URL_LENGTH} characters"
    if not url.isprintable() or " " in url:
        return f"the notify URL {shown!r} holds spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return f"{shown!r} is not a URL"
    if parts.scheme.lower() not in ("http", "https"):
        return f"a notify URL must start with http:// or https://, not {shown!r}"
    if not parts.hostname:
        return f"the notify URL {shown!r} names no host"
    return None


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 keyed with `secret` of the timestamp, a '.', and the body's exact bytes."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
