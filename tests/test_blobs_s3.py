"""Task files and frames in an S3 bucket: a real coordinator process started with `--blob-store s3://...` over a real
SeaweedFS, real workers, real HTTP.

Workers and artists hold only the farm's tokens: the bucket refuses unsigned requests, so every download that works
went through a presigned URL the coordinator handed out.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import subprocess
import sys
import urllib.parse

import pytest
from harness import ROOT, TcpProxy, wait_for
from seaweedfs import credentials_env

from renderq.http_client import DIRECT_UPLOAD_BYTES, CoordinatorClient, DownloadRefused

PREFIX = "farm"
BLEND_HEAD = b"BLENDER-v304RENDERQ TEST"


def start_s3_coordinator(farm, monkeypatch, endpoint: str, bucket: str, *extra: str) -> None:
    """Start the farm's coordinator on the bucket; only it gets the store's credentials (its environment), never a
    worker started afterwards."""
    for name, value in credentials_env().items():
        monkeypatch.setenv(name, value)
    farm.start_coordinator("--blob-store", f"s3://{bucket}/{PREFIX}", "--s3-endpoint", endpoint, *extra)
    for name in credentials_env():
        monkeypatch.delenv(name)


def keys(seaweedfs, bucket: str, under: str = "") -> dict[str, int]:
    """Key -> size of every object in the bucket under PREFIX/under."""
    found: dict[str, int] = {}
    pages = seaweedfs.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/{under}")
    for page in pages:
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["Size"]
    return found


def get_without_following(url: str, token: str) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    conn.request("GET", parts.path + "?" + parts.query, headers={"Authorization": f"Bearer {token}"} if token else {})
    return conn.getresponse()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3_farm(farm, monkeypatch, seaweedfs, s3_bucket):
    start_s3_coordinator(farm, monkeypatch, seaweedfs.endpoint, s3_bucket)
    return farm


def test_a_task_renders_with_its_files_and_frames_in_the_bucket(s3_farm, s3_bucket, seaweedfs, scenes,
                                                                 tmp_path):
    farm = s3_farm
    if farm.blender is None:
        pytest.skip("no Blender here")
    farm.start_worker("a")
    # The artist's real command line: it uploads the file, waits, and saves each frame through the redirects.
    out = tmp_path / "frames"
    submitted = subprocess.run([sys.executable, "-m", "renderq", "submit", scenes("basic", frames=2), "--frames", "1-2",
                                "--wait", "--output", str(out), *farm.cli_flags()], capture_output=True, text=True,
                               timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert sorted(os.listdir(out)) == ["f_0001.png", "f_0002.png"]
    task_id = int(re.search(r"submitted task (\d+)", submitted.stdout)[1])
    task = farm.api.task(task_id)
    assert task["status"] == "done", task
    stored = keys(seaweedfs, s3_bucket)
    outputs = {frame["output_sha256"] for frame in task["frames"]}
    assert len(outputs) == 2 and all(f"{PREFIX}/{h}" in stored for h in outputs), stored
    # The coordinator kept nothing of them on its own disk: the spool folder is empty.
    files_dir = os.path.join(farm.data_dir, "files")
    assert os.listdir(os.path.join(files_dir, "incoming")) == [] and set(os.listdir(files_dir)) == {"incoming"}
    # A download is a redirect to the store, which serves it without any token; the worker fetched the .blend so.
    answer = get_without_following(f"{farm.url}/download_frame?task_id={task_id}&frame=1", farm.token("artist"))
    assert answer.status == 302
    location = answer.getheader("Location")
    assert location.startswith(seaweedfs.endpoint) and "X-Amz-Signature" in location
    unsigned = location.split("?", 1)[0]
    assert get_without_following(unsigned, "").status == 403  # the bucket itself is closed
    client = CoordinatorClient(farm.url, token=farm.token("artist"))
    saved = client.download_frame(task_id, 1, str(tmp_path / "out"), expected_sha256=task["frames"][0]["output_sha256"])
    assert os.path.getsize(saved) == stored[f"{PREFIX}/{task['frames'][0]['output_sha256']}"]
    with open(saved, "rb") as fetched:
        assert fetched.read() == (out / "f_0001.png").read_bytes()
    # The status page's thumbnails stay on the coordinator's origin: inline is sent by it, not redirected.
    status, body = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame=1&inline=true")
    assert status == 200 and body.startswith(b"\x89PNG")
    status, body = farm.api.call("GET", f"/download_frames_zip?task_id={task_id}")
    assert status == 200 and body.startswith(b"PK")


def test_a_large_file_goes_straight_to_the_bucket_and_counts_once_checked(s3_farm, s3_bucket, seaweedfs,
                                                                          tmp_path):
    farm = s3_farm
    data = os.urandom(DIRECT_UPLOAD_BYTES + 1000)
    path = tmp_path / "texture.exr"
    path.write_bytes(data)
    client = CoordinatorClient(farm.url, token=farm.token("artist"))
    assert client.missing_files([sha(data)]) == [sha(data)]
    assert client.upload_file(str(path), sha(data)) == {"sha256": sha(data), "size": len(data)}
    assert client.missing_files([sha(data)]) == []
    assert keys(seaweedfs, s3_bucket, "incoming/") == {}  # the uploaded object was moved to its hash
    assert keys(seaweedfs, s3_bucket)[f"{PREFIX}/{sha(data)}"] == len(data)
    # A worker fetches it through the redirect, without the store's credentials.
    worker = CoordinatorClient(farm.url, token=farm.token("worker"))
    worker.download_file(sha(data), str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == data


def test_an_upload_that_does_not_match_its_hash_is_refused_and_deleted(s3_farm, s3_bucket, seaweedfs):
    farm = s3_farm
    claimed = sha(b"what the artist announced")
    # Through the coordinator.
    status, answer = farm.api.call("POST", f"/upload_file?sha256={claimed}", raw=b"other bytes",
                                   content_type="application/octet-stream")
    assert status == 400 and "SHA-256" in answer["error"]
    # Straight into the store: the coordinator reads it back, refuses it and deletes it.
    target = farm.api.post("/upload_target", {"size": 11})
    assert target["url"] and target["method"] == "PUT"
    parts = urllib.parse.urlsplit(target["url"])
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    conn.request("PUT", parts.path + "?" + parts.query, body=b"other bytes")
    assert conn.getresponse().status == 200
    assert len(keys(seaweedfs, s3_bucket, "incoming/")) == 1
    status, answer = farm.api.call("POST", "/upload_done", {"sha256": claimed, "upload_id": target["upload_id"]})
    assert status == 400 and "SHA-256" in answer["error"], answer
    assert keys(seaweedfs, s3_bucket) == {}
    status, answer = farm.api.call("POST", "/upload_done", {"sha256": claimed, "upload_id": target["upload_id"]})
    assert status == 400 and "nothing was uploaded" in answer["error"]
    status, answer = farm.api.call("POST", "/upload_done", {"sha256": claimed, "upload_id": "../../etc"})
    assert status == 400


def test_garbage_collection_deletes_an_orphan_from_the_bucket(farm, monkeypatch, seaweedfs, s3_bucket):
    start_s3_coordinator(farm, monkeypatch, seaweedfs.endpoint, s3_bucket, "--orphan-grace", "2")
    blend = BLEND_HEAD + b"\0" * 100
    status, answer = farm.api.call("POST", "/upload_blend?filename=scene.blend", raw=blend,
                                   content_type="application/octet-stream")
    assert status == 200, answer
    used = answer["sha256"]
    farm.api.post("/submit_task", {"name": "kept", "blend_sha256": used, "frame_start": 1, "frame_end": 1})
    orphan = b"uploaded, never submitted"
    status, _ = farm.api.call("POST", f"/upload_file?sha256={sha(orphan)}", raw=orphan,
                              content_type="application/octet-stream")
    assert status == 200 and f"{PREFIX}/{sha(orphan)}" in keys(seaweedfs, s3_bucket)
    wait_for(lambda: f"{PREFIX}/{sha(orphan)}" not in keys(seaweedfs, s3_bucket), 30,
             "the orphan sweep to delete the unused object")
    assert f"{PREFIX}/{used}" in keys(seaweedfs, s3_bucket)  # a file a task uses stays


def test_the_object_store_down_is_a_clear_503(farm, monkeypatch, seaweedfs, s3_bucket, tmp_path):
    endpoint = urllib.parse.urlsplit(seaweedfs.endpoint)
    proxy = TcpProxy(endpoint.port)
    try:
        start_s3_coordinator(farm, monkeypatch, proxy.url, s3_bucket)
        data = b"a file of the task"
        status, _ = farm.api.call("POST", f"/upload_file?sha256={sha(data)}", raw=data,
                                  content_type="application/octet-stream")
        assert status == 200
        # A worker holding a frame, to deliver it (the fast route) while the store is away.
        status, blend = farm.api.call("POST", "/upload_blend?filename=a.blend", raw=BLEND_HEAD,
                                      content_type="application/octet-stream")
        task_id = farm.api.post("/submit_task", {"name": "t", "blend_sha256": blend["sha256"], "frame_start": 1,
                                                 "frame_end": 1})["task_id"]
        worker_id = farm.api.post("/register_worker", {"name": "w", "blender_version": "3.4.1"})["worker_id"]
        lease = farm.api.post("/frames/claim", {"worker_id": worker_id})["frame"]
        finish = (f"/frames/finish?worker_id={worker_id}&task_id={task_id}&frame=1&lease_id={lease['lease_id']}"
                  "&filename=f_0001.png")
        proxy.cut("refuse")
        for method, path, body, raw in (("POST", "/missing_files", {"sha256": [sha(data)]}, None),
                                        ("POST", f"/upload_file?sha256={sha(b'x')}", None, b"x"),
                                        ("GET", f"/download_file?sha256={sha(data)}", None, None),
                                        ("POST", finish, None, b"rendered pixels")):
            status, answer = farm.api.call(method, path, body, raw=raw, content_type=raw and "application/octet-stream")
            assert status == 503, (path, status, answer)
            assert "object store" in answer["error"], answer
        # A worker's client reports it plainly too, and the coordinator is still up.
        worker = CoordinatorClient(farm.url, token=farm.token("worker"))
        with pytest.raises(Exception, match="object store"):
            worker.download_file(sha(data), str(tmp_path / "fetched"))
        held = farm.api.task(task_id)["frames"][0]
        assert held["status"] == "leased" and not held["output_sha256"], held  # nothing half-done was recorded
        proxy.restore()
        worker.download_file(sha(data), str(tmp_path / "fetched"))
        assert (tmp_path / "fetched").read_bytes() == data
        status, answer = farm.api.call("POST", finish, raw=b"rendered pixels", content_type="application/octet-stream")
        assert status == 200 and answer["frame"]["status"] == "done", answer
    finally:
        proxy.close()


def test_a_presigned_download_that_fails_is_refused_plainly(s3_farm, tmp_path):
    """The client turns a store's refusal (an expired or forged URL) into a sentence, and sends no token there."""
    farm = s3_farm
    data = b"frame bytes"
    farm.api.call("POST", f"/upload_file?sha256={sha(data)}", raw=data, content_type="application/octet-stream")
    answer = get_without_following(f"{farm.url}/download_file?sha256={sha(data)}", farm.token("worker"))
    forged = answer.getheader("Location").replace("X-Amz-Signature=", "X-Amz-Signature=0")
    from renderq.object_store import open_presigned

    with pytest.raises(DownloadRefused, match="object store"):
        open_presigned(forged, 10)


