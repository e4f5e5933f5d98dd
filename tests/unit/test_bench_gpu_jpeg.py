"""bench.gpu_jpeg runs where the GPU machine's torchvision decodes JPEGs (nvJPEG) and never here, so a mistake in
it would cost scarce GPU time: this runs the whole section on the CPU, with Pillow standing in for
torchvision.io.decode_jpeg, on the tiny model."""

from __future__ import annotations

import re

import pytest
import torch

from bench.gpu_jpeg import gpu_jpeg_path, gpu_pixel_values
from bench.harness import jpeg, photo
from bench.model_path import parse_args
from tests.conftest import TINY_MODEL
from tests.nvjpeg_stand_in import pillow_decode_jpeg
from worker.decode.gpu_jpeg import DeviceJpegDecoder, GpuJpegDecoding
from worker.decode.images import decode_image
from worker.decode.threads import ThreadDecoding
from worker.model.captioner import BlipCaptioner


def test_pixels_decoded_and_resized_on_the_device_are_close_to_the_cpu_path_s() -> None:
    ours = BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")
    assert ours.preprocessor is not None and ours.input_size is not None
    blobs = [jpeg(photo(640, 480, seed)) for seed in range(3)] + [jpeg(photo(200, 300, 0))]  # two shapes
    on_cpu = ThreadDecoding(None, ours.prepare)  # no draft, as the reference below
    decoding = GpuJpegDecoding(DeviceJpegDecoder(pillow_decode_jpeg, ours.device, ours.input_size, on_cpu.decode),
                               on_cpu)
    pixels = gpu_pixel_values(ours, blobs, decoding)
    reference = ours.pixel_values([ours.prepare(decode_image(blob)) for blob in blobs])  # no draft: same IDCT
    assert pixels.shape == reference.shape
    # In 0-255 units: the resampler differs a little from Pillow's; a wrong layout or normalization would not.
    difference = (pixels - reference).abs() * ours.preprocessor.std[:, None, None] * 255
    assert difference.mean() < 0.5 and difference.max() <= 6


def test_the_nvjpeg_section_runs_through(capsys: pytest.CaptureFixture[str]) -> None:
    ours = BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")
    args = parse_args(["--images", "4", "--batch-size", "2", "--new-tokens", "2", "--decode-processes", "1",
                       "--repeats", "1"])
    with torch.inference_mode():
        gpu_jpeg_path(ours, args, pillow_decode_jpeg)
    printed = capsys.readouterr().out
    for label in ("4000x3000 JPEG, nvJPEG:", "4000x3000 JPEG, nvJPEG sharing with 1 processes:",
                  "640x480 JPEG, nvJPEG:", "640x480 JPEG, 1 processes:"):
        assert re.search(re.escape(label) + r" \d+% of the model path", printed), printed
