"""An image fitted to a model's input size. Pillow only: the model code (which must not import the service's
modules) and the decoding code (which runs in processes that should not load torch) both use it."""

from __future__ import annotations

from PIL import Image


def fit(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """RGB at exactly `size` (width, height): resized with `resample` unless it already is that size."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image if image.size == size else image.resize(size, resample=resample)
