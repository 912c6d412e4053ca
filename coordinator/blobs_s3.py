"""The S3 engine of the blob store: content-addressed objects `prefix/<sha256>` in one bucket of any S3-compatible
object store, through boto3.

Uploads through the coordinator are spooled and hashed on its disk first (ContentStore.put_stream), then copied to
the bucket, so an object under a hash always has that content. Large transfers skip the coordinator: downloads are
answered with a presigned GET URL, and a large upload goes to a presigned PUT URL under `prefix/incoming/<id>`;
finish_upload then reads it back once, and only an object whose SHA-256 matches is copied to its hash's key.

S3 cannot set an object's time, so "asked for again" (touch) writes an empty marker `prefix/touched/<sha256>`; the
orphan sweep counts the later of the object's and the marker's times. Presigning needs no request to the store; any
other call that fails because the store is down, refuses the credentials or lacks the bucket is a 503 with a sentence
(ServiceUnavailable), never a 500.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import boto3
import botocore.config
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .blobs import CHUNK, SWEEP_SCAN_LIMIT, ContentStore, Referenced, is_sha256
from .errors import BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable

# Presigned URLs live this long: long enough for a slow download of a large file to start, short enough that a
# leaked URL soon stops working.
PRESIGN_SECONDS = 3600
# Parallel requests of /missing_files (one HEAD and one marker per stored file).
TOUCH_THREADS = 16
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_blob_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of `s3://bucket/prefix`; ValueError with a sentence otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"the blob store {url!r} is not an s3://bucket/prefix URL")
    prefix = parts.path.strip("/")
    return parts.netloc, (prefix + "/" if prefix else "")


class _Missing(Exception):
    """The object asked for is not in the bucket."""


class S3BlobStore(ContentStore):
    """Blobs in `bucket` under `prefix`; `root` on the coordinator's disk spools uploads on their way in."""

    sync_spool = False

    def __init__(self, url: str, root: str, *, endpoint: str = "", public_endpoint: str = "", region: str = "",
                 reserve_bytes: int = 64 * 1024 * 1024) -> None:
        self.bucket, self.prefix = parse_blob_url(url)
        super().__init__(root, reserve_bytes=reserve_bytes)
        # Path-style addresses for a named endpoint (SeaweedFS, MinIO, Ceph): their buckets have no DNS names.
        config = botocore.config.Config(
            signature_version="s3v4", connect_timeout=5, read_timeout=60, max_pool_connections=TOUCH_THREADS * 2,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path" if endpoint else "auto"})
        # Credentials and, unless given here, the endpoint and region come from the usual AWS_* variables.
        self._s3 = boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None, config=config)
        # Presigned URLs name the address workers and artists reach the store at, when it differs from the
        # coordinator's; signing them makes no request.
        self._signer = self._s3 if not public_endpoint else boto3.client(
            "s3", endpoint_url=public_endpoint, region_name=region or None,
            config=config.merge(botocore.config.Config(s3={"addressing_style": "path"})))
        self.where = f"s3://{self.bucket}/{self.prefix}"
        try:
            self._call("head_bucket", Bucket=self.bucket)  # refuse to start on a store that cannot serve
        except _Missing:
            raise ServiceUnavailable(f"the object store has no bucket {self.bucket!r}; create it") from None

    # -- keys and calls ---------------------------------------------------------------------------------------------

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    def _marker(self, sha256: str) -> str:
        return f"{self.prefix}touched/{sha256}"

    def _incoming_key(self, upload_id: str) -> str:
        return f"{self.prefix}incoming/{upload_id}"

    def _call(self, operation: str, **params: Any) -> Any:
        """One S3 call; _Missing for an absent object, ServiceUnavailable for a store that cannot serve it."""
        try:
            return getattr(self._s3, operation)(**params)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise _Missing() from None
            if code == "NoSuchBucket":
                raise ServiceUnavailable(f"the object store has no bucket {self.bucket!r}; create it") from None
            raise ServiceUnavailable(f"the object store refused a request for {self.where} ({code or error}); "
                                     "see the coordinator's log") from None
        except NoCredentialsError:
            raise ServiceUnavailable("the coordinator has no credentials for the object store: set "
                                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except (BotoCoreError, Boto3Error) as error:
            raise ServiceUnavailable(f"the object store of {self.where} cannot be reached ({error}); nothing was "
                                     "changed, try again later") from None

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._call("head_object", Bucket=self.bucket, Key=key)
        except _Missing:
            return None

    # -- the engine's primitives ------------------------------------------------------------------------------------

    def size(self, sha256: str) -> int | None:
        if not is_sha256(sha256):
            return None
        head = self._head(self._key(sha256))
        return None if head is None else int(head["ContentLength"])

    def open(self, sha256: str) -> BinaryIO:
        return self._open_key(self._key(sha256), f"no stored file has SHA-256 {sha256}")

    def _open_key(self, key: str, missing: str, **params: Any) -> BinaryIO:
        try:
            return self._call("get_object", Bucket=self.bucket, Key=key, **params)["Body"]
        except _Missing:
            raise NotFound(missing) from None

    def head(self, sha256: str, count: int = 64) -> bytes:
        reader = self._open_key(self._key(sha256), f"no stored file has SHA-256 {sha256}",
                                Range=f"bytes=0-{max(count, 1) - 1}")
        with contextlib.closing(reader):
            return reader.read(count)

    def download_url(self, sha256: str, filename: str) -> str | None:
        """A presigned GET of the object that saves it as `filename`; the client sends no farm token there."""
        quoted = urllib.parse.quote(filename, safe="")
        return self._signer.generate_presigned_url("get_object", ExpiresIn=PRESIGN_SECONDS, Params={
            "Bucket": self.bucket, "Key": self._key(sha256), "ResponseContentType": "application/octet-stream",
            "ResponseContentDisposition": f"attachment; filename*=UTF-8''{quoted}"})

    def _publish(self, temp_path: str, sha256: str) -> None:
        if self._head(self._key(sha256)) is not None:
            self._call("put_object", Bucket=self.bucket, Key=self._marker(sha256), Body=b"")  # stored: refresh
            return
        self._call("upload_file", Filename=temp_path, Bucket=self.bucket, Key=self._key(sha256))

    def _remove(self, sha256: str) -> int | None:
        head = self._head(self._key(sha256))
        if head is None:
            return None
        self._call("delete_object", Bucket=self.bucket, Key=self._key(sha256))
        self._call("delete_object", Bucket=self.bucket, Key=self._marker(sha256))
        return int(head["ContentLength"])

    def _refresh(self, sha256: str) -> bool:
        if self._head(self._key(sha256)) is None:
            return False
        self._call("put_object", Bucket=self.bucket, Key=self._marker(sha256), Body=b"")
        return True

    def touch_many(self, hashes: Iterable[str]) -> set[str]:
        """As ContentStore.touch_many, TOUCH_THREADS requests at a time: a project of thousands of files asks."""
        unique = sorted(set(hashes))
        with concurrent.futures.ThreadPoolExecutor(TOUCH_THREADS, thread_name_prefix="blob-touch") as pool:
            stored = list(pool.map(self.touch, unique))
        return {sha256 for sha256, present in zip(unique, stored, strict=True) if present}

    def _stored_at(self, sha256: str) -> float | None:
        head = self._head(self._key(sha256))
        if head is None:
            return None
        marker = self._head(self._marker(sha256))
        times = [head["LastModified"].timestamp()] + ([marker["LastModified"].timestamp()] if marker else [])
        return max(times)

    def _list_after(self, start: str, limit: int) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for obj in self._objects(self.prefix, self.prefix + start if start else "", limit):
            name = obj["Key"][len(self.prefix):]
            if is_sha256(name):
                found.append((name, obj["LastModified"].timestamp()))
        return found[:limit]

    def _objects(self, prefix: str, start_after: str, limit: int) -> Iterator[dict[str, Any]]:
        """Objects directly under `prefix` (not in its sub-folders) in key order after `start_after`, in pages."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/",
                                  "MaxKeys": min(limit, 1000)}
        if start_after:
            params["StartAfter"] = start_after
        seen = 0
        while seen < limit:
            page = self._call("list_objects_v2", **params)
            contents = page.get("Contents", [])
            seen += len(contents)
            yield from contents
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def sweep_orphans(self, older_than: float, referenced: Referenced,
                      scan_limit: int = SWEEP_SCAN_LIMIT) -> tuple[int, int]:
        """As ContentStore.sweep_orphans, and direct uploads never finished are deleted after the same grace."""
        files, freed = super().sweep_orphans(older_than, referenced, scan_limit)
        for obj in self._objects(f"{self.prefix}incoming/", "", scan_limit):
            if obj["LastModified"].timestamp() < older_than:
                self._call("delete_object", Bucket=self.bucket, Key=obj["Key"])
                files, freed = files + 1, freed + int(obj.get("Size", 0))
        return files, freed

    # -- direct uploads ---------------------------------------------------------------------------------------------

    def upload_target(self, size: int) -> dict[str, Any] | None:
        """Where a client puts a large file itself: {"upload_id", "url", "method", "headers"}."""
        upload_id = uuid.uuid4().hex
        url = self._signer.generate_presigned_url("put_object", ExpiresIn=PRESIGN_SECONDS, Params={
            "Bucket": self.bucket, "Key": self._incoming_key(upload_id)})
        return {"upload_id": upload_id, "url": url, "method": "PUT", "headers": {}}

    def finish_upload(self, sha256: str, upload_id: str, limit: int) -> tuple[str, int]:
        """Count a direct upload as the file `sha256` once its object is read back and matches: (sha256, size).
        The uploaded object is deleted either way."""
        if not UPLOAD_ID.match(upload_id or ""):
            raise BadRequest("'upload_id' is not one this coordinator gave out")
        key = self._incoming_key(upload_id)
        head = self._head(key)
        if head is None:
            raise BadRequest(f"nothing was uploaded under upload id {upload_id} (or it was already counted)")
        try:
            size = int(head["ContentLength"])
            if size > limit:
                raise PayloadTooLarge(f"the upload is larger than the coordinator's limit of {limit} bytes")
            actual = self._hash_object(key)
            if actual != sha256:
                raise BadRequest(f"the upload's SHA-256 is {actual}, not {sha256} as announced")
            with self.reserved([sha256]):
                if not self._refresh(sha256):
                    self._call("copy", CopySource={"Bucket": self.bucket, "Key": key}, Bucket=self.bucket,
                               Key=self._key(sha256))
            return sha256, size
        finally:
            self._call("delete_object", Bucket=self.bucket, Key=key)

    def _hash_object(self, key: str) -> str:
        digest = hashlib.sha256()
        with contextlib.closing(self._open_key(key, "the upload vanished before it was checked")) as body:
            try:
                while chunk := body.read(CHUNK):
                    digest.update(chunk)
            except (BotoCoreError, OSError) as error:
                raise ServiceUnavailable(f"reading the upload back from the object store failed ({error}); "
                                         "upload it again") from None
        return digest.hexdigest()
