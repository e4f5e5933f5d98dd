"""Where a job's image is: in its job's record (small uploads), in the service's bucket, or at the user's URL."""

from __future__ import annotations

from common.errors import UPLOAD, ImageFetchError
from common.jobstore import JobStore
from common.outbound import OutboundPolicy, fetch_bytes
from common.schemas import ImageRef
from common.settings import Settings
from common.storage import ObjectStorage
from worker.decode.base import StoredObject


class ImageSource:
    def __init__(self, storage: ObjectStorage, jobs: JobStore, settings: Settings) -> None:
        self._storage = storage
        self._jobs = jobs
        self._max_bytes = settings.max_image_bytes
        self._timeout_s = settings.fetch_timeout_seconds
        self._policy = OutboundPolicy.from_settings(settings)

    def locate(self, job_id: str, ref: ImageRef) -> bytes | StoredObject:
        """The image's bytes, or the object in the bucket that holds them, for the worker's decoding to fetch as it
        sees fit (worker/decode/base.py). Per-image problems raise ImageError."""
        if ref.stored_with_job:
            data = self._jobs.upload(job_id, ref.index)
            if data is None:  # the job ended (canceled, say) or expired while this task waited
                raise ImageFetchError("The uploaded image is no longer stored; its job has ended.")
            return data
        if ref.url is not None:
            return fetch_bytes(ref.url, self._max_bytes, self._timeout_s, self._policy)
        assert ref.key is not None  # ImageRef guarantees one of the three
        return StoredObject(self._storage, ref.key, self._max_bytes, UPLOAD)
