"""JPEG bytes to captions with the JPEGs decoded on the GPU (nvJPEG, through torchvision), for bench.model_path.

Pillow decodes a real 12-megapixel photo in 20-40 ms on one core, so a 16-core host cannot feed an H200 with
such images (BENCHMARKS.md). nvJPEG decodes on the GPU: this measures the worker's own GPU decoding
(worker/decode/gpu_jpeg.py, CAPTIONER_DECODE_JPEG_ON_GPU) fed whole batches, alone and sharing batches with the
decoding processes. torchvision is on the GPU machines we benchmark on but not on ours, so everything here is
skipped where it does not import.

The resize runs on the GPU too (bicubic with antialiasing, as Pillow's), so pixels differ a little from the
CPU path's: different IDCTs and a different resampler. The section prints that difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from bench.harness import Side, batches, cycle, grainy, jpeg, measure, photo, pipelined, prefetched, sync
from worker.decode.base import Decoding, DeviceJpeg
from worker.decode.gpu_jpeg import (
    DECODE_CHUNK,
    DecodeJpeg,
    DeviceJpegDecoder,
    GpuJpegDecoding,
    device_jpeg,
    load_nvjpeg,
)
from worker.decode.images import decode_image
from worker.decode.processes import DecodePool, ProcessDecoding
from worker.decode.threads import ThreadDecoding
from worker.model.captioner import BlipCaptioner

T = TypeVar("T")


def gpu_pixel_values(ours: BlipCaptioner, blobs: Sequence[bytes], decoding: Decoding) -> torch.Tensor:
    """The model's input for JPEG `blobs`, decoded and resized on the captioner's device by the worker's own
    decoding (CAPTIONER_DECODE_JPEG_ON_GPU's GpuJpegDecoding), as it finishes a batch."""
    batch = decoding.finish([DeviceJpeg(blob) for blob in blobs])
    if batch.failures:
        raise RuntimeError(f"{len(batch.failures)} of the bench's JPEGs failed to decode")
    return ours.pixel_values(batch.images)


def pipelined_gpu(
    ours: BlipCaptioner, items: Iterable[T], prepare: Callable[[T], torch.Tensor], generation: dict[str, int]
) -> None:
    """Caption batches while another thread prepares the next one's pixels on its own CUDA stream (as
    bench.harness's pipelined() uploads the next batch)."""
    stream = torch.cuda.Stream() if ours.device.type == "cuda" else None

    def prepare_on_stream(item: T) -> torch.Tensor:
        with torch.inference_mode():
            if stream is None:
                return prepare(item)
            with torch.cuda.stream(stream):
                pixels = prepare(item)
            stream.synchronize()  # this thread waits, not the model's; the tensor is ready when handed over
            return pixels

    def caption(pixels: torch.Tensor) -> None:
        ours.caption([None] * pixels.shape[0], None, generation, pixel_values=pixels)  # type: ignore[list-item]

    with ThreadPoolExecutor(1, thread_name_prefix="nvjpeg") as decoder:
        previous: Future[torch.Tensor] | None = None
        for item in items:
            upcoming = decoder.submit(prepare_on_stream, item)
            if previous is not None:
                caption(previous.result())
            previous = upcoming
        if previous is not None:
            caption(previous.result())


def decoding_alone(
    ours: BlipCaptioner, prepare: Callable[[Sequence[bytes]], torch.Tensor], blobs: dict[tuple[int, int], list[bytes]],
    count: int,
) -> None:
    """What nvJPEG can give, whatever the model does, and how far its pixels are from the CPU path's."""
    pre = ours.preprocessor
    assert pre is not None
    for (width, height), distinct in blobs.items():
        chunk = cycle(distinct, count)
        for _ in range(2):  # the first round warms up
            sync()
            started = time.perf_counter()
            prepare(chunk)
            sync()
        ms = (time.perf_counter() - started) * 1000 / len(chunk)
        reference = ours.pixel_values([ours.prepare(decode_image(distinct[0], draft_to=(pre.width, pre.height)))])
        difference = (prepare(distinct[:1]).float() - reference.float()).abs() * pre.std[:, None, None] * 255
        print(f"  {width}x{height}: decode+resize on the GPU {ms:.3f} ms/image ({1000 / ms:.0f} images/s alone); "
              f"pixels against the CPU path: mean difference {difference.mean().item():.2f}, max "
              f"{difference.max().item():.0f} (of 255)", flush=True)


def jpeg_kinds() -> dict[str, bytes]:
    """JPEGs of the kinds worker/decode/gpu_jpeg.py leaves to the GPU or keeps on the CPU, 640x480 each."""
    image = photo(640, 480, 5)

    return {
        "baseline 4:2:0": jpeg(image),
        "baseline 4:4:4": jpeg(image, subsampling=0),
        "baseline 4:2:2": jpeg(image, subsampling=1),
        "grey": jpeg(image.convert("L")),
        "progressive": jpeg(image, progressive=True),
        "RGB, not YCbCr": jpeg(image, keep_rgb=True),
        "CMYK": jpeg(image.convert("CMYK")),
    }


def nvjpeg_kinds(decode_jpeg: DecodeJpeg, device: torch.device) -> None:
    """Which kinds of JPEG the GPU decodes, alone and in one call with a baseline one, and how close to Pillow's
    pixels: whether worker/decode/gpu_jpeg.py could leave more kinds (progressive ones, say) to it."""
    kinds = jpeg_kinds()
    print("JPEG kinds on the GPU (left to it by the worker: baseline RGB or grey):", flush=True)
    for name, data in kinds.items():
        expected = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        pair = [data, kinds["baseline 4:2:0"]]
        try:
            decoded = decode_jpeg([torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in pair],
                                  device=device)[0].cpu()
        except (RuntimeError, ValueError) as exc:
            print(f"  {name:16s} {'left to it' if device_jpeg(data) else 'kept on the CPU'}: fails ({exc})", flush=True)
            continue
        if decoded.shape != expected.shape:
            verdict = f"shape {tuple(decoded.shape)}, Pillow's {tuple(expected.shape)}"
        else:
            difference = (decoded.int() - expected.int()).abs().float()
            verdict = f"mean difference from Pillow {difference.mean().item():.2f}, max {difference.max().item():.0f}"
        print(f"  {name:16s} {'left to it' if device_jpeg(data) else 'kept on the CPU'}: decodes; {verdict}",
              flush=True)


def _products(device: torch.device, ready: threading.Event, stop: threading.Event, done: list[int]) -> None:
    """Matrix products on `device`, on a stream of their own, until `stop`, counted in `done`."""
    side = 4096 if device.type == "cuda" else 256
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    left = torch.randn(side, side, device=device, dtype=dtype)
    right = torch.randn(side, side, device=device, dtype=dtype)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    try:
        with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            while not stop.is_set():
                for _ in range(8):
                    torch.mm(left, right)  # the work is the point
                if stream is not None:
                    stream.synchronize()  # at most 8 products queued: stopping is prompt, counting is true
                done[0] += 8
                ready.set()
    finally:
        ready.set()  # a failure shows as no products, not as a minute's wait


@contextlib.contextmanager
def busy_device(device: torch.device) -> Iterator[Callable[[], float]]:
    """`device`'s compute kept busy, as the model's batches keep it, while the block runs; gives a function that
    says how many products a second the busy work has done since the block began."""
    ready, stop, done = threading.Event(), threading.Event(), [0]
    thread = threading.Thread(target=_products, args=(device, ready, stop, done), name="busy")
    thread.start()
    try:
        ready.wait(60)  # past its first products: cuBLAS set up
        before, started = done[0], time.perf_counter()
        yield lambda: (done[0] - before) / (time.perf_counter() - started)
    finally:
        stop.set()
        thread.join()


def nvjpeg_engine(decode_jpeg: DecodeJpeg, device: torch.device, size: tuple[int, int] = (4000, 3000),
                  count: int = 256, chunks: Sequence[int] = (8, DECODE_CHUNK, 128)) -> None:
    """nvJPEG's decoding rate for large JPEGs by call size, and beside a GPU kept busy: whether it decodes on the
    JPEG engines (torchvision asks nvJPEG for its hardware backend, which A100s and H100s have, for a list of
    baseline JPEGs) or on the cores the model needs. If both rates hold when they run together, decoding
    overlaps the model and the hybrid's bound is the engines' rate plus the processes'; if not, it is the
    GPU-time sum (BENCHMARKS.md, "4000x3000 at 80%: what bounds it")."""
    def tensors(make: Callable[[int, int, int], Image.Image]) -> list[torch.Tensor]:
        distinct = [jpeg(make(*size, seed)) for seed in range(4)]
        return [torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()) for blob in cycle(distinct, count)]

    smooth = tensors(photo)

    def rate(chunk: int, data: Sequence[torch.Tensor] = smooth) -> float:
        decode_jpeg(data[:chunk], device=device)  # warm: the decoder's buffers for this call size
        sync()
        started = time.perf_counter()
        for start in range(0, count, chunk):
            decode_jpeg(data[start : start + chunk], device=device)
        sync()
        return count / (time.perf_counter() - started)

    try:
        rates = {chunk: rate(chunk) for chunk in chunks}
        real_size = rate(DECODE_CHUNK, tensors(grainy))  # a real photo's bytes: 4.3 MB at 12 MP, not 0.8
        with busy_device(device) as products:
            time.sleep(1)
            alone = products()
        with busy_device(device) as products:
            decoding = rate(DECODE_CHUNK)
            beside = products()
    except (RuntimeError, ValueError) as exc:  # a probe: what follows it in a scarce GPU run must still run
        print(f"nvJPEG on {size[0]}x{size[1]} JPEGs: the probe failed ({exc})", flush=True)
        return
    by_chunk = ", ".join(f"{chunk}: {value:.0f}" for chunk, value in rates.items())
    busy = f"{beside / alone:.0%} of its rate alone ({alone:.0f} products/s)" if alone else "not running (failed)"
    print(f"nvJPEG on {size[0]}x{size[1]} JPEGs, decoding only (images/s by call size): {by_chunk}; in calls of "
          f"{DECODE_CHUNK} beside a GPU kept busy: {decoding:.0f} ({decoding / rates[DECODE_CHUNK]:.0%} of alone), "
          f"the busy work at {busy}; grainy JPEGs of a real photo's size, in calls of {DECODE_CHUNK}: "
          f"{real_size:.0f}", flush=True)


