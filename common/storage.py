"""Images in S3-compatible storage (AWS S3, MinIO, SeaweedFS): put, get, and the bucket made on first use."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from common.errors import ImageTooLarge, Unreadable
from common.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class ListedObject:
    key: str
    etag: str  # without the quotes S3 puts around it
    size: int


class ObjectStorage:
    """One bucket of the service's. boto3 clients are thread-safe, so one instance serves a process."""

    def __init__(self, client: S3Client, bucket: str, *, owned: bool = True) -> None:
        self._client = client
        self.bucket = bucket
        # The service creates its own bucket on first use; a user's bucket must exist already.
        self._bucket_ready = not owned
        self._bucket_lock = threading.Lock()

    def in_bucket(self, bucket: str) -> ObjectStorage:
        """The same client on another bucket (a bulk job's source or output), never created by us."""
        if bucket == self.bucket:
            return self
        return ObjectStorage(self._client, bucket, owned=False)

    @classmethod
    def from_settings(cls, settings: Settings, job_threads: int = 32) -> ObjectStorage:
        """A client for the service's bucket; `job_threads`: threads besides the bulk fetchers that may use S3
        at once (a worker's job threads)."""
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.aws_region,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            # Path-style addressing works with every S3-compatible server; AWS accepts it too.
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                # One connection per thread that may talk to S3 at once (botocore's default is 10): the bulk
                # fetch threads, the job threads, and a few for listings and results.
                max_pool_connections=max(64, settings.bulk_fetch_threads + job_threads + 8),
            ),
        )
        return cls(client, settings.s3_bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet; cheap after the first success."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                try:
                    self._client.create_bucket(Bucket=self.bucket)
                except ClientError as create_exc:
                    # Another process may have created it between our head and create.
                    code = create_exc.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.ensure_bucket()
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_stream(self, key: str, stream: IO[bytes], content_type: str = "application/octet-stream") -> None:
        """Store a file-like object's content, read as a stream (boto3 uploads a large one in parts)."""
        self.ensure_bucket()
        self._client.upload_fileobj(stream, self.bucket, key, ExtraArgs={"ContentType": content_type})

    def stream(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """An object's content in chunks, for an answer that must not hold a large file in memory; the object is
        requested at once (a missing one raises here, not as the answer streams)."""
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return body.iter_chunks(chunk_bytes)

    def get(self, key: str, max_bytes: int, unreadable: Unreadable | None = None) -> bytes:
        """Read one object, refusing anything larger than max_bytes before reading its body. With `unreadable`,
        the S3 errors it names are the object's own problem (ImageFetchError); others raise botocore's errors."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            error = unreadable.error(exc.response.get("Error", {}).get("Code", "")) if unreadable else None
            if error is not None:
                raise error from exc
            raise
        if response["ContentLength"] > max_bytes:
            response["Body"].close()
            raise ImageTooLarge(f"The image is {response['ContentLength']} bytes; the limit is {max_bytes}.")
        return response["Body"].read()

    def lines(self, key: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """The object's lines (without their newline) from byte `start` up to `end` (None: the object's end), each
        with the byte offset it starts at; read as a stream, so a file of any size holds one line in memory."""
        if end is not None and end <= start:
            return
        span = f"bytes={start}-{'' if end is None else end - 1}"
        body = self._client.get_object(Bucket=self.bucket, Key=key, Range=span)["Body"]
        offset, pending = start, bytearray()
        for chunk in body.iter_chunks(1 << 20):
            pending += chunk
            while (newline := pending.find(b"\n")) >= 0:
                yield offset, bytes(pending[:newline])
                offset += newline + 1
                del pending[: newline + 1]
        if pending:
            yield offset, bytes(pending)

    def delete(self, keys: Sequence[str]) -> list[str]:
        """Delete these objects (a missing one counts as deleted); the keys S3 would not delete."""
        failed: list[str] = []
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = keys[start : start + 1000]
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
            )
            failed += [error["Key"] for error in response.get("Errors", []) if "Key" in error]
        return failed

    def presigned_get(self, key: str, expires_s: int = 900) -> str:
        """A URL that GETs this object without credentials for `expires_s` seconds (signed here, no request):
        decoding processes fetch bulk images with it, off the worker's GIL (worker/decode/fetch.py)."""
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    def get_text(self, key: str) -> str | None:
        """A small text object (a manifest, a results file), or None if there is none."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read().decode()

    def list_objects(self, prefix: str, start_after: str = "", page_size: int = 1000) -> Iterator[ListedObject]:
        """Every object under prefix with a key after start_after, in key order, one page in memory at a time.

        ListObjectsV2 pages through with its continuation token; start_after lets a run resume by key.
        """
        kwargs: dict[str, str | int] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            page = self._client.list_objects_v2(**kwargs)  # type: ignore[arg-type]
            for item in page.get("Contents", []):
                yield ListedObject(item["Key"], item.get("ETag", "").strip('"'), item.get("Size", 0))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def bucket_problem(self) -> str | None:
        """Why this bucket cannot be used (missing, forbidden), or None when it can."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound"):
                return f"The bucket {self.bucket!r} does not exist."
            if code in ("403", "AccessDenied", "Forbidden"):
                return f"The service's credentials may not read the bucket {self.bucket!r}."
            raise
        return None

    def ping(self) -> bool:
        """True when the bucket is reachable (creating it if needed)."""
        self.ensure_bucket()
        return True
