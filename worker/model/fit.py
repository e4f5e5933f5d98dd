"""An image fitted to a model's input size. Pillow and numpy only: the model code (which must not import the
service's modules) and the decoding code (which runs in processes that should not load torch) both use it."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from PIL import Image

if TYPE_CHECKING:  # decoding processes use this module without loading torch
    import numpy as np
    import numpy.typing as npt
    import torch

# A decoded image on the host: a PIL image, or the pixels of one already fitted to the model's input, as an RGB
# uint8 array of [height, width, 3] (what decoding processes give: copying an array into a batch needs no GIL,
# converting a PIL image does, and on a GPU host the model's thread needs the GIL).
HostImage: TypeAlias = "Image.Image | npt.NDArray[np.uint8]"
# A decoded image as the model takes it: on the host, or fitted pixels [height, width, 3] already on the model's
# device (JPEGs decoded there: worker/decode/gpu_jpeg.py). Before decoding finishes, a batch holds BatchItems
# (worker/decode/base.py).
ModelImage: TypeAlias = "HostImage | torch.Tensor"


def fit(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """RGB at exactly `size` (width, height): resized with `resample` unless it already is that size."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image if image.size == size else image.resize(size, resample=resample)