def test_presigned_urls_name_the_public_endpoint(farm, monkeypatch, seaweedfs, s3_bucket, tmp_path):
    """The coordinator reaches the store at one address, workers at another (--s3-public-endpoint)."""
    public = TcpProxy(urllib.parse.urlsplit(seaweedfs.endpoint).port)
    try:
        start_s3_coordinator(farm, monkeypatch, seaweedfs.endpoint, s3_bucket, "--s3-public-endpoint", public.url)
        data = b"a texture"
        farm.api.call("POST", f"/upload_file?sha256={sha(data)}", raw=data, content_type="application/octet-stream")
        answer = get_without_following(f"{farm.url}/download_file?sha256={sha(data)}", farm.token("worker"))
        assert answer.status == 302 and answer.getheader("Location").startswith(public.url + "/")
        CoordinatorClient(farm.url, token=farm.token("worker")).download_file(sha(data), str(tmp_path / "f"))
        assert (tmp_path / "f").read_bytes() == data and public.exchanges
    finally:
        public.close()


def test_a_coordinator_whose_bucket_is_missing_refuses_to_start_with_a_sentence(seaweedfs, tmp_path):
    env = {**os.environ, **credentials_env(), "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    done = subprocess.run([sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", "0",
                           "--data-dir", str(tmp_path / "data"), "--blob-store", "s3://no-such-bucket/farm",
                           "--s3-endpoint", seaweedfs.endpoint], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "renderq coordinator: the object store has no bucket 'no-such-bucket'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_direct_upload_larger_than_announced_and_than_the_limit_is_refused(farm, monkeypatch, seaweedfs,
                                                                             s3_bucket):
    """Announcing a small file, then putting a large one straight into the store, stores nothing."""
    start_s3_coordinator(farm, monkeypatch, seaweedfs.endpoint, s3_bucket, "--upload-limit", "2K")
    status, answer = farm.api.call("POST", "/upload_target", {"size": 4096})
    assert status == 413 and "upload limit" in answer["error"]
    target = farm.api.post("/upload_target", {"size": 100})
    parts = urllib.parse.urlsplit(target["url"])
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    data = os.urandom(3000)
    conn.request("PUT", parts.path + "?" + parts.query, body=data)
    assert conn.getresponse().status == 200
    status, answer = farm.api.call("POST", "/upload_done", {"sha256": sha(data), "upload_id": target["upload_id"]})
    assert status == 413 and "limit" in answer["error"], answer
    assert keys(seaweedfs, s3_bucket) == {}
