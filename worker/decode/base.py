"""How an image becomes the model's pixels: one interface, `Decoding`, and what passes through it.

A job's thread calls `load` with the image's bytes, or with the object in S3 that holds them (`StoredObject`), and
hands what it gets to the batcher: a decoded image, or a JPEG left encoded for the GPU. Before the model runs a
batch, `finish` completes its decoding. Each implementation decides alone who fetches and who decodes:

- `ThreadDecoding` (threads.py): the job's thread fetches and decodes.
- `ProcessDecoding` (processes.py): decoding processes do both, off the worker's GIL.
- `GpuJpegDecoding` (gpu_jpeg.py, opt-in): the job's thread fetches and reads headers; JPEGs are decoded on the
  GPU as the batch is finished, everything else by the CPU decoding it wraps.

worker/runtime.py picks one. An image's type names, in order: bytes or a StoredObject; a `BatchItem` (decoded, or
a JPEG left for the GPU); a `ModelImage` (decoded; worker/model/fit.py).

Nothing here imports torch, boto3 or the service's stores: the benches run on machines with torch, transformers
and Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, TypeVar

from common.errors import USERS_OBJECT, ImageError, Unreadable
from worker.model.fit import ModelImage

T = TypeVar("T")  # what the model gives for an image


@dataclass(frozen=True)
class DeviceJpeg:
    """A JPEG left encoded for the batch's `finish` to decode on the model's device."""

    data: bytes = field(repr=False)
    orientation: int = 1  # EXIF orientation, 1-8; 1 is as stored
    pixels: int = 0  # width x height, as stored


# What a worker's batcher holds: an image decoded on the CPU, or a JPEG left for the GPU.
BatchItem: TypeAlias = "ModelImage | DeviceJpeg"


class ObjectReader(Protocol):
    """A bucket, as common/storage.py's ObjectStorage gives it."""

    def get(self, key: str, max_bytes: int, unreadable: Unreadable | None = None) -> bytes: ...

    def presigned_get(self, key: str) -> str: ...


@dataclass(frozen=True)
class StoredObject:
    """An image in S3, for the decoding to fetch as it sees fit (fetch.py: boto3 here, or a presigned URL that a
    decoding process fetches itself)."""

    bucket: ObjectReader
    key: str
    max_bytes: int
    unreadable: Unreadable = USERS_OBJECT

    def read(self) -> bytes:
        """The object's bytes, read with the bucket's boto3 client on the calling thread; the object's own problems
        raise ImageError, S3's raise botocore's errors."""
        return self.bucket.get(self.key, self.max_bytes, self.unreadable)

    def presigned(self) -> str:
        """A URL that GETs the object without credentials, for a decoding process to fetch it itself (fetch.py)."""
        return self.bucket.presigned_get(self.key)


@dataclass
class DecodedBatch:
    """A batch's items with their decoding finished: the images for the model, and the items that could not be
    decoded, by their place in the batch."""

    images: list[ModelImage]
    failures: dict[int, ImageError] = field(default_factory=dict)
    on_device: int = 0  # how many of `images` were decoded on the model's device (for the batch's log line)

    @classmethod
    def of(cls, items: Sequence[BatchItem | ImageError], on_device: int = 0) -> DecodedBatch:
        """The batch of these decoded items, an ImageError standing for an item that failed."""
        batch = cls([], on_device=on_device)
        for index, item in enumerate(items):
            if isinstance(item, ImageError):
                batch.failures[index] = item
            elif isinstance(item, DeviceJpeg):
                raise TypeError("a batch holds JPEGs for the device, but the worker does not decode on the device")
            else:
                batch.images.append(item)
        return batch

    def merged(self, captions: Sequence[T]) -> list[T | ImageError]:
        """The captions of `images`, with the failures put back in their places: the batch's results."""
        remaining = iter(captions)
        size = len(self.images) + len(self.failures)
        return [self.failures[index] if index in self.failures else next(remaining) for index in range(size)]


class Decoding(Protocol):
    """How a worker turns images into the model's pixels (module docstring)."""

    def load(self, source: bytes | StoredObject) -> BatchItem:
        """On a job's thread: the image fetched if need be, and decoded (or left for `finish`). Per-image problems
        raise ImageError; S3's own (unreachable, throttling) raise anything else, for the work to be retried."""
        ...

    def finish(self, items: Sequence[BatchItem]) -> DecodedBatch:
        """Before the model: the batch's decoding completed. Safe to call on the batcher's thread only."""
        ...

    def close(self) -> None:
        """Stop what decodes (processes, threads); images still in hand are finished first."""
        ...
