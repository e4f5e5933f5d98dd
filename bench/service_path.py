"""Service path against model path on the BLIP-base architecture: how much of its model's speed the service keeps.

    python -m bench.service_path [--dtype auto] [--clients 8 32 128] [--rates 0.8 1.2] [--seconds 60]

In one run, on BLIP-base with random weights (exactly --new-tokens new tokens, as bench.model_path):
1. Model path, in this process: the captioner in CAPTIONER_DTYPE, batches of the worker's size (and of each
   --clients below it, the most that many closed-loop clients can put in a batch), from decoded 640x480 images;
   transformers' pipeline("image-text-to-text") in fp32, one image at a time; and the captioner on one image
   alone. Images/s of each. Greedy, or --beams 3 for beam search, everywhere.
2. The service through local_stack (Redis, S3, the API, one worker serving the same model and dtype): for each
   --clients, that many closed-loop clients each submit a one-image 640x480 JPEG job and wait for it (long
   polls of 30 s, as the SDK's Client.wait). Images/s over --seconds after --warmup, as a multiple of the
   pipeline's, and as a share of the model path's measured again just before and just after the scenario (one
   round each, with the worker idle): the machine's speed moves by 10-20% within minutes, so a scenario is
   compared with the model path of its own minutes, not only with the best round at the start.
3. Open loop: one-image jobs at each --rates share of the model path's images/s (exponential gaps): images/s
   done and p50/p90 latency. Above 1.0, the service is overloaded and shows what it finishes.
4. Low load: --idle-jobs jobs one at a time, a second apart: p50 latency against one image alone on the model.

The clients share the machine's cores with the service (on 2 cores, their CPU counts against it). Each
scenario ends by cancelling what its clients still wait for, and one more job waits out what the worker had
already taken. About 12 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.harness import (
    Side,
    batches,
    build_blip_base,
    caption_one_at_a_time,
    cpu_description,
    jpeg,
    measure,
    photo,
    transformers_pipeline,
)
from bench.service import percentile
from bench.stack import LocalStack, local_stack
from captioner.client import Client
from captioner.errors import APIError
from common.schemas import Job
from worker.model.captioner import DTYPE_CHOICES, BlipCaptioner, pick_device, pick_dtype
from worker.sizing import automatic_batch_size


class Finished:
    """When each job ended (time.monotonic) and how long it took, from every client thread; and the jobs still
    waited on, for the scenario's end to cancel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ends: list[float] = []
        self.latencies: list[tuple[float, float]] = []  # (submitted at, latency)
        self.waited_on: set[str] = set()

    def add(self, submitted: float, ended: float) -> None:
        with self.lock:
            self.ends.append(ended)
            self.latencies.append((submitted, ended - submitted))

    def rate(self, start: float, end: float) -> float:
        """Images/s from the end of the first batch that ended in the window to the end of the last: whole batch
        cycles only. Jobs end a batch at a time, so counting the window's ends instead gains or loses a whole batch
        at each edge (with 7 batches in 60 s, +-14%)."""
        with self.lock:
            ends = sorted(t for t in self.ends if start <= t < end)
        # The ends of one batch come within milliseconds of each other; two batches' ends are a batch's time apart.
        firsts = [t for previous, t in itertools.pairwise(ends) if t - previous > BATCH_GAP_S]
        if not firsts:
            return len(ends) / (end - start)  # at most one batch: nothing better to go by
        first_batch = ends.index(firsts[0])  # how many jobs the first batch ended
        return (len(ends) - first_batch) / (ends[-1] - ends[first_batch - 1])

    def latencies_from(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [latency for submitted, latency in self.latencies if start <= submitted < end]

    @contextlib.contextmanager
    def waiting_on(self, job_id: str) -> Iterator[None]:
        """Lists the job for `cancel_the_rest` while the block waits on it."""
        with self.lock:
            self.waited_on.add(job_id)
        try:
            yield
        finally:
            with self.lock:
                self.waited_on.discard(job_id)

    def cancel_the_rest(self, client: Client) -> None:
        """Cancel every job still waited on: its client's long poll then answers at once."""
        with self.lock:
            job_ids = list(self.waited_on)
        for job_id in job_ids:
            with contextlib.suppress(APIError):  # it may have ended meanwhile
                client.cancel(job_id)


# Ends of jobs further apart than this belong to different batches (one image alone takes 0.6 s on the model).
BATCH_GAP_S = 0.2

# The generation options of every job and of the model path: exactly --new-tokens tokens, --beams beams.
GENERATION: dict[str, Any] = {}


BATCH_LINE = re.compile(r"captioned a batch of (\d+) in (\d+) ms")


class WorkerBatches:
    """The batches the worker ran since the last `read`, from its log: how full they were, what the model took."""

    def __init__(self, stack: LocalStack) -> None:
        self.path = stack.worker.log_path
        self.offset = self.path.stat().st_size

    def read(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        self.offset += len(text.encode())
        found = [(int(size), int(ms)) for size, ms in BATCH_LINE.findall(text)]
        if not found:
            return "no batches"
        sizes = [size for size, _ in found]
        model_s = sum(ms for _, ms in found) / 1000
        return (f"{len(found)} batches, mean size {statistics.mean(sizes):.1f} (smallest {min(sizes)}), "
                f"model {sum(sizes) / model_s:.2f} images/s of its own time")


def one_job(client: Client, data: bytes, stop: threading.Event, finished: Finished) -> Job | None:
    """Submit a one-image job and wait for it as the SDK does by default (long polls of 30 s); None if it was
    canceled because `stop` was set (Finished.cancel_the_rest)."""
    submitted = time.monotonic()
    job = client.submit([data], **GENERATION)
    with finished.waiting_on(job.id):
        if stop.is_set():  # set before the job was listed: cancel_the_rest may have missed it
            with contextlib.suppress(APIError):
                client.cancel(job.id)
        done = client.wait(job.id, timeout_s=3600)
    if done.status == "canceled" and stop.is_set():
        return None
    assert done.status == "succeeded", done
    assert done.results[0].new_tokens == GENERATION["max_new_tokens"], done  # the same work as the model path
    finished.add(submitted, time.monotonic())
    return done


def closed_loop(
    stack: LocalStack, clients: int, data: bytes, *, warmup: float, seconds: float, worker: WorkerBatches
) -> tuple[float, str]:
    """Images/s from `clients` clients, each submitting its next job as its last one ends, and the worker's
    batches in the measured window."""
    stop, finished = threading.Event(), Finished()

    def client_loop() -> None:
        with Client(stack.url, stack.key) as client:
            while not stop.is_set():
                one_job(client, data, stop, finished)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    worker.read()  # the warm-up's
    time.sleep(max(0.0, started + warmup + seconds - time.monotonic()))
    batches = worker.read()
    stop.set()
    with Client(stack.url, stack.key) as client:
        finished.cancel_the_rest(client)
    for thread in threads:
        thread.join(60)
    return finished.rate(started + warmup, started + warmup + seconds), batches


@dataclass
class OpenLoop:
    done: float  # images/s finished in the window
    offered: float  # jobs/s submitted in the window
    latencies: list[float]  # of the jobs submitted in the window
    batches: str  # the worker's in the window


def open_loop(
    stack: LocalStack, rate: float, data: bytes, *, warmup: float, seconds: float, worker: WorkerBatches
) -> OpenLoop:
    """One-image jobs arriving at `rate` (exponential gaps): what the service finished, and how fast."""
    stop, finished, local = threading.Event(), Finished(), threading.local()
    rng = random.Random(5)

    def submit() -> None:
        if not hasattr(local, "client"):
            local.client = Client(stack.url, stack.key)
        one_job(local.client, data, stop, finished)

    started = time.monotonic()
    window = (started + warmup, started + warmup + seconds)
    submitted_in_window = 0
    with ThreadPoolExecutor(256, thread_name_prefix="open-loop") as pool:
        next_at = started
        while next_at < window[1]:
            if next_at >= window[0] and not submitted_in_window:
                worker.read()  # the warm-up's
            time.sleep(max(0.0, next_at - time.monotonic()))
            pool.submit(submit)
            submitted_in_window += next_at >= window[0]
            next_at += rng.expovariate(rate)
        time.sleep(max(0.0, window[1] - time.monotonic()))
        batches = worker.read()
        stop.set()
        with Client(stack.url, stack.key) as client:
            finished.cancel_the_rest(client)
    return OpenLoop(finished.rate(*window), submitted_in_window / seconds, finished.latencies_from(*window), batches)


def low_load(stack: LocalStack, data: bytes, jobs: int) -> tuple[list[float], dict[str, float]]:
    """Latencies of jobs sent one at a time, a second apart (the model idle when each comes), and the median
    of each stage of their timings (ms)."""
    drain(stack, data)
    finished, stop, stages = Finished(), threading.Event(), []
    with Client(stack.url, stack.key) as client:
        for _ in range(jobs):
            time.sleep(1.0)
            job = one_job(client, data, stop, finished)
            if job is not None and job.timings is not None:
                stages.append(job.timings.model_dump())
    medians = {name: statistics.median(s[name] or 0.0 for s in stages) for name in stages[0]} if stages else {}
    return finished.latencies_from(0.0, float("inf")), medians


@dataclass
class ModelPath:
    """The captioner in this process, timed at the start (best of --repeats rounds) and again between the service's
    scenarios, while the worker is idle: on a shared machine whose speed moves by 10-20% within minutes, a scenario
    is compared with the model path measured just before and just after it."""

    in_batches: dict[int, Side]  # by batch size: the worker's, and each --clients below it
    pipeline: Side  # the fp32 pipeline, one image at a time
    rates: dict[int, float]  # images/s by batch size, at the start
    pipeline_rate: float  # the pipeline's, at the start
    alone_s: float  # the captioner's seconds for one image alone

    @property
    def sizes(self) -> list[int]:
        return list(self.in_batches)

    def now(self) -> tuple[dict[int, float], float]:
        """Images/s of one round of each batch size, and of the pipeline."""
        return {size: one_round(side) for size, side in self.in_batches.items()}, one_round(self.pipeline)


def one_round(side: Side) -> float:
    started = time.perf_counter()
    side.run()
    return side.count / (time.perf_counter() - started)


def model_path(model_dir: Path, args: argparse.Namespace, batch_size: int) -> ModelPath:
    """Images/s of the captioner by batch size (the worker's, and each --clients below it: the most that many
    closed-loop clients can put in one batch), of the fp32 pipeline one at a time, and the captioner's seconds for
    one image alone."""
    device = pick_device("cpu")
    images = [photo(640, 480, seed) for seed in range(2 * batch_size)]
    ours = BlipCaptioner.load(str(model_dir), "cpu", args.dtype)
    baseline = transformers_pipeline(model_dir, device, torch.float32)

    def run_ours(imgs: Sequence[object], size: int) -> None:
        for batch in batches(imgs, size):
            ours.caption(batch, None, GENERATION)

    def run_in(size: int) -> Side:
        return Side(f"captioner ({args.dtype}: {ours.dtype}), batches of {size}", len(images),
                    partial(run_ours, images, size), partial(run_ours, images[:size], size))

    alone = images[:1]
    sizes = sorted({batch_size, *(clients for clients in args.clients if clients < batch_size)}, reverse=True)
    print(f"model path, {args.beams} beam(s), {args.new_tokens} new tokens:", flush=True)
    in_batches = {size: run_in(size) for size in sizes}
    pipeline = Side("pipeline('image-text-to-text') in fp32, one at a time", args.baseline_images,
                    partial(caption_one_at_a_time, baseline, images[: args.baseline_images], GENERATION),
                    partial(caption_one_at_a_time, baseline, alone, GENERATION))
    *rates, alone_rate, base_rate = measure([
        *in_batches.values(),
        Side(f"captioner ({args.dtype}: {ours.dtype}), one image alone", 1, partial(run_ours, alone, 1),
             partial(run_ours, alone, 1)),
        pipeline,
    ], args.repeats)
    print(f"  captioner {rates[0] / base_rate:.2f}x the fp32 pipeline", flush=True)
    return ModelPath(in_batches, pipeline, dict(zip(sizes, rates, strict=True)), base_rate, 1 / alone_rate)


def drain(stack: LocalStack, data: bytes) -> None:
    """Send one job and wait for it: what the worker still held from the scenario before is done by then (a job
    canceled once its image is in a batch is still captioned)."""
    with Client(stack.url, stack.key) as client:
        one_job(client, data, threading.Event(), Finished())


def service(model_dir: Path, args: argparse.Namespace, model: ModelPath) -> None:
    batch_size = max(model.sizes)
    data = jpeg(photo(640, 480, 99))
    threads = max(args.clients, default=0) + 32  # a long-polling client holds an API thread
    with local_stack(model=str(model_dir), dtype=args.dtype, torch_threads=0,
                     api_threads=-(-threads // 2)) as stack:
        for _ in range(2):  # the worker's first batches pay for kernels' first runs
            drain(stack, data)
        before = model.now()

        def around() -> tuple[dict[int, float], float, str]:
            """The model path (by batch size) and the pipeline, images/s, as the mean of one round just before the
            scenario and one just after (the worker idle then), and the rounds themselves."""
            nonlocal before
            drain(stack, data)
            after = model.now()
            rates = {size: (before[0][size] + after[0][size]) / 2 for size in model.sizes}
            rounds = (f"model path in batches of {batch_size}: {before[0][batch_size]:.2f} before, "
                      f"{after[0][batch_size]:.2f} after; pipeline {before[1]:.2f}, {after[1]:.2f}")
            pipeline = (before[1] + after[1]) / 2
            before = after
            return rates, pipeline, rounds

        batches_run = WorkerBatches(stack)
        for clients in args.clients:
            rate, worker = closed_loop(stack, clients, data, warmup=args.warmup, seconds=args.seconds,
                                       worker=batches_run)
            rates, pipeline, rounds = around()
            fillable = (f" ({rate / rates[clients]:.0%} of it in batches of {clients}, the most {clients} clients "
                        "can fill)" if clients in rates and clients != batch_size else "")
            print(f"service, {clients} closed-loop clients: {rate:.2f} images/s = {rate / rates[batch_size]:.0%} of "
                  f"the model path{fillable}, {rate / pipeline:.2f}x the pipeline", flush=True)
            print(f"  around it: {rounds}", flush=True)
            print(f"  worker, in the window: {worker}", flush=True)
        for fraction in args.rates:
            offered = fraction * model.rates[batch_size]
            loop = open_loop(stack, offered, data, warmup=args.warmup, seconds=args.seconds, worker=batches_run)
            rates, pipeline, rounds = around()
            spread = (f"latency p50 {percentile(loop.latencies, 0.5):.2f} s, p90 {percentile(loop.latencies, 0.9):.2f}"
                      f" s ({len(loop.latencies)} jobs)" if loop.latencies else "no job finished")
            print(f"service, open loop at {fraction:g} x the model path's start ({offered:.2f} jobs/s; "
                  f"{loop.offered:.2f} submitted a second in the window = {loop.offered / rates[batch_size]:.0%} of "
                  f"the model path around it): {loop.done:.2f} images/s = {loop.done / rates[batch_size]:.0%} of the "
                  f"model path, {loop.done / pipeline:.2f}x the pipeline; {spread}", flush=True)
            print(f"  around it: {rounds}", flush=True)
            print(f"  worker, in the window: {loop.batches}", flush=True)
        latencies, stages = low_load(stack, data, args.idle_jobs)
        print(f"service, low load (one job at a time): latency p50 {statistics.median(latencies):.2f} s, "
              f"max {max(latencies):.2f} s; one image alone on the model {model.alone_s:.2f} s", flush=True)
        print("  stage medians (ms): " + ", ".join(f"{name.removesuffix('_ms')} {ms:.0f}"
                                                  for name, ms in stages.items()), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="CAPTIONER_DTYPE of both sides")
    parser.add_argument("--clients", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--rates", type=float, nargs="*", default=[0.8, 1.2],
                        help="open-loop rates, as shares of the model path's images/s")
    parser.add_argument("--seconds", type=float, default=60, help="measured time of each scenario")
    parser.add_argument("--warmup", type=float, default=20, help="time before each scenario's measurement")
    parser.add_argument("--idle-jobs", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--beams", type=int, default=1, help="num_beams of every job (1: greedy)")
    parser.add_argument("--baseline-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the model path, best kept")
    args = parser.parse_args(argv)
    GENERATION.update(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, num_beams=args.beams)
    device = pick_device("cpu")
    batch_size = automatic_batch_size(device)
    print(f"date {date.today()}, {os.cpu_count()} CPUs: {cpu_description()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; BLIP-base, dtype {args.dtype} ({pick_dtype(device, args.dtype)}), "
          f"batches of {batch_size}", flush=True)
    started = time.perf_counter()
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "blip-base-random"
        build_blip_base(model_dir)
        model = model_path(model_dir, args, batch_size)
        gc.collect()  # what the first measurement left, before the worker loads its model
        service(model_dir, args, model)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
