"""Batch preprocessing gives exactly the BLIP image processor's pixel values."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessorPil, BlipProcessor

from tests.conftest import TINY_MODEL
from tests.fixtures.shapes import random_scene, render
from worker.model.preprocess import BlipPreprocessor


def images() -> list[Image.Image]:
    rng = random.Random(11)
    out = [render(random_scene(rng), size, rng) for size in [(48, 48), (640, 480), (300, 500), (1280, 720)]]
    out += [out[1].convert("RGBA"), out[2].convert("L"), out[3].convert("P"), out[0].resize((384, 384))]
    return out


@pytest.mark.parametrize(
    "image_processor",
    [BlipProcessor.from_pretrained(str(TINY_MODEL)).image_processor,
     BlipImageProcessorPil(size={"height": 384, "width": 384})],
    ids=["tiny-36px", "blip-base-384px"],
)
def test_pixel_values_equal_the_processors_bit_for_bit(image_processor: BlipImageProcessorPil) -> None:
    expected = image_processor(images=images(), return_tensors="pt")["pixel_values"]
    preprocessor = BlipPreprocessor(image_processor, torch.device("cpu"), torch.float32)
    assert torch.equal(preprocessor.pixel_values(images()), expected)
    # Resizing ahead (in decoding threads) changes nothing.
    assert torch.equal(preprocessor.pixel_values([preprocessor.resized(i) for i in images()]), expected)
    # Nor do arrays, as decoding processes give them: fitted ones are taken as they are, others fitted first.
    fitted = [np.asarray(preprocessor.resized(i)) for i in images()]
    assert all(preprocessor.resized(a) is a for a in fitted)
    assert torch.equal(preprocessor.pixel_values(fitted), expected)
    assert torch.equal(preprocessor.pixel_values([np.asarray(i.convert("RGB")) for i in images()]), expected)


def test_copying_pixels_on_threads_changes_nothing() -> None:
    image_processor = BlipImageProcessorPil(size={"height": 384, "width": 384})
    many = images() * 5  # enough for the threads to be used
    expected = image_processor(images=many, return_tensors="pt")["pixel_values"]
    threaded = BlipPreprocessor(image_processor, torch.device("cpu"), torch.float32, threads=4)
    assert torch.equal(threaded.pixel_values(many), expected)


def test_a_processor_that_crops_is_left_to_transformers() -> None:
    cropping = BlipImageProcessorPil(size={"height": 384, "width": 384}, do_center_crop=True,
                                     crop_size={"height": 300, "width": 300})
    assert not BlipPreprocessor.matches(cropping)
    with pytest.raises(ValueError, match="more than resize"):
        BlipPreprocessor(cropping, torch.device("cpu"), torch.float32)
