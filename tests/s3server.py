"""The tests' S3 object store: renderq/local_servers.py's SeaweedFS with a fixed test key and no bucket of its own
(each test makes one). Free of pytest: the tests' fixtures (tests/seaweedfs.py) and the cluster benchmarks both start
it from here."""

from __future__ import annotations

from renderq import local_servers
from renderq.local_servers import S3_REGION, weed_binary

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedFS", "credentials_env", "weed_binary"]

ACCESS_KEY = "renderq-test-key"
SECRET_KEY = "renderq-test-secret-0123456789"


class SeaweedFS(local_servers.SeaweedFS):
    """SeaweedFS in `folder` with the test key, not started yet."""

    def __init__(self, folder: str) -> None:
        super().__init__(folder, access_key=ACCESS_KEY, secret_key=SECRET_KEY, bucket=None)


def credentials_env() -> dict[str, str]:
    """The AWS_* variables a coordinator of the test store reads its credentials from."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": S3_REGION}
