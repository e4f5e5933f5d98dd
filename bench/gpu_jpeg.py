"""JPEG bytes to captions with the JPEGs decoded on the GPU (nvJPEG, through torchvision), for bench.model_path.

Pillow decodes a real 12-megapixel photo in 20-40 ms on one core, so a 16-core host cannot feed an H200 with
such images (BENCHMARKS.md). nvJPEG decodes on the GPU: this measures whether that would carry the worker path
past 80% of the model path, before the worker takes torchvision on as a dependency. torchvision is on the GPU
machines we benchmark on but not on ours, so everything here is skipped where it does not import.

The resize runs on the GPU too (bicubic with antialiasing, as Pillow's), so pixels differ a little from the
CPU path's: different IDCTs and a different resampler. The section prints that difference.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from bench.harness import Side, batches, cycle, jpeg, measure, photo, pipelined, sync
from worker.captioner import BlipCaptioner
from worker.images import decode_image

# Decoded 4000x3000 images take 36 MB each on the GPU (144 MB as floats while resizing), so a batch is decoded
# and resized a few images at a time.
DECODE_CHUNK = 32


def gpu_pixel_values(
    ours: BlipCaptioner, blobs: Sequence[bytes], decode_jpeg: Callable[..., list[torch.Tensor]], mode: Any
) -> torch.Tensor:
    """The model's input for JPEG `blobs`, decoded and resized on the captioner's device."""
    pre = ours.preprocessor
    assert pre is not None
    parts = []
    for chunk in batches(blobs, DECODE_CHUNK):
        data = [torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()) for blob in chunk]
        decoded = decode_jpeg(data, mode=mode, device=ours.device)  # [3, h, w] uint8 each
        shapes = {tuple(image.shape) for image in decoded}
        groups = [torch.stack(decoded)] if len(shapes) == 1 else [image[None] for image in decoded]
        for group in groups:
            resized = functional.interpolate(
                group.float(), size=(pre.height, pre.width), mode="bicubic", antialias=True
            )
            parts.append(resized.round_().clamp_(0, 255))  # Pillow gives uint8 pixels
    pixels = torch.cat(parts) * pre.rescale_factor
    return ((pixels - pre.mean[:, None, None]) / pre.std[:, None, None]).to(ours.dtype).contiguous()


def pipelined_gpu(
    ours: BlipCaptioner, chunks: Sequence[Sequence[bytes]], prepare: Callable[[Sequence[bytes]], torch.Tensor],
    generation: dict[str, int],
) -> None:
    """Caption batches while another thread decodes the next one on its own CUDA stream (as bench.harness's
    pipelined() uploads the next batch)."""
    stream = torch.cuda.Stream() if ours.device.type == "cuda" else None

    def decode_on_stream(chunk: Sequence[bytes]) -> torch.Tensor:
        with torch.inference_mode():
            if stream is None:
                return prepare(chunk)
            with torch.cuda.stream(stream):
                pixels = prepare(chunk)
            stream.synchronize()  # this thread waits, not the model's; the tensor is ready when handed over
            return pixels

    with ThreadPoolExecutor(1, thread_name_prefix="nvjpeg") as decoder:
        previous: tuple[Sequence[bytes], Future[torch.Tensor]] | None = None
        for chunk in chunks:
            upcoming = decoder.submit(decode_on_stream, chunk)
            if previous is not None:
                ours.caption([None] * len(previous[0]), None, generation,  # type: ignore[list-item]
                             pixel_values=previous[1].result())
            previous = (chunk, upcoming)
        if previous is not None:
            ours.caption([None] * len(previous[0]), None, generation,  # type: ignore[list-item]
                         pixel_values=previous[1].result())


def gpu_jpeg_path(ours: BlipCaptioner, args: argparse.Namespace) -> None:
    """Worker path from JPEG bytes with nvJPEG decoding, against the model path from arrays at the input size."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # type: ignore[import-not-found]  # on GPU hosts only
    except ImportError as exc:
        print(f"worker path with nvJPEG: torchvision does not import here ({exc}); skipped", flush=True)
        return
    if ours.device.type != "cuda" or ours.preprocessor is None:
        print("worker path with nvJPEG: needs CUDA and the captioner's own preprocessing; skipped", flush=True)
        return
    pre = ours.preprocessor
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    prepare = partial(gpu_pixel_values, ours, decode_jpeg=decode_jpeg, mode=ImageReadMode.RGB)
    print(f"worker path with nvJPEG (torchvision.io.decode_jpeg on CUDA, resize on the GPU), greedy, batches of "
          f"{args.batch_size}:", flush=True)
    blobs = {size: [jpeg(photo(*size, seed)) for seed in range(8)] for size in ((640, 480), (4000, 3000))}

    # Decoding alone: what nvJPEG can give, whatever the model does.
    for (width, height), distinct in blobs.items():
        chunk = cycle(distinct, 256)
        for _ in range(2):  # the first round warms up
            sync()
            started = torch.cuda.Event(enable_timing=True)
            ended = torch.cuda.Event(enable_timing=True)
            started.record()
            prepare(chunk)
            ended.record()
            sync()
        ms = started.elapsed_time(ended) / len(chunk)
        reference = ours.pixel_values([ours.prepare(decode_image(distinct[0], draft_to=(pre.width, pre.height)))])
        difference = (prepare(distinct[:1]).float() - reference.float()).abs() * pre.std[:, None, None] * 255
        print(f"  {width}x{height}: decode+resize on the GPU {ms:.3f} ms/image ({1000 / ms:.0f} images/s alone); "
              f"pixels against the CPU path: mean difference {difference.mean().item():.2f}, max "
              f"{difference.max().item():.0f} (of 255)", flush=True)

    arrays = cycle([np.asarray(ours.prepare(photo(640, 480, seed))) for seed in range(8)], args.images)

    def run_model(count: int) -> None:
        pipelined(ours, batches(arrays[:count], args.batch_size), generation)

    def run_gpu(data: Sequence[bytes]) -> None:
        pipelined_gpu(ours, list(batches(data, args.batch_size)), prepare, generation)

    small = cycle(blobs[(640, 480)], args.images)
    large = cycle(blobs[(4000, 3000)], args.images)
    sides = [
        Side("model path (arrays at the input size, uploaded ahead)", args.images, partial(run_model, args.images),
             partial(run_model, args.batch_size)),
        Side("captioner from 640x480 JPEG, nvJPEG", len(small), partial(run_gpu, small),
             partial(run_gpu, small[: args.batch_size])),
        Side("captioner from 4000x3000 JPEG, nvJPEG", len(large), partial(run_gpu, large),
             partial(run_gpu, large[: args.batch_size])),
    ]
    rates = measure(sides, args.repeats)
    for side, rate in zip(sides[1:], rates[1:], strict=True):
        print(f"  {side.label.removeprefix('captioner from ')}: {rate / rates[0]:.0%} of the model path", flush=True)
