"""The worker's JPEG decoding on a GPU host, timed on any machine: how far sharing each batch's large JPEGs between
the decoding processes and the GPU (worker/decode/jpeg_split.py) carries a worker fed 12 MP photos.

    python -m bench.hybrid_split [--gpu-ms 1.87] [--process-ms 33] [--model-ms 0.67] [--processes 15]

Only the device is stood in for: nvJPEG and the model are waits of the lengths an H200 took (per 12 MP JPEG, per
caption at batches of 256; BENCHMARKS.md, 2026-11-30), and the processes are the worker's own DecodePool whose
processes wait as long as one of that host's cores took per photo. Everything else is the worker's: job threads
holding one single-image job each (its `auto` concurrency, twice the batch), the header check that leaves a JPEG
for the GPU, DynamicBatcher with its prepare stage, BatchCaptioner, GpuJpegDecoding and the split. Two cases for
the GPU, as which holds on an H200 is not yet measured: nvJPEG on the GPU's JPEG engines, beside the model
(torchvision asks for them), or on its cores, one thing at a time. Each side prints what the stand-ins' times
allow at best, so the gap is what the worker's own scheduling loses.

Needs only torch and Pillow: it runs here, on 2 cores, with waits that need none.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial

import torch
from PIL import Image

from bench.harness import jpeg, photo
from bench.worker_batches import GpuWorkerLike
from worker.decode.base import Decoding
from worker.decode.gpu_jpeg import DeviceJpegDecoder, GpuJpegDecoding
from worker.decode.processes import DecodePool, ProcessDecoding
from worker.model.fit import ModelImage
from worker.model.output import Caption
from worker.sizing import automatic_concurrency

SIZE = (16, 16)  # the stand-in model's input: what the stand-ins hand over costs next to nothing
TWELVE_MP = (4000, 3000)


def waiting_work(data: bytes, size: tuple[int, int], resample: Image.Resampling, seconds: float) -> Image.Image:
    """A decoding process's work, as long as a core took on a 12 MP photo (module level: processes import it)."""
    time.sleep(seconds)
    return Image.new("RGB", size)


