"""Where a worker gets an image's bytes: its job's record (small uploads), the service's bucket, or the user's URL."""

from __future__ import annotations

from collections.abc import Callable

from botocore.exceptions import ClientError

from common.errors import ImageFetchError
from common.jobstore import JobStore
from common.outbound import OutboundPolicy, fetch_bytes
from common.schemas import ImageRef
from common.settings import Settings
from common.storage import ObjectStorage
from worker.decode_pool import DecodePool
from worker.device_jpeg import BatchItem
from worker.object_fetch import UPLOAD


class ImageSource:
    def __init__(
        self, storage: ObjectStorage, jobs: JobStore, settings: Settings, pool: DecodePool | None = None
    ) -> None:
        self._storage = storage
        self._jobs = jobs
        self._pool = pool
        self._max_bytes = settings.max_image_bytes
        self._timeout_s = settings.fetch_timeout_seconds
        self._policy = OutboundPolicy.from_settings(settings)

    def picture(self, job_id: str, ref: ImageRef, decode: Callable[[bytes], BatchItem]) -> BatchItem:
        """The image decoded: `decode(load(...))`, except that with decoding processes an upload in the bucket is
        fetched by a process too (a boto3 GET costs the worker's process ~0.8 ms of Python; bench.s3_get)."""
        if self._pool is not None and ref.key is not None and not ref.stored_with_job:
            return self._pool.fetch_and_decode(self._storage.presigned_get(ref.key), self._max_bytes, UPLOAD)
        return decode(self.load(job_id, ref))

    def load(self, job_id: str, ref: ImageRef) -> bytes:
        """The image's bytes. Per-image problems raise ImageError; an S3 outage raises botocore's errors."""
        if ref.stored_with_job:
            data = self._jobs.upload(job_id, ref.index)
            if data is None:  # the job ended (canceled, say) or expired while this task waited
                raise ImageFetchError("The uploaded image is no longer stored; its job has ended.")
            return data
        if ref.url is not None:
            return fetch_bytes(ref.url, self._max_bytes, self._timeout_s, self._policy)
        assert ref.key is not None  # ImageRef guarantees one of the two
        try:
            return self._storage.get(ref.key, self._max_bytes)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in UPLOAD.codes:
                raise ImageFetchError(UPLOAD.message) from exc
            raise
