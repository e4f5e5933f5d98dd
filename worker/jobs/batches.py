"""What the batcher runs: a batch's decoding finished (worker/decode/base.py), its pixels made, its images captioned
and its failures put back in their places. Shared by interactive jobs, bulk chunks and bench.worker_batches, which
runs where only torch, transformers and Pillow are: nothing here imports the service's stores or pydantic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from common.errors import ImageError
from worker.decode.base import BatchItem, DecodedBatch, Decoding
from worker.jobs.batching import DynamicBatcher, ItemFailed
from worker.model.output import Caption

if TYPE_CHECKING:  # the model is handed in; importing it here would load torch for the job's code
    import torch

    from worker.model.captioner import BlipCaptioner

log = logging.getLogger(__name__)


class BatchKey(NamedTuple):
    """What the images of one batch must share: BLIP gives wrong captions when prompts of different lengths share
    a batch, and generation options apply to a whole batch. `alone`: the id of a job whose images are batched with
    no other job's (a job a worker died holding, common/fairqueue.py)."""

    prompt: str | None
    options: tuple[tuple[str, int | float], ...]  # generate() keyword arguments, sorted
    alone: str | None = None

    @classmethod
    def of(cls, prompt: str | None, options: Mapping[str, int | float], alone: str | None = None) -> BatchKey:
        return cls(prompt, tuple(sorted(options.items())), alone)


Results = list[Caption | ItemFailed]
CaptionBatcher = DynamicBatcher[BatchKey, BatchItem, Caption]


class BatchCaptioner:
    """`run` captions a batch at once; `prepare` does the part that can run while the model runs another batch (the
    decoding finished, the pixels stacked and on the device) and returns what captions it."""

    def __init__(
        self, captioner: BlipCaptioner, decoding: Decoding,
        observe: Callable[[int, float], None] = lambda images, seconds: None,
    ) -> None:
        """`observe(images, seconds)` hears of each model call (the worker's metrics; nothing on a benchmark)."""
        self.captioner = captioner
        self.decoding = decoding
        self.observe = observe

    def run(self, key: BatchKey, items: list[BatchItem]) -> Results:
        return self._captioned(key, self.decoding.finish(items), None)

    def prepare(self, key: BatchKey, items: list[BatchItem]) -> Callable[[], Results]:
        batch, pixel_values = self.prepared(items)
        return lambda: self._captioned(key, batch, pixel_values)

    def prepared(self, items: list[BatchItem]) -> tuple[DecodedBatch, torch.Tensor | None]:
        """The batch's decoding finished and its pixel values made (None when none of its images could be decoded),
        on the model's stream for work ahead."""
        with self.captioner.preparing_ahead():
            batch = self.decoding.finish(items)
            return batch, self.captioner.pixel_values(batch.images) if batch.images else None

    def _captioned(self, key: BatchKey, batch: DecodedBatch, pixel_values: torch.Tensor | None) -> Results:
        captions: list[Caption] = []
        if batch.images:
            started = time.perf_counter()
            captions = self.captioner.caption_counted(batch.images, key.prompt, dict(key.options),
                                                      pixel_values=pixel_values)
            self.observe(len(batch.images), time.perf_counter() - started)
            log.info("captioned a batch of %d in %.0f ms (prompt %r%s%s)", len(batch.images),
                     (time.perf_counter() - started) * 1000, key.prompt,
                     ", prepared ahead" if pixel_values is not None else "",
                     f", {batch.on_device} JPEGs decoded on the GPU" if batch.on_device else "")
        return [ItemFailed(result) if isinstance(result, ImageError) else result for result in batch.merged(captions)]
