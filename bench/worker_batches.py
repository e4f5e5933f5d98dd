"""The worker's own batching, as single-image jobs reach it, without its queue: for the GPU machines.

    python -m bench.worker_batches [--device auto] [--images N] [--clients auto 32] [--sizes 640x480 4000x3000]

A GPU worker holds up to CAPTIONER_WORKER_CONCURRENCY jobs at once, each on a thread of its own: the thread
decodes its job's image (in the worker's decoding processes on a GPU) and hands it to the worker's
DynamicBatcher, which runs batches of up to CAPTIONER_BATCH_SIZE, each batch's pixels prepared ahead while the
model runs the one before. Here `--clients` threads do the same, one JPEG each at a time, with the worker's own
classes and "auto" rules (worker/sizing.py), against the model path fed arrays at the input size in the same run:
what a GPU worker gives single-image jobs, less Redis, Celery and the API (which the GPU machines do not have).
`--clients 32` shows the old default's cap: a batch holds no more single-image jobs than the worker holds.
Where torchvision imports on a GPU, each side runs again with CAPTIONER_DECODE_JPEG_ON_GPU's path: the job
threads leave JPEGs encoded and finishing each batch decodes them with nvJPEG (worker/decode/gpu_jpeg.py); for
large JPEGs, also as the worker runs that path beside its decoding processes (each batch's large JPEGs shared
between them and the GPU: worker/decode/jpeg_split.py).

Needs only torch, transformers and pillow (and torchvision for the nvJPEG sides).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.gpu_jpeg import nvjpeg_engine, nvjpeg_kinds
from bench.harness import Side, batches, build_blip_base, cycle, jpeg, measure, photo, pipelined
from bench.model_path import TINY_MODEL
from tests.fixtures.shapes import random_scene, render
from worker.decode.base import Decoding
from worker.decode.gpu_jpeg import DecodeJpeg, DeviceJpegDecoder, GpuJpegDecoding, load_nvjpeg
from worker.decode.jpeg_split import GPU_S_PER_MEGAPIXEL, PROCESS_S_PER_MEGAPIXEL, SHARED_FROM_PIXELS
from worker.decode.processes import DecodePool, ProcessDecoding
from worker.decode.threads import ThreadDecoding
from worker.jobs.batches import BatchCaptioner, BatchKey
from worker.jobs.batching import DynamicBatcher
from worker.model.captioner import BlipCaptioner, DeviceChoice, pick_device, pick_dtype
from worker.sizing import automatic_batch_size, automatic_concurrency, automatic_decode_processes

HYBRID = ", nvJPEG and processes"


@dataclass(frozen=True)
class GpuWorkerLike:
    """The parts of a GPU worker that single-image jobs go through: decoding, then the batcher."""

    ours: BlipCaptioner
    batch_size: int
    wait_s: float
    decoding: Decoding  # as worker/runtime.py's decoding_for sets it up
    generation: dict[str, int]

    @property
    def device_jpegs(self) -> DeviceJpegDecoder | None:
        """The GPU's JPEG decoder, on the nvJPEG sides."""
        return self.decoding.gpu if isinstance(self.decoding, GpuJpegDecoding) else None

    def serve(self, blobs: Sequence[bytes], clients: int) -> list[str]:
        """Caption `blobs` as `clients` job threads would, through a DynamicBatcher set up as the worker's."""
        # The worker's own batch stages (worker/jobs/batches.py, which needs no Redis or pydantic): finish the
        # batch's decoding (its JPEGs left for the GPU decoded there) and caption, or do that ahead, with the pixels
        # stacked and uploaded, and then caption.
        stages = BatchCaptioner(self.ours, self.decoding)
        key = BatchKey.of(None, self.generation)
        batcher = DynamicBatcher(stages.run, self.batch_size, self.wait_s, stages.prepare).start()
        taken = itertools.count()  # next() on a count is atomic under the GIL: each blob goes to one thread
        failures: list[BaseException] = []
        captions = [""] * len(blobs)

        def job_thread() -> None:
            try:
                while (index := next(taken)) < len(blobs):
                    captions[index] = batcher.submit(key, self.decoding.load(blobs[index])).result().text
            except BaseException as exc:  # reported below, not lost with the thread
                failures.append(exc)

        threads = [threading.Thread(target=job_thread, name="job") for _ in range(clients)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            batcher.stop(timeout=60)
        if failures:
            raise failures[0]
        return captions


def parse_size(spec: str) -> tuple[int, int]:
    width, height = spec.split("x")
    return int(width), int(height)


@functools.cache
def jpegs(width: int, height: int) -> list[bytes]:
    """Eight distinct photo-like JPEGs of this size, made once for every side that uses them."""
    return [jpeg(photo(width, height, seed)) for seed in range(8)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--images", type=int, help="images per measurement (CUDA 4096, CPU 48)")
    parser.add_argument("--batch-size", type=int, help="CAPTIONER_BATCH_SIZE (default: the worker's auto)")
    parser.add_argument("--clients", nargs="*", default=["auto"],
                        help="jobs held at once, a side each: numbers or auto (the worker's auto, twice the batch)")
    parser.add_argument("--decode-processes", type=int, help="default: the worker's auto (none on CPU)")
    parser.add_argument("--sizes", nargs="*", default=["640x480", "4000x3000"], help="JPEG sizes, a side each")
    parser.add_argument("--wait-ms", type=float, default=20, help="CAPTIONER_BATCH_WAIT_MS")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, help="interleaved rounds, best kept (CUDA 1, CPU 2)")
    parser.add_argument("--model", help="a saved BLIP to load instead of the random BLIP-base (e.g. the tiny one)")
    parser.add_argument("--nvjpeg", choices=["auto", "off"], default="auto",
                        help="auto: also each side with JPEGs decoded on the GPU, where torchvision imports there")
    return parser.parse_args(argv)


def nvjpeg_for(device: torch.device, choice: str, stand_in: DecodeJpeg | None) -> DecodeJpeg | None:
    """The GPU's JPEG decoder for the nvJPEG sides, or None (said why); `stand_in` replaces it to try on a CPU."""
    if choice == "off":
        return None
    if stand_in is not None:
        return stand_in
    if device.type != "cuda":
        print("nvJPEG sides: need CUDA; skipped", flush=True)
        return None
    try:
        return load_nvjpeg()
    except ImportError as exc:
        print(f"nvJPEG sides: torchvision does not import ({exc}); skipped", flush=True)
        return None


def ways_to_decode(ours: BlipCaptioner, batch_size: int, wait_s: float, generation: dict[str, int], *,
                   nvjpeg: DecodeJpeg | None, pool: DecodePool | None) -> dict[str, GpuWorkerLike]:
    """The worker's ways of decoding, by the label's suffix: on the CPU (its decoding processes, or the job
    threads without them); with CAPTIONER_DECODE_JPEG_ON_GPU, JPEGs left for nvJPEG, and beside the processes
    (which take a share of each batch's large JPEGs), set up as the worker's runtime sets them up."""
    size = ours.input_size
    assert size is not None, "the captioner has no fixed input size"
    here = ThreadDecoding(size, ours.prepare)  # worker/runtime.py's thread_decoding
    cpu: Decoding = ProcessDecoding(pool) if pool is not None else here
    ways = {"": GpuWorkerLike(ours, batch_size, wait_s, cpu, generation)}
    if nvjpeg is not None:
        on_device = DeviceJpegDecoder(nvjpeg, ours.device, size, here.decode)
        ways[", nvJPEG"] = GpuWorkerLike(ours, batch_size, wait_s, GpuJpegDecoding(on_device, cpu), generation)
        if pool is not None:
            sharing = DeviceJpegDecoder(nvjpeg, ours.device, size, here.decode, pool)
            ways[HYBRID] = GpuWorkerLike(ours, batch_size, wait_s, GpuJpegDecoding(sharing, cpu), generation)
    return ways


def close_decoders(workers: dict[str, GpuWorkerLike]) -> None:
    """Stop the GPU's JPEG decoders' threads; the decoding processes they share are the caller's to close."""
    for worker in workers.values():
        if worker.device_jpegs is not None:
            worker.device_jpegs.close()


def report_decoders(workers: dict[str, GpuWorkerLike]) -> None:
    """What the GPU's JPEG decoders did besides decoding: gave up, or learned the split's costs."""
    if any(worker.device_jpegs and not worker.device_jpegs.working for worker in workers.values()):
        print("  the GPU's JPEG decoder gave up (see the log above): its sides decoded on the CPU", flush=True)
    sharing = workers.get(HYBRID)
    if sharing is not None and sharing.device_jpegs is not None:  # a check of the split's starting figures
        costs = sharing.device_jpegs.costs
        print(f"  learned by the sharing decoder: nvJPEG {costs.gpu * 12e3:.2f} ms and a process "
              f"{costs.process * 12e3:.1f} ms per 12 MP JPEG (it started from {GPU_S_PER_MEGAPIXEL * 12e3:.2f} "
              f"and {PROCESS_S_PER_MEGAPIXEL * 12e3:.1f})", flush=True)


def right_captions(device_choice: DeviceChoice, nvjpeg: DecodeJpeg | None, processes: int, count: int = 48) -> None:
    """Right images in the right places: the random BLIP-base gives every image one caption, so the trained tiny
    model captions rendered scenes as JPEG jobs (some 2000x1500, a third stored turned with EXIF saying how to
    show them) through each way of decoding, and every caption is checked against the scene."""
    tiny = BlipCaptioner.load(str(TINY_MODEL), device_choice)
    size, preprocessor = tiny.input_size, tiny.preprocessor
    assert size is not None and preprocessor is not None
    rng = random.Random(5)
    blobs, truths = [], []
    for index in range(count):
        scene = random_scene(rng)
        image = render(scene, rng.choice([(640, 480), (300, 500), (2000, 1500)]), rng)
        turned = index % 3 == 0
        blobs.append(jpeg(image.transpose(Image.Transpose.ROTATE_90), 6) if turned else jpeg(image))
        truths.append(scene.caption)

    pool = DecodePool(min(2, processes), size, preprocessor.resample) if processes else None
    workers = ways_to_decode(tiny, 16, 0.02, {}, nvjpeg=nvjpeg, pool=pool)
    try:
        for how, worker in workers.items():
            name = how.removeprefix(", ") or "CPU decoding"
            captions = worker.serve(blobs, 16)
            right = sum(caption == truth for caption, truth in zip(captions, truths, strict=True))
            print(f"tiny model on {tiny.device}, {count} rendered scenes as JPEG jobs, {name}: {right}/{count} "
                  "captions right", flush=True)
    finally:
        close_decoders(workers)
        if pool is not None:
            pool.close()


def main(argv: Sequence[str] | None = None, nvjpeg_stand_in: DecodeJpeg | None = None) -> None:
    args = parse_args(argv)
    device_choice: DeviceChoice = args.device
    device = pick_device(device_choice)
    dtype = pick_dtype(device)
    on_gpu = device.type == "cuda"
    images = args.images or (4096 if on_gpu else 48)
    batch_size = args.batch_size or automatic_batch_size(device)
    processes = automatic_decode_processes(device) if args.decode_processes is None else args.decode_processes
    clients = [automatic_concurrency(batch_size) if value == "auto" else int(value) for value in args.clients]
    repeats = args.repeats or (1 if on_gpu else 2)
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    print(f"date {date.today()}, machine {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, device "
          f"{device}" + (f" ({torch.cuda.get_device_name()})" if on_gpu else "") + f", dtype {dtype}; {images} "
          f"single-image jobs per side, batches of up to {batch_size}, {args.wait_ms:g} ms batching window, "
          f"{processes} decoding processes, {args.new_tokens} new tokens, rounds {repeats}", flush=True)
    started = time.perf_counter()
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(Path(tmp) / "blip-base-random")
            build_blip_base(Path(model_dir))
        ours = BlipCaptioner.load(model_dir, device_choice)
        size, preprocessor = ours.input_size, ours.preprocessor
        assert size is not None and preprocessor is not None, "the captioner has no fixed input size"
        pool = DecodePool(processes, size, preprocessor.resample) if processes else None
        nvjpeg = nvjpeg_for(device, args.nvjpeg, nvjpeg_stand_in)
        sizes = {spec: parse_size(spec) for spec in args.sizes}
        if nvjpeg is not None:
            nvjpeg_kinds(nvjpeg, device)
            nvjpeg_engine(nvjpeg, device, max(sizes.values(), key=lambda size: size[0] * size[1]), min(256, images))
        right_captions(device_choice, nvjpeg, processes)
        # Two model paths to measure the worker's against: fed arrays (what decoding processes hand over, the
        # fastest), and fed PIL images at the input size (what a user of transformers has decoded, and what the
        # 640x480 worker path was held to on 2026-11-30).
        pictures = [ours.prepare(photo(640, 480, seed)) for seed in range(8)]
        fed = {"arrays": cycle([np.asarray(picture) for picture in pictures], images),
               "PIL images": cycle(pictures, images)}

        def model_path(inputs: str, count: int) -> None:
            pipelined(ours, batches(fed[inputs][:count], batch_size), generation)

        workers = ways_to_decode(ours, batch_size, args.wait_ms / 1000, generation, nvjpeg=nvjpeg, pool=pool)
        sides = [Side(f"model path ({inputs} at the input size, batches of {batch_size})", images,
                      partial(model_path, inputs, images), partial(model_path, inputs, batch_size))
                 for inputs in fed]
        for spec, jobs, (how, worker) in itertools.product(args.sizes, clients, workers.items()):
            width, height = sizes[spec]
            if how == HYBRID and width * height < SHARED_FROM_PIXELS:
                continue  # the same as nvJPEG alone: small JPEGs never go to the processes
            blobs = cycle(jpegs(width, height), images)
            sides.append(Side(f"{spec} JPEG jobs, {jobs} at once{how}", images, partial(worker.serve, blobs, jobs),
                              partial(worker.serve, blobs[: 2 * batch_size], jobs)))
        try:
            rates = measure(sides, repeats)
            report_decoders(workers)
        finally:
            close_decoders(workers)
            if pool is not None:
                pool.close()
    for side, rate in zip(sides[2:], rates[2:], strict=True):
        print(f"  {side.label}: {rate / rates[0]:.0%} of the model path fed arrays, {rate / rates[1]:.0%} of it fed "
              "PIL images", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
