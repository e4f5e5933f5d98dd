"""What decoding costs the worker's process: threads against processes, on JPEGs of two sizes.

For each way of decoding (threads in the worker's process; the worker's DecodePool, whose buffers are shared
memory; a ProcessPoolExecutor, which pickles the bytes and the image through pipes) it prints

- images/s with `--workers` threads or processes, and the worker process's own CPU per image (what the pool
  costs the process that drives the GPU; the decoding processes' CPU is not counted);
- how fast a thread that launches small torch ops runs beside that decoding, as a share of its speed alone.
  Each torch op releases and retakes the GIL, as every CUDA kernel launch of the GPU worker's model thread does,
  so this is a CPU stand-in for what decoding takes from a GPU worker's model thread.

A last way is what a job thread does with CAPTIONER_DECODE_JPEG_ON_GPU: read a JPEG's headers and leave it
encoded for the GPU (worker/decode/gpu_jpeg.py). Its CPU per image is what it costs the worker's process; its
images/s, far above any GPU's pace, makes the launching thread's share beside it a worst case.

Needs only torch, transformers and pillow (like bench.model_path), so it can run on the GPU machines too:

    PYTHONPATH=. python -m bench.decode_pool [--workers N] [--seconds S]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import date
from functools import partial
from multiprocessing import get_context

import numpy as np
import PIL
import torch
from PIL import Image

from bench.harness import grainy, image_processor, jpeg, photo
from worker.decode.gpu_jpeg import device_jpeg
from worker.decode.images import decode_fitted
from worker.decode.processes import DECODING_NICENESS, SHARED_DIR, DecodePool
from worker.model.fit import HostImage
from worker.model.preprocess import BlipPreprocessor

SIZE = (384, 384)  # BLIP-base's input
RESAMPLE = Image.Resampling.BICUBIC


def launches_per_second(seconds: float) -> float:
    """Small torch ops per second on this thread: each releases and retakes the GIL, as a kernel launch does."""
    x = torch.zeros(64)
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            x = x + 1
        count += 100
    return count / seconds


def decode_for(seconds: float, decode: Callable[[bytes], object], blobs: Sequence[bytes], feeders: int,
               beside: Callable[[], float] | None = None) -> tuple[float, float, float | None]:
    """(images/s, this process's CPU ms per image, what `beside` returned) with `feeders` threads calling
    `decode` over and over for `seconds`, `beside` running on this thread meanwhile."""
    stop, counts = threading.Event(), [0] * feeders

    def loop(index: int) -> None:
        while not stop.is_set():
            decode(blobs[counts[index] % len(blobs)])
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(feeders)]
    for thread in threads:
        thread.start()
    time.sleep(min(1.0, seconds / 4))  # warm: processes started, buffers grown
    done, cpu, wall = sum(counts), time.process_time(), time.perf_counter()
    result = beside() if beside is not None else None
    if beside is None:
        time.sleep(seconds)
    images = sum(counts) - done
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stop.set()
    for thread in threads:
        thread.join()
    return images / wall, cpu / max(images, 1) * 1000, result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="decoding threads or processes (default: one core fewer than the machine's, "
                             "leaving one for the launching thread)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--niceness", type=int, nargs="*", default=[DECODING_NICENESS],
                        help="DecodePool sides, one per value: how much lower the processes' CPU priority is than "
                             f"the worker's (default: the pool's own, {DECODING_NICENESS})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"date {date.today()}, machine {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"Pillow {PIL.__version__}; {args.workers} decoding threads or processes, {args.seconds:g} s each; "
          f"{SHARED_DIR} {shutil.disk_usage(SHARED_DIR).free / 2**20:,.0f} MiB free", flush=True)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a full /dev/shm says so
    alone = launches_per_second(args.seconds)
    print(f"a thread launching small torch ops, alone: {alone:,.0f} ops/s", flush=True)
    pools = {niceness: DecodePool(args.workers, SIZE, RESAMPLE, niceness=niceness) for niceness in args.niceness}
    # spawn, as the worker's pool: a forked child of a process that has initialised CUDA cannot use it.
    executor = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"))
    in_thread = partial(decode_fitted, size=SIZE, resample=RESAMPLE)
    def through_pipes(data: bytes) -> Image.Image:
        return executor.submit(in_thread, data).result()

    # Processes are fed by twice as many threads, as the worker's many job threads feed its pool: one thread per
    # process would leave each process idle while its thread takes the reply and sends the next image.
    ways: list[tuple[str, Callable[[bytes], object], int]] = [
        ("threads", in_thread, args.workers),
        *[(f"DecodePool, nice {niceness}", pool.decode, 2 * args.workers) for niceness, pool in pools.items()],
        ("ProcessPoolExecutor", through_pipes, 2 * args.workers),
        ("headers, left for GPU", device_jpeg, args.workers),
    ]
    try:
        # Every process started before anything is timed: spawning 15 took longer than a whole measurement on
        # the GPU host (its first run measured 0 images/s).
        warm = jpeg(photo(64, 48, 0))
        with ThreadPoolExecutor(2 * args.workers) as starters:
            for pool in pools.values():
                list(starters.map(pool.decode, [warm] * 4 * args.workers))
            list(starters.map(through_pipes, [warm] * 4 * args.workers))
        for (width, height), make in (((640, 480), photo), ((4000, 3000), photo), ((4000, 3000), grainy)):
            blobs = [jpeg(make(width, height, seed)) for seed in range(4)]
            for blob in blobs:  # warm
                in_thread(blob)
            started = time.perf_counter()
            for blob in blobs * 3:
                in_thread(blob)
            one = (time.perf_counter() - started) / len(blobs) / 3 * 1000
            print(f"{width}x{height} {make.__name__} JPEG ({len(blobs[0]) / 1e6:.2f} MB): decode+resize {one:.1f} ms "
                  "on one thread", flush=True)
            for label, decode, feeders in ways:
                rate, cpu_ms, _ = decode_for(args.seconds, decode, blobs, feeders)
                rate_beside, _, beside = decode_for(args.seconds, decode, blobs, feeders,
                                                    partial(launches_per_second, args.seconds))
                assert beside is not None
                print(f"  {label:22s} {rate:8.1f} images/s, worker process CPU {cpu_ms:6.3f} ms/image; launching "
                      f"thread beside it at {beside / alone:.0%}, decoding then {rate_beside:.1f} images/s",
                      flush=True)
        stacking()
    finally:
        for pool in pools.values():
            pool.close()
        executor.shutdown()


def stacking() -> None:
    """Copying decoded images into a batch as BlipPreprocessor.stack does (a row per image, on one thread, into a
    buffer reused as the GPU worker's pinned one is): from PIL images, as decoding on threads gives them, and from
    arrays, as DecodePool gives them. Converting a PIL image holds the GIL; copying an array does not."""
    preprocessor = BlipPreprocessor(image_processor(SIZE[0]), torch.device("cpu"), torch.float32, threads=0)
    images: list[HostImage] = [decode_fitted(jpeg(photo(640, 480, seed)), SIZE, RESAMPLE) for seed in range(64)]
    arrays: list[HostImage] = [np.asarray(image).copy() for image in images]
    rows = np.empty((len(images), SIZE[1], SIZE[0], 3), np.uint8)
    figures = []
    for batch in (images, arrays):
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for index, image in enumerate(batch):
                rows[index] = np.asarray(preprocessor.resized(image))
            best = min(best, time.perf_counter() - started)
        figures.append(best / len(batch) * 1000)
    print(f"copying 64 images into a batch (ms/image, best of 5): from PIL images {figures[0]:.3f}, from arrays "
          f"{figures[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
