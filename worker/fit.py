"""An image fitted to a model's input size. Pillow and numpy only: the model code (which must not import the
service's modules) and the decoding code (which runs in processes that should not load torch) both use it."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image

# An image as the worker holds it between decoding and the model: a PIL image, or the pixels of one already
# fitted, as an RGB uint8 array of [height, width, 3] (what decoding processes give: copying an array into a
# batch needs no GIL, converting a PIL image does, and on a GPU host the model's thread needs the GIL).
Picture: TypeAlias = Image.Image | npt.NDArray[np.uint8]


def fit(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """RGB at exactly `size` (width, height): resized with `resample` unless it already is that size."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image if image.size == size else image.resize(size, resample=resample)
