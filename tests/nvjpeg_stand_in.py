"""torchvision.io.decode_jpeg's contract, kept by Pillow: torchvision (nvJPEG) is on the GPU hosts, not here.

Encoded JPEGs in (uint8 CPU tensors), [3, height, width] uint8 RGB tensors out on `device`, every pixel decoded
and EXIF orientation not applied, as nvJPEG does; one undecodable JPEG fails the whole call with a RuntimeError
("this function does not return partial results in case of an error", torchvision's documentation says).
Only decode_jpeg itself stands in: what the worker does with its output runs for real in the tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image


def pillow_decode_jpeg(data: list[torch.Tensor], mode: Any = None, device: Any = "cpu") -> list[torch.Tensor]:
    decoded = []
    for blob in data:
        try:
            image = Image.open(io.BytesIO(blob.numpy().tobytes()))
            if image.format != "JPEG":
                raise RuntimeError(f"not a JPEG: {image.format}")
            pixels = np.array(image.convert("RGB"))
        except OSError as exc:
            raise RuntimeError(f"decoding failed: {exc}") from exc
        decoded.append(torch.from_numpy(pixels).permute(2, 0, 1).contiguous().to(device))
    return decoded
