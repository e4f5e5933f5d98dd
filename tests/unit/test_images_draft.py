"""JPEG draft decoding: less work for large photos, sizes that still cover the model's input, same errors."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from common.errors import ImageDecodeError
from tests.fixtures.shapes import random_scene, render
from tests.unit.test_captioner import model
from worker.decode.images import decode_fitted, decode_image
from worker.model.fit import fit
from worker.runtime import thread_decoding


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "decoded"),
    [((4032, 3024), (504, 378)), ((4000, 3000), (500, 375)), ((3000, 2000), (750, 500)), ((1600, 1200), (800, 600)),
     ((800, 600), (800, 600)), ((640, 480), (640, 480))],
)
def test_a_jpeg_decodes_at_the_smallest_scale_that_covers_95_percent_of_the_target(
    size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    image = decode_image(encode(Image.new("RGB", size, (30, 60, 90))), draft_to=(384, 384))
    assert image.size == decoded and image.mode == "RGB"


def test_covering_all_of_the_target_takes_the_next_scale_up() -> None:
    image = decode_image(encode(Image.new("RGB", (4000, 3000))), draft_to=(384, 384), cover=1.0)
    assert image.size == (1000, 750)


def test_a_drafted_photo_s_pixels_stay_within_a_level_of_a_full_decode_s() -> None:
    captioner = model()
    assert captioner.preprocessor is not None
    rng = random.Random(8)
    data = encode(render(random_scene(rng), (4032, 3024), rng).filter(ImageFilter.GaussianBlur(3)), quality=90)
    resample = captioner.preprocessor.resample

    def fitted(image: Image.Image) -> np.ndarray:
        return np.asarray(fit(image, (384, 384), resample)).astype(int)

    drafted = decode_image(data, draft_to=(384, 384))
    assert drafted.size == (504, 378)  # 1/8: stretched 2% in height to 384
    difference = np.abs(fitted(drafted) - fitted(decode_image(data)))
    assert difference.mean() < 1.0, difference.mean()


def test_other_formats_decode_at_full_size() -> None:
    assert decode_image(encode(Image.new("RGB", (2000, 1500)), "PNG"), draft_to=(384, 384)).size == (2000, 1500)


def test_exif_orientation_still_applies() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 4000x1600, shown 1600x4000
    image = decode_image(encode(Image.new("RGB", (4000, 1600)), exif=exif.tobytes()), draft_to=(384, 384))
    assert image.size == (400, 1000)  # 1/4 scale: 1/8 would make the short side 200 px


def test_a_truncated_jpeg_is_still_a_decode_error() -> None:
    data = encode(Image.new("RGB", (2048, 2048), (1, 2, 3)))
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2], draft_to=(384, 384))


def test_drafted_photos_are_captioned_as_well() -> None:
    rng = random.Random(4)
    scenes = [random_scene(rng) for _ in range(12)]
    blobs = [encode(render(scene, (4000, 3000), rng), quality=90) for scene in scenes]
    captioner = model()
    images = [captioner.prepare(decode_image(blob, draft_to=captioner.input_size)) for blob in blobs]
    captions = captioner.caption(images)
    assert sum(c == s.caption for c, s in zip(captions, scenes, strict=True)) >= 11, captions


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decoding_in_another_process_sees_what_the_worker_sees(fmt: str) -> None:
    # decode_fitted is what bench.model_path runs in decoding processes; it must give the worker's pixels.
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    rng = random.Random(3)
    data = encode(render(random_scene(rng), (1600, 1200), rng), fmt)
    fitted = decode_fitted(data, captioner.input_size, captioner.preprocessor.resample)
    expected = thread_decoding(captioner).decode(data)
    assert fitted.size == captioner.input_size and fitted.tobytes() == expected.tobytes()
