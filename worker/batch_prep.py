"""A batch's preparation ahead of the model: its JPEGs left for the GPU decoded there (worker/device_jpeg.py), then
its pixels stacked and on the model's device. Shared by the worker's pipeline and bench.worker_batches, which
cannot import the pipeline on the GPU machines (it needs Redis and pydantic): torch and Pillow only."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from common.errors import ImageError
from worker.batching import ItemFailed
from worker.captioner import BlipCaptioner
from worker.device_jpeg import BatchItem, DeviceJpeg, DeviceJpegDecoder
from worker.preprocess import ModelImage


@dataclass
class DecodedBatch:
    """A batch's items with its JPEGs decoded on the device: the images for the model, and the items that could
    not be decoded, by their place in the batch."""

    images: list[ModelImage]
    failures: dict[int, ImageError] = field(default_factory=dict)

    @classmethod
    def of(cls, items: Sequence[BatchItem], decoder: DeviceJpegDecoder | None) -> DecodedBatch:
        jpegs = [item for item in items if isinstance(item, DeviceJpeg)]
        if jpegs and decoder is None:
            raise TypeError("a batch holds JPEGs for the device, but the worker has no device decoder")
        decoded = iter(decoder.fitted(jpegs) if decoder is not None and jpegs else [])
        batch = cls([])
        for index, item in enumerate(items):
            image = next(decoded) if isinstance(item, DeviceJpeg) else item
            if isinstance(image, ImageError):
                batch.failures[index] = image
            else:
                batch.images.append(image)
        return batch

    def merged(self, captions: Sequence[str]) -> list[str | ItemFailed]:
        """The captions of `images`, with the failures put back in their places: the batch's results."""
        remaining = iter(captions)
        size = len(self.images) + len(self.failures)
        return [ItemFailed(self.failures[index]) if index in self.failures else next(remaining)
                for index in range(size)]


class BatchPreparer:
    """The batcher's prepare stage, for the worker and its bench alike: a batch's JPEGs decoded on the device, then
    its pixels stacked and uploaded. On a GPU this runs on a CUDA stream of its own, so that it overlaps the batch
    the model is running on the default stream rather than queueing behind it, and is waited for (on the
    preparing thread) before the pixels are handed over."""

    def __init__(self, captioner: BlipCaptioner, device_jpegs: DeviceJpegDecoder | None) -> None:
        self.captioner = captioner
        self.device_jpegs = device_jpegs
        self._stream = torch.cuda.Stream(captioner.device) if captioner.device.type == "cuda" else None  # type: ignore[no-untyped-call]

    def __call__(self, items: Sequence[BatchItem]) -> tuple[DecodedBatch, torch.Tensor | None]:
        """The batch, and its pixel values (None when none of its images could be decoded)."""
        with torch.inference_mode(), (torch.cuda.stream(self._stream) if self._stream else contextlib.nullcontext()):
            batch = DecodedBatch.of(items, self.device_jpegs)
            pixel_values = self.captioner.pixel_values(batch.images) if batch.images else None
        if self._stream is not None:
            self._stream.synchronize()
        return batch, pixel_values
