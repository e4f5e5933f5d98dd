"""Decoding in processes: the worker's pixels, per-image errors, and a dying process failing one image alone."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from common.errors import ImageDecodeError
from tests.fixtures.shapes import random_scene, render
from tests.unit.test_captioner import model
from worker.decode_pool import DecodePool
from worker.images import decode_fitted
from worker.pipeline import decode_pool_for, decoder_for

CRASH = b"kill the decoding process"


def crash_or_decode(data: bytes, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """Runs in the pool's processes: dies as a crashing decoder would on one input, decodes the rest."""
    if data == CRASH:
        os._exit(1)
    return decode_fitted(data, size, resample)


def encode(fmt: str, seed: int) -> bytes:
    rng = random.Random(seed)
    buffer = io.BytesIO()
    render(random_scene(rng), (1600, 1200), rng).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    created = decode_pool_for(model(), 2)
    assert created is not None
    yield created
    created.close()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_processes_give_the_pixels_the_worker_s_threads_give(pool: DecodePool, fmt: str) -> None:
    data = encode(fmt, 7)
    assert pool.decode(data).tobytes() == decoder_for(model())(data).tobytes()


def test_a_bad_image_is_a_per_image_error(pool: DecodePool) -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        pool.decode(b"not an image at all")


def test_a_dying_process_fails_its_image_alone() -> None:
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    pool = DecodePool(2, captioner.input_size, captioner.preprocessor.resample, work=crash_or_decode)
    try:
        blobs = [encode("JPEG", seed) for seed in range(6)]
        inputs = [*blobs[:3], CRASH, *blobs[3:]]

        def decode(data: bytes) -> bytes | str:
            try:
                return pool.decode(data).tobytes()
            except ImageDecodeError as exc:
                return exc.message

        with ThreadPoolExecutor(len(inputs)) as threads:
            outcomes = list(threads.map(decode, inputs))
        expected = [decoder_for(captioner)(blob).tobytes() for blob in blobs]
        assert outcomes[:3] + outcomes[4:] == expected  # images in flight beside it were decoded again
        assert isinstance(outcomes[3], str) and "died" in outcomes[3]
        assert pool.decode(blobs[0]).tobytes() == expected[0]  # and the pool lives on
    finally:
        pool.close()