def gpu_jpeg_path(ours: BlipCaptioner, args: argparse.Namespace, stand_in: DecodeJpeg | None = None) -> None:
    """Worker path from JPEG bytes with nvJPEG decoding, against the model path from arrays at the input size.

    `stand_in` replaces torchvision's decode_jpeg, to try this section on a CPU."""
    decode_jpeg: DecodeJpeg
    if stand_in is not None:
        decode_jpeg = stand_in
    else:
        try:
            decode_jpeg = load_nvjpeg()
        except ImportError as exc:
            print(f"worker path with nvJPEG: torchvision does not import here ({exc}); skipped", flush=True)
            return
        if ours.device.type != "cuda":
            print("worker path with nvJPEG: needs CUDA; skipped", flush=True)
            return
    if ours.preprocessor is None:
        print("worker path with nvJPEG: needs the captioner's own preprocessing; skipped", flush=True)
        return
    pre = ours.preprocessor
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    size = (pre.width, pre.height)

    here = ThreadDecoding(size, ours.prepare)  # worker/runtime.py's thread_decoding
    decoding = GpuJpegDecoding(DeviceJpegDecoder(decode_jpeg, ours.device, size, here.decode), here)
    prepare = partial(gpu_pixel_values, ours, decoding=decoding)
    print(f"worker path with nvJPEG (torchvision.io.decode_jpeg on CUDA, resize on the GPU), greedy, batches of "
          f"{args.batch_size}:", flush=True)
    blobs = {size: [jpeg(photo(*size, seed)) for seed in range(8)] for size in ((640, 480), (4000, 3000))}

    decoding_alone(ours, prepare, blobs, min(256, args.images))

    arrays = cycle([np.asarray(ours.prepare(photo(640, 480, seed))) for seed in range(8)], args.images)

    def run_model(count: int) -> None:
        pipelined(ours, batches(arrays[:count], args.batch_size), generation)

    def run_gpu(data: Sequence[bytes]) -> None:
        pipelined_gpu(ours, batches(data, args.batch_size), prepare, generation)

    def run_processes(data: Sequence[bytes], pool: DecodePool, feeders: Executor) -> None:
        pipelined(ours, prefetched(data, args.batch_size, pool.decode, feeders, ahead=2), generation)

    def run_shared(data: Sequence[bytes], sharing: Decoding) -> None:
        pipelined_gpu(ours, batches(data, args.batch_size), partial(gpu_pixel_values, ours, decoding=sharing),
                      generation)

    small = cycle(blobs[(640, 480)], args.images)
    large = cycle(blobs[(4000, 3000)], args.images)
    # Both decoders at once for large photos, as the worker shares them (worker/decode/jpeg_split.py): nvJPEG alone and
    # the CPU's processes alone each decoded about 450-530 4000x3000 JPEGs/s on the H200 host (BENCHMARKS.md,
    # 2026-11-30).
    processes = DecodePool(args.decode_processes, (pre.width, pre.height), pre.resample)
    # As worker/runtime.py's decoding_for sets it up with processes; its decoder learns across rounds.
    sharing = GpuJpegDecoding(DeviceJpegDecoder(decode_jpeg, ours.device, size, here.decode, processes),
                              ProcessDecoding(processes))
    with ThreadPoolExecutor(2 * args.decode_processes, thread_name_prefix="feed") as feeders:
        sides = [
            Side("model path (arrays at the input size, uploaded ahead)", args.images,
                 partial(run_model, args.images), partial(run_model, args.batch_size)),
            Side("captioner from 640x480 JPEG, nvJPEG", len(small), partial(run_gpu, small),
                 partial(run_gpu, small[: args.batch_size])),
            Side("captioner from 4000x3000 JPEG, nvJPEG", len(large), partial(run_gpu, large),
                 partial(run_gpu, large[: args.batch_size])),
            # The same decoding processes alone, in the same run: what nvJPEG and the share are measured against.
            *[Side(f"captioner from {name} JPEG, {args.decode_processes} processes", len(data),
                   partial(run_processes, data, processes, feeders),
                   partial(run_processes, data[: args.batch_size], processes, feeders))
              for name, data in (("640x480", small), ("4000x3000", large))],
            Side(f"captioner from 4000x3000 JPEG, nvJPEG sharing with {args.decode_processes} processes", len(large),
                 partial(run_shared, large, sharing), partial(run_shared, large[: args.batch_size], sharing)),
        ]
        try:
            rates = measure(sides, args.repeats)
        finally:
            sharing.close()  # its decoder's threads, and the processes
    for side, rate in zip(sides[1:], rates[1:], strict=True):
        print(f"  {side.label.removeprefix('captioner from ')}: {rate / rates[0]:.0%} of the model path", flush=True)