@dataclass
class StandIns:
    """The GPU's two jobs as waits; `one_at_a_time` makes them queue for one lock (nvJPEG on the GPU's cores)."""

    gpu_s: float
    model_s: float
    one_at_a_time: bool

    def __post_init__(self) -> None:
        self._decoding = threading.Lock()
        self._captioning = self._decoding if self.one_at_a_time else threading.Lock()

    def decode_jpeg(self, data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with self._decoding:
            time.sleep(self.gpu_s * len(data))
        return [torch.zeros(3, SIZE[1], SIZE[0], dtype=torch.uint8) for _ in data]

    def caption(self, count: int) -> list[str]:
        with self._captioning:
            time.sleep(self.model_s * count)
        return ["a caption"] * count


class StandInCaptioner:
    """What BatchCaptioner and bench.worker_batches' GpuWorkerLike use of a BlipCaptioner."""

    device = torch.device("cpu")
    input_size = SIZE

    def __init__(self, gpu: StandIns) -> None:
        self.gpu = gpu

    @contextlib.contextmanager
    def preparing_ahead(self) -> Iterator[None]:
        with torch.inference_mode():  # as the captioner's on a CPU: no stream of its own
            yield

    def pixel_values(self, images: Sequence[ModelImage]) -> torch.Tensor:
        return torch.zeros(len(images))

    def caption(self, images: Sequence[ModelImage], prompt: str | None, generation: dict[str, int],
                pixel_values: torch.Tensor | None = None) -> list[str]:
        return self.gpu.caption(len(images))

    def caption_counted(self, images: Sequence[ModelImage], prompt: str | None, generation: dict[str, int],
                        pixel_values: torch.Tensor | None = None) -> list[Caption]:
        return [Caption(text, 3) for text in self.caption(images, prompt, generation, pixel_values)]


def serve(worker: GpuWorkerLike, blobs: Sequence[bytes], clients: int) -> float:
    """Images/s for `blobs` through `clients` job threads and the worker's batcher (bench.worker_batches')."""
    started = time.perf_counter()
    worker.serve(blobs, clients)
    return len(blobs) / (time.perf_counter() - started)


def best_rates(
    gpu_s: float, model_s: float, process_s: float, processes: int, *, one_at_a_time: bool
) -> dict[str, float]:
    """What each way allows at best, from the stand-ins' times alone."""
    cpu = processes / process_s
    if one_at_a_time:  # the GPU's seconds: n x model + (n - what the processes took) x decode
        return {"processes": min(cpu, 1 / model_s), "nvJPEG": 1 / (gpu_s + model_s),
                "shared": min(1 / model_s, (1 + cpu * gpu_s) / (model_s + gpu_s))}
    return {"processes": min(cpu, 1 / model_s), "nvJPEG": min(1 / gpu_s, 1 / model_s),
            "shared": min(1 / model_s, cpu + 1 / gpu_s)}


@contextlib.contextmanager
def started_pool(processes: int, process_s: float) -> Iterator[DecodePool]:
    """The decoding processes, each past its start (importing Pillow takes a core a while) before any timing."""
    pool = DecodePool(processes, SIZE, Image.Resampling.BICUBIC, work=partial(waiting_work, seconds=process_s))
    try:
        threads = [threading.Thread(target=pool.decode, args=(b"warm",)) for _ in range(processes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        yield pool
    finally:
        pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-ms", type=float, default=1.87, help="nvJPEG's time per 12 MP JPEG")
    parser.add_argument("--process-ms", type=float, default=33.0, help="a core's time per 12 MP JPEG")
    parser.add_argument("--model-ms", type=float, default=0.67, help="the model's time per caption")
    parser.add_argument("--processes", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=4096, help="per side")
    parser.add_argument("--engines", nargs="*", choices=["yes", "no"], default=["yes", "no"],
                        help="nvJPEG on JPEG engines beside the model (yes) or on its cores, one at a time (no)")
    args = parser.parse_args(argv)
    gpu_s, model_s, process_s = args.gpu_ms / 1000, args.model_ms / 1000, args.process_ms / 1000
    clients = automatic_concurrency(args.batch_size)
    print(f"date {date.today()}, machine {platform.node()}: {os.cpu_count()} CPUs; stand-ins: nvJPEG {args.gpu_ms:g} "
          f"ms and a process {args.process_ms:g} ms per 12 MP JPEG, {args.processes} processes, the model "
          f"{args.model_ms:g} ms per caption; batches of {args.batch_size}, {clients} jobs at once, {args.images} "
          "single-image jobs per side", flush=True)
    blobs = [jpeg(photo(*TWELVE_MP, 0))] * args.images  # real bytes: the job threads read their headers
    with started_pool(args.processes, process_s) as pool:
        for engines in args.engines:
            gpu = StandIns(gpu_s, model_s, one_at_a_time=engines == "no")
            best = best_rates(gpu_s, model_s, process_s, args.processes, one_at_a_time=gpu.one_at_a_time)
            alone = DeviceJpegDecoder(gpu.decode_jpeg, torch.device("cpu"), SIZE, pool.decode)
            sharing = DeviceJpegDecoder(gpu.decode_jpeg, torch.device("cpu"), SIZE, pool.decode, pool)
            on_processes = ProcessDecoding(pool)
            ways: dict[str, Decoding] = {
                "processes": on_processes,
                "nvJPEG": GpuJpegDecoding(alone, on_processes),
                "shared": GpuJpegDecoding(sharing, on_processes),
            }
            print("nvJPEG on " + ("JPEG engines, beside the model:" if engines == "yes" else
                                  "the GPU's cores, one thing at a time:"), flush=True)
            captioner = StandInCaptioner(gpu)
            for name, decoding in ways.items():
                worker = GpuWorkerLike(captioner, args.batch_size, 0.02, decoding, {})  # type: ignore[arg-type]
                rate = serve(worker, blobs, clients)
                print(f"  {name:10s} {rate:7.1f} images/s, at best {best[name]:7.1f} ({rate / best[name]:.0%})",
                      flush=True)
            print(f"  learned by the sharing decoder: nvJPEG {sharing.costs.gpu * 12e3:.2f} ms and a process "
                  f"{sharing.costs.process * 12e3:.1f} ms per 12 MP JPEG", flush=True)
            sharing.close()  # its threads; the pool is closed once every case has run


if __name__ == "__main__":
    main()
