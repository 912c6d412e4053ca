"""Transfers straight between a client and the farm's object store, at presigned URLs the coordinator hands out.

A presigned URL carries its own short-lived signature, so these requests send no token of the farm: the object store
never sees one. Their connections are never pooled with the coordinator's (is_store_connection tells them apart).
Standard library only: part of the kernel the add-on bundles, and usable in a process without ssl (the simulated
workers leave it out), so https is only looked up for an https URL.
"""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Any

from renderq.client_errors import DownloadRefused, Unavailable, describe_failure

__all__ = ["REDIRECTS", "is_store_connection", "open_presigned", "send_presigned"]

# Answers that send a GET elsewhere: the coordinator redirects downloads to the object store.
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_ERROR_BODY = 64 * 1024


def is_store_connection(conn: http.client.HTTPConnection) -> bool:
    """Whether `conn` goes to the object store (closed after its one request, never pooled)."""
    return bool(getattr(conn, "renderq_store", False))


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the URL's host and the request target; DownloadRefused for a URL that is not http(s)."""
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadRefused(f"the coordinator sent the client to {url!r}, which is not an http:// or https:// URL")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = kind(parts.netloc, timeout=timeout)
    conn.renderq_store = True  # type: ignore[attr-defined]  # see is_store_connection
    return conn, target


def _exchange(url: str, method: str, body: Any, headers: dict[str, str],
              timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn, target = _connect(url, timeout)
    host = urllib.parse.urlsplit(url).hostname
    try:
        conn.request(method, target, body=body, headers={"User-Agent": "renderq-client", **headers})
        response = conn.getresponse()
    except (OSError, http.client.HTTPException) as error:
        conn.close()
        raise Unavailable(503, f"the farm's object store at {host} cannot be reached "
                               f"({describe_failure(error, timeout)})") from error
    if not 200 <= response.status < 300:
        detail = response.read(_MAX_ERROR_BODY).decode("utf-8", "replace").strip()[:200]
        conn.close()
        sentence = f"the farm's object store at {host} answered HTTP {response.status}"
        if response.status >= 500:
            raise Unavailable(response.status, sentence)
        raise DownloadRefused(f"{sentence} ({detail or response.reason})")
    return conn, response


def open_presigned(url: str, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET a presigned URL; the caller reads the response and closes the connection."""
    return _exchange(url, "GET", None, {}, timeout)


def send_presigned(target: dict[str, Any], body: Any, length: int, timeout: float) -> None:
    """Send `length` bytes read from `body` to an upload target of the coordinator ({"url", "method", "headers"})."""
    headers = {str(k): str(v) for k, v in (target.get("headers") or {}).items()}
    headers["Content-Length"] = str(length)
    conn, response = _exchange(str(target["url"]), str(target.get("method") or "PUT"), body, headers, timeout)
    try:
        response.read()
    finally:
        conn.close()
