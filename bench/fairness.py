"""Fairness between tenants: what one tenant's full in-flight cap costs another tenant's single images.

    python -m bench.fairness [--jobs 40] [--heavy-cap 256] [--heavy-job-images 16] [--rounds 3]

Tenant B submits single-image jobs one after another (POST ?wait=30) and times each from submit to result:
first on an idle service, then while tenant A keeps its in-flight cap (--heavy-cap images) full with 16-image
jobs (--heavy-job-images). Reports B's p50 and p90 in both, their ratio, and the stage times the service
reports; the issue's bound is loaded p50 <= 2 x idle p50 plus the batching window.
tests/integration/test_fairness.py runs `measure` on the test stack with the same bound.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from PIL import Image

from common.admission import Admission
from common.tenants import KeyLimits, TenantStore


def png(seed: int, side: int = 64) -> bytes:
    """A small image, different for every seed."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


STAGES = ("queue_ms", "fetch_decode_ms", "batch_wait_ms", "model_ms", "record_ms")


@dataclass(frozen=True)
class Timed:
    """B's jobs: submit-to-result latencies, and the stage times the service reports for each (ms)."""

    latencies_ms: list[float]
    stages: list[dict[str, float]]

    def stage_medians(self) -> str:
        return " ".join(f"{stage.removesuffix('_ms')} {statistics.median(s.get(stage) or 0 for s in self.stages):.1f}"
                        for stage in STAGES)


@dataclass(frozen=True)
class Fairness:
    idle: Timed
    loaded: Timed
    heavy_in_flight: list[int]  # tenant A's images queued or running, sampled at each of B's submissions

    @property
    def idle_ms(self) -> list[float]:
        return self.idle.latencies_ms

    @property
    def loaded_ms(self) -> list[float]:
        return self.loaded.latencies_ms

    @staticmethod
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        idle, loaded = statistics.median(self.idle_ms), statistics.median(self.loaded_ms)
        return (f"B alone: p50 {idle:.1f} ms, p90 {self.p(self.idle_ms, 0.9):.1f} ms | beside A: p50 {loaded:.1f} "
                f"ms, p90 {self.p(self.loaded_ms, 0.9):.1f} ms | p50 ratio {loaded / idle:.2f} | A's images in "
                f"flight at B's submits: median {statistics.median(self.heavy_in_flight):.0f}\n"
                f"  stage medians (ms), alone: {self.idle.stage_medians()}\n"
                f"  stage medians (ms), beside A: {self.loaded.stage_medians()}")


def timed_single_jobs(url: str, key: str, count: int, seed: int) -> Timed:
    """Submit `count` single-image jobs one after another, each waiting for its end."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    latencies, stages = [], []
    for i in range(count):
        files = [("images", ("b.png", png(seed + i), "image/png"))]
        started = time.perf_counter()
        response = session.post(f"{url}/v1/jobs?wait=30", files=files, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        job = response.json()
        if response.status_code != 200 or job["status"] != "succeeded":
            raise RuntimeError(f"B's job did not succeed: {response.status_code} {job}")
        latencies.append(elapsed)
        stages.append(job.get("timings") or {})
    return Timed(latencies, stages)


@contextmanager
def heavy_tenant(url: str, key: str, cap: int, job_images: int, in_flight: Callable[[], int]) -> Iterator[None]:
    """Tenant A, keeping its in-flight cap full of `job_images`-image jobs while the block runs: a submission is
    made whenever there is room for one (a 429 too_many_in_flight means there is none yet)."""
    stop = threading.Event()
    images = [("images", (f"{i}.png", png(1000 + i), "image/png")) for i in range(job_images)]

    def fill() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        while not stop.is_set():
            if in_flight() + job_images > cap:
                stop.wait(0.01)
                continue
            response = session.post(f"{url}/v1/jobs", files=images, timeout=60)
            if response.status_code == 429:
                stop.wait(0.01)
            elif response.status_code != 202:
                raise RuntimeError(f"A's job was refused: {response.status_code} {response.text}")

    # Enough submitters to keep the cap full of small jobs too (the service finishes them as fast as they come).
    threads = [threading.Thread(target=fill, daemon=True) for _ in range(max(2, 32 // job_images))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while in_flight() + job_images <= cap and time.monotonic() < deadline:
        time.sleep(0.05)  # until the cap is full
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def measure(url: str, redis_url: str, *, jobs: int, heavy_cap: int, heavy_job_images: int = 16) -> Fairness:
    """B's latencies alone, then beside A at its cap, with two new tenants' keys on this stack."""
    tenants = TenantStore.from_url(redis_url)
    suffix = os.urandom(4).hex()
    light = tenants.create_key(f"light-{suffix}", limits=KeyLimits(rate_limit="1000000/minute")).key
    heavy = tenants.create_key(f"heavy-{suffix}", limits=KeyLimits(
        rate_limit="1000000/minute", max_in_flight=heavy_cap))
    admission = Admission.from_url(redis_url)

    def heavy_in_flight() -> int:
        return admission.in_flight(heavy.record.key_id)

    timed_single_jobs(url, light, 5, seed=0)  # warm both paths
    idle = timed_single_jobs(url, light, jobs, seed=100)
    samples: list[int] = []
    loaded = Timed([], [])
    with heavy_tenant(url, heavy.key, heavy_cap, heavy_job_images, heavy_in_flight):
        for i in range(jobs):
            samples.append(heavy_in_flight())
            one = timed_single_jobs(url, light, 1, seed=200 + i)
            loaded.latencies_ms.extend(one.latencies_ms)
            loaded.stages.extend(one.stages)
    return Fairness(idle, loaded, samples)


def main(argv: Sequence[str] | None = None) -> None:
    from bench.stack import local_stack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40, help="B's single-image jobs, idle and loaded each")
    parser.add_argument("--heavy-cap", type=int, default=256, help="A's in-flight cap (images)")
    parser.add_argument("--heavy-job-images", type=int, default=16, help="images in each of A's jobs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; tiny model, batch 16, window 20 ms; "
          f"A: {args.heavy_job_images}-image jobs up to {args.heavy_cap} images in flight")
    with local_stack(batch_size=16, batch_wait_ms=20) as stack:
        for round_ in range(args.rounds):
            result = measure(stack.url, stack.settings.redis_url, jobs=args.jobs, heavy_cap=args.heavy_cap,
                             heavy_job_images=args.heavy_job_images)
            print(f"round {round_ + 1}: {result.summary()}", flush=True)


if __name__ == "__main__":
    main()
