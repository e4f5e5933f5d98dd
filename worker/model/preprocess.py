"""PIL images to BLIP pixel values: the BLIP image processor's arithmetic, without its per-image overhead.

transformers' PIL image processor converts each image to numpy, back to PIL to resize, back to numpy, then
rescales in float64 and normalizes in float32, one image at a time. Here each image is resized once by PIL
(the same call, so the same pixels), the batch is stacked as uint8, and rescale and normalize run once for the
whole batch, on the model's device: on a GPU that moves a quarter of the bytes (uint8, from pinned memory,
without blocking) and leaves the float work to the GPU. On CPU in fp32 the result is bit-for-bit the
processor's (tests/unit/test_preprocess.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from worker.model.fit import HostImage, ModelImage, fit


def _target_size(image_processor: object) -> tuple[int, int] | None:
    """(height, width) of a fixed-size processor; `size` is a dict or, in newer transformers, a SizeDict."""
    size = getattr(image_processor, "size", None)
    if isinstance(size, dict):
        height, width = size.get("height"), size.get("width")
    else:
        height, width = getattr(size, "height", None), getattr(size, "width", None)
    return (int(height), int(width)) if height and width else None


class BlipPreprocessor:
    """Resize to the model's input size, rescale by 1/255 and normalize per channel, as BlipImageProcessor."""

    # `image_processor` is transformers' BlipImageProcessor (or its PIL twin), typed Any as transformers is.
    def __init__(
        self, image_processor: Any, device: torch.device, dtype: torch.dtype, threads: int | None = None
    ) -> None:
        size = _target_size(image_processor)
        if size is None or not self.matches(image_processor):
            raise ValueError("this image processor does more than resize, rescale and normalize")
        self.height, self.width = size
        self.resample = Image.Resampling(int(getattr(image_processor, "resample", Image.Resampling.BICUBIC)))
        self.rescale_factor = float(getattr(image_processor, "rescale_factor", 1 / 255))
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32, device=device)
        self.device = device
        self.dtype = dtype
        # On a GPU, batches of hundreds make copying PIL pixels into the batch a noticeable serial cost on the
        # thread that feeds the GPU; Pillow and numpy release the GIL while copying, so a few threads share it. On
        # CPU (default: no threads) the cores are busy with the model.
        if threads is None:
            threads = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="stack") if threads > 1 else None

    @staticmethod
    def matches(image_processor: object) -> bool:
        """True when the processor does exactly what this class reproduces (else use the processor itself)."""
        flags = {name: getattr(image_processor, name, None) for name in (
            "do_resize", "do_rescale", "do_normalize", "do_convert_rgb", "do_center_crop", "do_pad")}
        return (
            _target_size(image_processor) is not None
            and all(flags[name] for name in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"))
            and not flags["do_center_crop"]
            and not flags["do_pad"]
            and getattr(image_processor, "image_mean", None) is not None
            and getattr(image_processor, "image_std", None) is not None
        )

    def resized(self, image: HostImage) -> HostImage:
        """RGB at the model's input size. Thread-safe, so decoding threads can do it ahead of the model."""
        if isinstance(image, np.ndarray):
            if image.shape == (self.height, self.width, 3):
                return image
            image = Image.fromarray(image)
        return fit(image, (self.width, self.height), self.resample)

    def stack(self, images: Sequence[HostImage]) -> torch.Tensor:
        """The images as one uint8 [images, height, width, 3] tensor, in pinned memory when going to a GPU."""
        batch = torch.empty(
            (len(images), self.height, self.width, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda"
        )
        rows = batch.numpy()

        def fill(index: int) -> None:
            rows[index] = np.asarray(self.resized(images[index]))

        if self._pool is not None and len(images) >= 32:
            list(self._pool.map(fill, range(len(images))))
        else:
            for index in range(len(images)):
                fill(index)
        return batch

    def pixel_values(self, images: Sequence[ModelImage]) -> torch.Tensor:
        """[images, 3, height, width] in the model's dtype, on its device."""
        batch = self._uint8_batch(images)
        # float64 then float32, as the processor's rescale does, so CPU fp32 results are identical to it.
        scaled = (batch.to(torch.float64) * self.rescale_factor).to(torch.float32).permute(0, 3, 1, 2)
        normalized = (scaled - self.mean[:, None, None]) / self.std[:, None, None]
        return normalized.to(self.dtype).contiguous()

    def _uint8_batch(self, images: Sequence[ModelImage]) -> torch.Tensor:
        """[images, height, width, 3] uint8 on the device: the host's images stacked and uploaded, the device's
        put in their places."""
        on_host: dict[int, HostImage] = {}
        on_device: dict[int, torch.Tensor] = {}
        for index, image in enumerate(images):
            if isinstance(image, torch.Tensor):
                on_device[index] = image
            else:
                on_host[index] = image
        if not on_device:
            return self.stack(list(on_host.values())).to(self.device, non_blocking=True)
        batch = torch.empty((len(images), self.height, self.width, 3), dtype=torch.uint8, device=self.device)
        batch[list(on_device)] = torch.stack(list(on_device.values())).to(self.device)
        if on_host:
            batch[list(on_host)] = self.stack(list(on_host.values())).to(self.device, non_blocking=True)
        return batch
