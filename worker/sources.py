"""Where a worker gets an image's bytes: the service's bucket, or the user's URL."""

from __future__ import annotations

from botocore.exceptions import ClientError

from common.errors import ImageFetchError
from common.outbound import OutboundPolicy, fetch_bytes
from common.schemas import ImageRef
from common.settings import Settings
from common.storage import ObjectStorage


class ImageSource:
    def __init__(self, storage: ObjectStorage, settings: Settings) -> None:
        self._storage = storage
        self._max_bytes = settings.max_image_bytes
        self._timeout_s = settings.fetch_timeout_seconds
        self._policy = OutboundPolicy.from_settings(settings)

    def load(self, ref: ImageRef) -> bytes:
        """The image's bytes. Per-image problems raise ImageError; an S3 outage raises botocore's errors."""
        if ref.url is not None:
            return fetch_bytes(ref.url, self._max_bytes, self._timeout_s, self._policy)
        assert ref.key is not None  # ImageRef guarantees one of the two
        try:
            return self._storage.get(ref.key, self._max_bytes)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ImageFetchError("The uploaded image is no longer in storage.") from exc
            raise
