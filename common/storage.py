"""Images in S3-compatible storage (AWS S3, MinIO, SeaweedFS): put, get, and the bucket made on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from common.errors import ImageTooLarge
from common.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectStorage:
    """One bucket of the service's. boto3 clients are thread-safe, so one instance serves a process."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self._client = client
        self.bucket = bucket
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStorage:
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
                max_pool_connections=64,
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

    def get(self, key: str, max_bytes: int) -> bytes:
        """Read one object, refusing anything larger than max_bytes before reading its body."""
        response = self._client.get_object(Bucket=self.bucket, Key=key)
        if response["ContentLength"] > max_bytes:
            response["Body"].close()
            raise ImageTooLarge(f"The image is {response['ContentLength']} bytes; the limit is {max_bytes}.")
        return response["Body"].read()

    def ping(self) -> bool:
        """True when the bucket is reachable (creating it if needed)."""
        self.ensure_bucket()
        return True
