"""A small client for the RenderQ coordinator's HTTP API (see docs/api.md).

Standard library only, so the Blender add-on can bundle this file unchanged (Blender's Python may lack `requests`).
A client keeps its idle keep-alive connections in a small pool that its threads share: a call takes an idle one
(or opens one), and gives it back once its answer is read. So one client is safe to share between threads, a
worker's heartbeats and reports do not pay a TCP handshake each, and a worker whose five threads call now and then
holds one or two connections, not one per thread (a farm of thousands of workers counts them on the coordinator).
Refusals raise typed errors (LeaseLost, Unauthorized, NotFound, Invalid, Unavailable), all CoordinatorError with the
HTTP `status` kept.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import urllib.parse
from typing import Any, Callable, Iterator, Sequence

from renderq.client_errors import (Conflict, CoordinatorError, CoordinatorUnreachable, DiskFull, DownloadRefused,
                                   Forbidden, Invalid, LeaseLost, NotFound, TooLarge, Unauthorized, Unavailable,
                                   describe_failure, error_for)
from renderq.addresses import Address, Addresses, IdleConnections
from renderq.local_files import (BLOCK_SIZE, PrefixedStream, ProgressReader, check_not_link, file_sha256,
                                 remove_quietly)
from renderq.object_store import REDIRECTS, is_store_connection, open_presigned, send_presigned
from renderq.paths import is_safe_file_name

__all__ = ["CoordinatorClient", "CoordinatorError", "CoordinatorUnreachable", "Conflict", "DiskFull", "DownloadRefused",
           "Forbidden", "Invalid", "LeaseLost", "NotFound", "TooLarge", "Unauthorized", "Unavailable", "check_not_link",
           "error_for", "file_sha256"]

_USER_AGENT = "renderq-client/0.1.0"
_BLOCK_SIZE = BLOCK_SIZE
# Error bodies are short JSON sentences; a proxy's HTML page must not fill memory.
_MAX_ERROR_BODY = 64 * 1024
# Idle connections one client keeps for its next calls; more are closed when handed back.
_MAX_IDLE_CONNECTIONS = 4
# The coordinator answers /missing_files for at most 100,000 hashes per request; stay well below.
_MISSING_FILES_BATCH = 20_000
# Frames asked for per GET /task (the coordinator sends at most 10,000).
_FRAMES_PAGE = 5_000
# A file at least this large is put straight into the farm's object store when the coordinator offers it.
DIRECT_UPLOAD_BYTES = 8 * 1024 * 1024


class CoordinatorClient:
    """Calls the coordinator's API; each method is one request (see docs/api.md for the answers)."""

    def __init__(self, base_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        """`base_url` is like http://farm:5000 (a path prefix is kept, for a coordinator behind a proxy), or a
        cluster's coordinators as a comma-separated list: a call that one of them does not answer (no connection,
        or 503) goes to the next, which stays in use (renderq/addresses.py).

        `token`, when given, is the coordinator's admin token, sent as `Authorization: Bearer` with every request;
        the calls that change the farm (cancel, pause, priority, worker ON/OFF, deleting files) need it.
        """
        self.addresses = Addresses(base_url)
        self.timeout = timeout
        self.token = token.strip() if token else None
        self._pool = IdleConnections(timeout, _BLOCK_SIZE, _MAX_IDLE_CONNECTIONS)

    @property
    def base_url(self) -> str:
        """The address of the coordinator calls go to now."""
        return self.addresses.current.url

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _connection(self, address: Address) -> http.client.HTTPConnection:
        return self._pool.take(address)

    def _release(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse | None) -> None:
        """Give the connection back to the pool if its answer was read to the end, else close it."""
        if is_store_connection(conn):  # the object store's: never pooled with the coordinators'
            conn.close()
            return
        self._pool.give_back(conn, response, self.addresses.current)

    def close(self) -> None:
        """Close the idle connections (the next call opens a new one)."""
        self._pool.close()

    def _target(self, path: str, params: dict | None, prefix: str = "") -> str:
        target = prefix + "/" + path.lstrip("/")
        if params:
            clean = {key: _param_text(value) for key, value in params.items() if value is not None}
            if clean:
                target += "?" + urllib.parse.urlencode(clean)
        return target

    def _unreachable(self, exc: BaseException) -> CoordinatorUnreachable:
        return CoordinatorUnreachable(self.base_url, describe_failure(exc, self.timeout))

    def _open(self, method: str, path: str, *, params: dict | None = None, body: bytes | ProgressReader | None = None,
              headers: dict[str, str] | None = None, lease_fenced: bool = False, refusals: bool = True,
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and return the connection and its response; non-2xx answers raise a typed error
        (unless `refusals` is False). A GET redirected (to a presigned URL of the farm's object store) is followed
        once, without the token.

        The caller reads the response and hands the connection back with _release.
        """
        all_headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        address = self.addresses.current
        for tries_left in range(len(self.addresses.all) - 1, -1, -1):
            try:
                return self._open_at(address, method, self._target(path, params, address.prefix), body,
                                     all_headers, lease_fenced, refusals)
            except (CoordinatorUnreachable, Unavailable):
                if not tries_left:
                    raise
            address = self.addresses.move_on(address)
            if isinstance(body, ProgressReader):
                body.rewind()
        raise AssertionError("unreachable: the last try raises")

    def _open_at(self, address: Address, method: str, target: str, body: bytes | ProgressReader | None,
                 headers: dict[str, str], lease_fenced: bool, refusals: bool,
                 ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """_open's request to one coordinator."""
        conn = self._connection(address)
        try:
            response = self._exchange(conn, method, target, body, headers)
            if method != "GET" or response.status not in REDIRECTS:
                if refusals and not 200 <= response.status < 300:
                    raise self._refusal(response, lease_fenced)
                return conn, response
            location = urllib.parse.urljoin(address.url + "/", response.getheader("Location") or "")
            response.read()
        except CoordinatorError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._release(conn, response)
        return open_presigned(location, self.timeout)

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str,
                  body: bytes | ProgressReader | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        reused = conn.sock is not None
        try:
            conn.request(method, target, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as send_error:
            # A coordinator that refuses an upload (too big, not a .blend) may answer and close before it has
            # read the whole body; its answer is more useful than the broken pipe. A reset while connecting
            # leaves no socket at all, and so no answer to read.
            if conn.sock is None:
                raise self._unreachable(send_error) from send_error
            try:
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                if reused:
                    return self._resend(conn, method, target, body, headers)
                raise self._unreachable(send_error) from send_error
        try:
            return conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            # The coordinator closed the idle connection just as this request went out: it never saw it.
            if reused:
                return self._resend(conn, method, target, body, headers)
            raise

    def _resend(self, conn: http.client.HTTPConnection, method: str, target: str,
                body: bytes | ProgressReader | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn.close()
        if isinstance(body, ProgressReader):
            body.rewind()
        conn.request(method, target, body=body, headers=headers)
        return conn.getresponse()

    def _refusal(self, response: http.client.HTTPResponse, lease_fenced: bool = False) -> CoordinatorError:
        """Build the typed error for a non-2xx answer from its {"error": ...} body."""
        message = ""
        try:
            raw = response.read(_MAX_ERROR_BODY)
            answer = json.loads(raw.decode("utf-8"))
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                message = answer["error"].strip()
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if not message:
            message = f"the coordinator answered HTTP {response.status} {response.reason}".rstrip()
        return error_for(response.status, message, lease_fenced=lease_fenced)

    def _json_call(self, method: str, path: str, *, params: dict | None = None,
                   body: bytes | ProgressReader | None = None, headers: dict[str, str] | None = None,
                   lease_fenced: bool = False) -> Any:
        conn, response = self._open(method, path, params=params, body=body, headers=headers,
                                    lease_fenced=lease_fenced)
        raw = self._read_all(conn, response)
        if not raw:
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            message = f"the coordinator at {self.base_url} sent an answer that is not JSON"
            raise CoordinatorError(response.status, message) from None

    def _read_all(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> bytes:
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from exc
        self._release(conn, response)
        return raw

    def _stream_to(self, response: http.client.HTTPResponse, dest_dir: str, label: str) -> tuple[str, str]:
        """Write a response body into a temp file in `dest_dir`; return (temp path, SHA-256).

        The temp file is removed when anything goes wrong.
        """
        expected_size = response.getheader("Content-Length")
        handle, temp_path = tempfile.mkstemp(prefix=".renderq-", suffix=".part", dir=dest_dir)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(handle, "wb") as out:
                while True:
                    try:
                        block = response.read(_BLOCK_SIZE)
                    except (OSError, http.client.HTTPException) as exc:
                        raise self._unreachable(exc) from exc
                    if not block:
                        break
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if expected_size is not None and expected_size.isdigit() and int(expected_size) != size:
                raise DownloadRefused(
                    f"the download of {label} was cut short ({size} of {expected_size} bytes)"
                )
            return temp_path, digest.hexdigest()
        except BaseException:
            remove_quietly(temp_path)
            raise

    # -- generic ------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
                data: bytes | None = None, lease_fenced: bool = False) -> Any:
        """Make one API call (a JSON body, or raw bytes as `data`) and return the decoded answer; non-2xx answers
        raise the typed CoordinatorError for their status (LeaseLost for 409 when `lease_fenced`)."""
        body, headers = _encoded(json_body, data)
        return self._json_call(method.upper(), path, params=params, body=body, headers=headers,
                               lease_fenced=lease_fenced)

    def send(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
             data: bytes | None = None) -> tuple[int, str, bytes]:
        """One request whatever the answer: (HTTP status, Content-Type, body). Only a failed exchange raises
        (Unavailable); for tools that measure the coordinator and want its refusals as they are."""
        body, headers = _encoded(json_body, data)
        conn, response = self._open(method.upper(), path, params=params, body=body, headers=headers, refusals=False)
        raw = self._read_all(conn, response)
        return response.status, response.getheader("Content-Type") or "", raw

    def health(self) -> dict:
        """GET /health: {"ok", "version", "time"}."""
        return self.request("GET", "/health")

    # -- workers ------------------------------------------------------------------------------------------------

    def register_worker(
        self, name: str, host: str, blender_version: str, cpu_count: int, *, allows_python: bool = False,
        offered: dict | None = None,
    ) -> dict:
        """Register (or re-register) a worker; the answer holds worker_id, heartbeat_seconds and lease_seconds.

        `allows_python`: the worker lets Python stored in .blend files run, for tasks that need it. `offered`: its
        devices, engines, gpu, tags and video_encoders (its FFmpeg's), as POST /register_worker names them.
        """
        return self.request("POST", "/register_worker", json_body={
            "name": name, "host": host, "blender_version": blender_version, "cpu_count": cpu_count,
            "allows_python": bool(allows_python), **(offered or {})})

    def update_worker(self, worker_id: int, leases: list[str], *, rendering: Sequence[dict] = (),
                      logs: Sequence[dict] = ()) -> dict:
        """Heartbeat: renew the leases the worker holds; the answer lists those `revoked` and whether `enabled`.

        On a large farm, "rendering" reports ({task_id, frame, lease_id, started_at}) and log lines ({task_id,
        text}) ride on it instead of taking a request each."""
        body: dict[str, Any] = {"worker_id": worker_id, "leases": list(leases)}
        if rendering:
            body["rendering"] = list(rendering)
        if logs:
            body["logs"] = list(logs)
        return self.request("POST", "/update_worker", json_body=body)

    def list_workers(self) -> list[dict]:
        """All registered workers."""
        return self.request("GET", "/list_workers").get("workers", [])

    def set_worker_enabled(self, enabled: bool, *, worker_id: int | None = None, name: str | None = None) -> dict:
        """Switch a worker ON or OFF, named by id or by name; returns the worker. Needs the admin token."""
        if (worker_id is None) == (name is None):
            raise ValueError("name the worker by exactly one of worker_id or name")
        named = {"worker_id": worker_id} if worker_id is not None else {"name": name}
        return self.request("POST", "/set_worker_enabled", json_body={"enabled": bool(enabled), **named})

    # -- files --------------------------------------------------------------------------------------------------

    def _upload(self, path_in_api: str, params: dict, file_path: str,
                progress: Callable[[int, int], None] | None = None, lease_fenced: bool = False,
                prefix: bytes = b"") -> dict:
        """POST a file as the body (after `prefix`, a small part sent first), streamed."""
        with open(file_path, "rb") as file:
            total = os.fstat(file.fileno()).st_size + len(prefix)
            if progress is not None:
                progress(0, total)
            stream = PrefixedStream(prefix, file) if prefix else file
            # http.client reads the wrapper block by block, so the file never sits whole in memory; an explicit
            # Content-Length keeps it from switching to chunked encoding.
            return self._json_call("POST", path_in_api, params=params, body=ProgressReader(stream, total, progress),
                                   headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
                                   lease_fenced=lease_fenced)

    def upload_blend(
        self, path: str, filename: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> dict:
        """Stream a .blend file to the coordinator; `progress(sent_bytes, total_bytes)` is called as it goes.

        Returns {"sha256", "size", "filename"}.
        """
        name = filename or os.path.basename(path)
        return self._upload("/upload_blend", {"filename": name}, path, progress)

    def download_file(self, sha256: str, dest_path: str) -> None:
        """Download a stored file by hash to `dest_path`, verifying the hash before the file appears there."""
        dest_dir = os.path.dirname(os.path.abspath(dest_path))
        conn, response = self._open("GET", "/download_file", params={"sha256": sha256})
        try:
            temp_path, actual = self._stream_to(response, dest_dir, f"file {sha256}")
        finally:
            self._release(conn, response)
        if actual.lower() != sha256.lower():
            remove_quietly(temp_path)
            raise DownloadRefused(f"the downloaded file has SHA-256 {actual}, not the {sha256} asked for")
        try:
            os.replace(temp_path, dest_path)
        except OSError:
            remove_quietly(temp_path)
            raise

    def missing_files(self, hashes: list[str]) -> list[str]:
        """The hashes among `hashes` that the coordinator does not store yet (POST /missing_files).

        Duplicates are asked once; long lists go in several requests, as the coordinator takes a bounded number.
        """
        unique = list(dict.fromkeys(hashes))
        missing: list[str] = []
        for start in range(0, len(unique), _MISSING_FILES_BATCH):
            batch = unique[start:start + _MISSING_FILES_BATCH]
            answer = self.request("POST", "/missing_files", json_body={"sha256": batch})
            missing.extend(answer.get("missing", []))
        return list(dict.fromkeys(missing))

    def upload_file(self, path: str, sha256: str, progress: Callable[[int, int], None] | None = None) -> dict:
        """Stream a file to the coordinator's content store under its SHA-256 (POST /upload_file).

        The coordinator hashes what it receives and refuses (400) bytes that do not match `sha256`, so a file that
        changed since it was hashed is never stored under the old hash. `progress(sent_bytes, total_bytes)` is
        called as it goes. A large file goes straight to the farm's object store when the coordinator offers it
        (POST /upload_target), and counts once the coordinator has checked its hash there. Returns
        {"sha256", "size"}.
        """
        size = os.path.getsize(path)
        target = self._upload_target(size) if size >= DIRECT_UPLOAD_BYTES else None
        if target is None:
            return self._upload("/upload_file", {"sha256": sha256}, path, progress)
        with open(path, "rb") as stream:
            send_presigned(target, ProgressReader(stream, size, progress), size, self.timeout)
        return self.request("POST", "/upload_done", json_body={"sha256": sha256, "upload_id": target["upload_id"]})

    def _upload_target(self, size: int) -> dict | None:
        """Where to put a large file straight into the farm's object store, or None: through the coordinator."""
        try:
            target = self.request("POST", "/upload_target", json_body={"size": size})
        except NotFound:
            return None  # a coordinator older than direct uploads
        return target if isinstance(target, dict) and target.get("url") else None

    # -- tasks and frames ---------------------------------------------------------------------------------------

    def submit_task(self, **fields: Any) -> dict:
        """Submit a task (fields as in POST /submit_task); returns the task."""
        return self.request("POST", "/submit_task", json_body=fields)

    def claim_frame(self, worker_id: int, prefer_task_id: int | None = None, *,
                    rendering: Sequence[dict] = (), ahead: bool = False) -> dict:
        """Claim the worker's next frame (POST /frames/claim): {"frame": {...} or None, "wait_reason", ...}; the
        "rendering" reports of a large farm's worker ride on it. `ahead`: the worker is still rendering a frame."""
        ahead_field = {"ahead": True} if ahead else {}
        body: dict[str, Any] = {"worker_id": worker_id, "prefer_task_id": prefer_task_id, **ahead_field}
        body.update({"rendering": list(rendering)} if rendering else {})
        return self.request("POST", "/frames/claim", json_body=body)

    def finish_frame(self, worker_id: int, task_id: int, frame: int, lease_id: str, path: str, filename: str, *,
                     started_at: float | None = None, ended_at: float | None = None,
                     render_seconds: float | None = None, preview_path: str | None = None) -> dict:
        """Deliver a rendered frame in one request (POST /frames/finish): its file under its Blender name
        `filename`, and its done report. Returns {"frame": {...}}; LeaseLost when the lease is gone (nothing of
        the frame is then stored). A preview (a small PNG of the frame) goes first in the same body, its size
        in `preview_size`."""
        preview = b""
        if preview_path:
            with open(preview_path, "rb") as handle:
                preview = handle.read()
        params = {"worker_id": worker_id, "task_id": task_id, "frame": frame, "lease_id": lease_id,
                  "filename": filename, "started_at": started_at, "ended_at": ended_at,
                  "render_seconds": render_seconds, "preview_size": len(preview) or None}
        return self._upload("/frames/finish", params, path, lease_fenced=True, prefix=preview)

    def update_frame(
        self, worker_id: int, task_id: int, frame: int, lease_id: str, status: str, **fields: Any
    ) -> dict:
        """Report on a held frame: status rendering, done, failed or released; extra fields such as render_seconds.

        Fields whose value is None are left out.
        """
        body: dict[str, Any] = {"worker_id": worker_id, "task_id": task_id, "frame": frame, "lease_id": lease_id,
                                "status": status}
        body.update({key: value for key, value in fields.items() if value is not None})
        return self.request("POST", "/update_task", json_body=body, lease_fenced=True)

    def upload_frame(self, worker_id: int, task_id: int, frame: int, lease_id: str, path: str, filename: str) -> dict:
        """Stream a rendered frame's file to the coordinator under its Blender name `filename`."""
        return self._upload("/upload_frame", {"worker_id": worker_id, "task_id": task_id, "frame": frame,
                                              "lease_id": lease_id, "filename": filename}, path, lease_fenced=True)

    def list_tasks(self, status: str | None = None) -> list[dict]:
        """Task summaries, newest first, optionally only those with `status`."""
        return self.request("GET", "/tasks", params={"status": status}).get("tasks", [])

    def get_task(self, task_id: int, *, with_frames: bool = True, frames_status: str | None = None) -> dict:
        """One task with its progress and all its frames (only those in `frames_status` when given), read page by
        page; with_frames=False: the summary alone, one small answer however many frames the task has."""
        if not with_frames:
            return self.request("GET", "/task", params={"task_id": task_id, "frames_limit": 0})
        pages = self.iter_task_pages(task_id, frames_status)
        task = next(pages)
        frames = list(task.get("frames") or [])
        for page in pages:
            frames.extend(page.get("frames") or [])
        task["frames"] = frames
        task.pop("frames_next", None)
        return task

    def iter_task_pages(self, task_id: int, frames_status: str | None = None) -> Iterator[dict]:
        """The task's answers page by page (GET /task with frames_after), each with one page of its frames."""
        after: int | None = None
        while True:
            answer = self.request("GET", "/task", params={"task_id": task_id, "frames_after": after,
                                                          "frames_limit": _FRAMES_PAGE,
                                                          "frames_status": frames_status})
            yield answer
            following = answer.get("frames_next")
            # Pages move forward only: a confused coordinator cannot keep the client reading forever.
            if (not isinstance(following, int) or isinstance(following, bool)
                    or (after is not None and following <= after)):
                return
            after = following

    def cancel_task(self, task_id: int) -> dict:
        """Cancel a task's frames that are not done; returns the task. Needs the admin token."""
        return self.request("POST", "/cancel_task", json_body={"task_id": task_id})

    def approve_task(self, task_id: int) -> dict:
        """Render the rest of a task whose scout frames are done; returns the task (artist: only their own)."""
        return self.request("POST", "/approve_task", json_body={"task_id": task_id})

    def set_task_priority(self, task_id: int, priority: int) -> dict:
        """Change a task's priority (higher renders first); returns the task. Needs the admin token."""
        return self.request("POST", "/set_task_priority", json_body={"task_id": task_id, "priority": priority})

    def pause_task(self, task_id: int) -> dict:
        """Stop handing out the task's frames (those being rendered finish); returns the task. Needs the admin token."""
        return self.request("POST", "/pause_task", json_body={"task_id": task_id})

    def resume_task(self, task_id: int) -> dict:
        """Hand out a paused task's frames again; returns the task. Needs the admin token."""
        return self.request("POST", "/resume_task", json_body={"task_id": task_id})

    def retry_failed_frames(self, task_id: int) -> dict:
        """Queue the task's failed frames again with their failures reset; returns the task. Needs the admin token."""
        return self.request("POST", "/retry_failed_frames", json_body={"task_id": task_id})

    def download_frame(self, task_id: int, frame: int, dest_dir: str, expected_sha256: str | None = None,
                       save_as: str | None = None, preview: bool = False) -> str:
        """Save a done frame into `dest_dir` under its Blender name (or `save_as`) and return the path; with
        `preview`, the image of it a page shows (its PNG preview when it has one) under the name it is sent with.

        A name that could leave `dest_dir` is refused. With `expected_sha256` (the frame's output_sha256, or its
        preview_sha256), a file that does not match is refused too.
        """
        params = {"task_id": task_id, "frame": frame, "inline": "true" if preview else None}
        conn, response = self._open("GET", "/download_frame", params=params)
        try:
            name = save_as or response.headers.get_filename()
            if not is_safe_file_name(name):
                raise DownloadRefused(
                    f"the coordinator named frame {frame} of task {task_id} {name!r}, which is not a safe file name"
                )
            os.makedirs(dest_dir, exist_ok=True)
            final_path = os.path.join(dest_dir, name)
            check_not_link(final_path)
            temp_path, actual = self._stream_to(response, dest_dir, f"frame {frame} of task {task_id}")
        finally:
            self._release(conn, response)
        if expected_sha256 and actual.lower() != expected_sha256.lower():
            remove_quietly(temp_path)
            raise DownloadRefused(
                f"frame {frame} of task {task_id} arrived with SHA-256 {actual}, not {expected_sha256}"
            )
        try:
            # rename() replaces a name, never writing through a link that appeared there meanwhile.
            os.replace(temp_path, final_path)
        except OSError:
            remove_quietly(temp_path)
            raise
        return final_path

    def task_manifest(self, task_id: int) -> dict:
        """The task's packed tree: {"task_id", "main_file", "files": [{"path", "sha256", "size"}, ...]}."""
        return self.request("GET", "/task_manifest", params={"task_id": task_id})

    def video_frames(self, task_id: int, frames_after: int | None = None) -> dict:
        """One page of the frames a task's video is made of (GET /video_frames): {"frames": [{"frame", "output",
        "sha256", "size"}, ...], "frames_next"}; ask again from frames_next until it is None."""
        params: dict[str, Any] = {"task_id": task_id}
        if frames_after is not None:
            params["frames_after"] = frames_after
        return self.request("GET", "/video_frames", params=params)

    def download_frames_zip(self, task_id: int, dest_path: str) -> str:
        """Save one zip of the task's rendered frames at `dest_path` and return the path.

        The zip is streamed into a temporary file next to `dest_path` and only then renamed, so an interrupted
        download never leaves a partial zip under the final name.
        """
        dest_dir = os.path.dirname(os.path.abspath(dest_path))
        conn, response = self._open("GET", "/download_frames_zip", params={"task_id": task_id})
        try:
            # Only now: a refused download (no frames yet) should not leave an empty folder behind.
            os.makedirs(dest_dir, exist_ok=True)
            check_not_link(dest_path)
            temp_path, _ = self._stream_to(response, dest_dir, f"the frames of task {task_id}")
        finally:
            self._release(conn, response)
        try:
            os.replace(temp_path, dest_path)
        except OSError:
            remove_quietly(temp_path)
            raise
        return dest_path

    # -- disk -----------------------------------------------------------------------------------------------------

    def disk_usage(self) -> dict:
        """The coordinator's disk: {"total", "free", "reserve", "tasks": [{"task_id", "name", "status", "bytes"}]}."""
        return self.request("GET", "/disk_usage")

    def delete_task_files(self, task_id: int) -> dict:
        """Delete an ended task's frames and the input files no other task uses.

        Returns {"task_id", "files_deleted", "bytes_freed"}; refused (409) while the task is queued, running or
        paused. Needs the admin token.
        """
        return self.request("POST", "/delete_task_files", json_body={"task_id": task_id})

    def append_log(self, task_id: int, worker_id: int, text: str) -> dict:
        """Append text to a task's log; returns {"size"}."""
        return self.request("POST", "/append_log", json_body={"task_id": task_id, "worker_id": worker_id, "text": text})

    def get_log(self, task_id: int, offset: int = 0) -> dict:
        """Read a task's log from byte `offset`: {"text", "offset", "next_offset"}."""
        return self.request("GET", "/get_log", params={"task_id": task_id, "offset": offset})


def _encoded(json_body: Any, data: bytes | None) -> tuple[bytes | None, dict[str, str]]:
    """A request body and its Content-Type: `json_body` as JSON, else `data` as bytes, else none."""
    if json_body is not None:
        return json.dumps(json_body).encode("utf-8"), {"Content-Type": "application/json"}
    if data is not None:
        return data, {"Content-Type": "application/octet-stream"}
    return None, {}


def _param_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

