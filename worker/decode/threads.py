"""Decoding on the job's own thread: the default on CPU, where the model needs every core and decoding processes
would only add copies."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from worker.decode.base import BatchItem, DecodedBatch, StoredObject
from worker.decode.images import decode_image
from worker.model.fit import HostImage


class ThreadDecoding:
    """Fetch (boto3) and decode on the calling thread. Large JPEGs are decoded at a reduced scale that still covers
    the model's input (Pillow's draft mode), then fitted to it by `prepare`, so the model's thread has no resizing
    left to do."""

    def __init__(
        self, draft_to: tuple[int, int] | None = None, prepare: Callable[[HostImage], HostImage] = lambda image: image
    ) -> None:
        self._draft_to = draft_to
        self._prepare = prepare

    def decode(self, data: bytes) -> HostImage:
        """The image the model will see of these bytes; ImageError if there is none."""
        return self._prepare(decode_image(data, draft_to=self._draft_to))

    def load(self, source: bytes | StoredObject) -> BatchItem:
        return self.decode(source.read() if isinstance(source, StoredObject) else source)

    def finish(self, items: Sequence[BatchItem]) -> DecodedBatch:
        return DecodedBatch.of(items)

    def close(self) -> None:
        pass
