"""Image decoding: formats, orientation, modes, and every failure as a clean per-image error."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from common.errors import ImageDecodeError, ImageTooLarge
from worker.decode.images import decode_image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_common_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encode(Image.new("RGB", (40, 30), (200, 10, 10)), fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert decode_image(encode(Image.new(mode, (8, 8)), fmt)).mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 40x20, shown 20x40
    data = encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (20, 40)


def test_truncated_jpeg_is_a_decode_error() -> None:
    data = encode(Image.new("RGB", (256, 256), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=1_000_000)
