"""Service-path benchmark: single-image jobs from many concurrent clients on the local stack (tiny model).

    python -m bench.service [--clients 32] [--seconds 20] [--api-threads 32] [--torch-threads 1] [--rate 125 ...]
                            [--sentinel [--wait-replicas 1]]

1. Saturation: --clients closed-loop clients, each submitting a one-image job (multipart upload) that waits
   for its end (POST ?wait=30; with --two-requests, a submission then a long-polling GET); reports jobs/s.
2. Half load: an open loop submitting at half that rate (and at each --rate given); reports p50/p99 of
   submit-to-result latency and of the service's own overhead (that latency minus model time and minus the
   batching window actually waited, capped at CAPTIONER_BATCH_WAIT_MS), and the median of each stage: API
   (the submit request), queue (to a worker), fetch+decode, batch wait, model, record, notify (from the
   job's end to the client seeing it).

The clients run on the same machine as the service and take some of its CPU; the figures include that. With
--sentinel, Redis is a primary, a replica and three sentinels; --wait-replicas sets CAPTIONER_REDIS_WAIT_REPLICAS (its
cost shows in the API stage with --two-requests: a submission that waits for its job ends before the WAIT).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from bench.stack import LocalStack, cpu_seconds, local_stack, process_tree, sentinel_stack
from tests.fixtures.shapes import Scene, render

STAGES = ("api", "queue", "fetch_decode", "batch_wait", "model", "record", "notify")


def image() -> bytes:
    buffer = io.BytesIO()
    render(Scene("circle", "red", "blue"), (64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Sample:
    latency_ms: float
    overhead_ms: float
    stages: dict[str, float]


# How clients learn of the result: one submission that waits for it (POST ?wait=30), or a submission and then
# a waiting read (GET ?wait=30). Set by --two-requests.
SUBMIT_PARAMS: dict[str, Any] = {"wait": 30}


def one_job(session: requests.Session, url: str, data: bytes, window_ms: float) -> Sample:
    started = time.time()
    response = session.post(f"{url}/v1/jobs", params=SUBMIT_PARAMS,
                            files={"images": ("x.png", data, "image/png")}, timeout=60)
    submitted = time.time()
    job: dict[str, Any] = response.json()
    while job["status"] not in ("succeeded", "failed", "canceled"):
        job = session.get(f"{url}/v1/jobs/{job['id']}", params={"wait": 30}, timeout=60).json()
    seen = time.time()
    assert job["status"] == "succeeded", job
    timings = job["timings"]
    completed = datetime.fromisoformat(job["completed_at"]).timestamp()
    # A submission that waited ends when the job does: its own share is measured from the job's creation.
    api_ms = (submitted - started) * 1000 if not SUBMIT_PARAMS else (
        datetime.fromisoformat(job["created_at"]).timestamp() - started) * 1000
    stages = {
        "api": api_ms, "queue": timings["queue_ms"],
        "fetch_decode": timings["fetch_decode_ms"], "batch_wait": timings["batch_wait_ms"],
        "model": timings["model_ms"], "record": timings["record_ms"], "notify": max(0.0, (seen - completed) * 1000),
    }
    latency = (seen - started) * 1000
    overhead = latency - timings["model_ms"] - min(timings["batch_wait_ms"], window_ms)
    return Sample(latency, overhead, stages)


def saturate(stack: LocalStack, clients: int, seconds: float, data: bytes) -> float:
    done = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal done
        session = stack.session()
        while time.monotonic() < deadline:
            one_job(session, stack.url, data, stack.settings.batch_wait_ms)
            with lock:
                done += 1

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: client(), range(clients)))
    return done / (time.monotonic() - started)


def open_loop(stack: LocalStack, rate: float, seconds: float, data: bytes) -> list[Sample]:
    """Submit at a fixed rate regardless of answers (arrivals do not wait for earlier jobs)."""
    count = max(1, int(rate * seconds))
    sessions = threading.local()

    def run(index: int, start: float) -> Sample:
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
        if not hasattr(sessions, "session"):
            sessions.session = stack.session()
        return one_job(sessions.session, stack.url, data, stack.settings.batch_wait_ms)

    start = time.monotonic()
    with ThreadPoolExecutor(min(256, max(8, int(rate * 2)))) as pool:
        return list(pool.map(lambda i: run(i, start), range(count)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--api-threads", type=int, default=32, help="CAPTIONER_API_THREADS for the API")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="CAPTIONER_TORCH_THREADS for the worker (1: the tiny model shares 2 cores with the rest)")
    parser.add_argument("--rate", type=float, nargs="*", default=[],
                        help="also run the open loop at these rates (jobs/s), e.g. 125: half the 250 target")
    parser.add_argument("--two-requests", action="store_true",
                        help="submit, then read with GET ?wait=30 (default: one submission with ?wait=30)")
    parser.add_argument("--sentinel", action="store_true", help="Redis as a Sentinel group with one replica")
    parser.add_argument("--wait-replicas", type=int, default=0, help="CAPTIONER_REDIS_WAIT_REPLICAS for the API")
    args = parser.parse_args(argv)
    if args.two_requests:
        SUBMIT_PARAMS.clear()
    print(f"machine: {platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"python {platform.python_version()}; tiny model, one worker ({args.torch_threads} torch threads), "
          f"API 2 processes x {args.api_threads} threads; "
          + ("submit, then GET ?wait=30" if args.two_requests else "POST ?wait=30")
          + (f"; Redis Sentinel, WAIT for {args.wait_replicas} replicas" if args.sentinel else ""))
    data = image()
    stack_of = sentinel_stack if args.sentinel else local_stack
    with stack_of(api_threads=args.api_threads, torch_threads=args.torch_threads,
                  redis_wait_replicas=args.wait_replicas) as stack:
        with ThreadPoolExecutor(4) as pool:  # warm up: first requests pay for connections and model warm-up
            list(pool.map(lambda _: one_job(stack.session(), stack.url, data, 20), range(16)))
        groups = {"API": process_tree(stack.api.pid), "worker": process_tree(stack.worker.pid)}
        groups["Redis + S3"] = process_tree(os.getpid()) - groups["API"] - groups["worker"] - {os.getpid()}
        before, clients_before = {name: cpu_seconds(pids) for name, pids in groups.items()}, time.process_time()
        started = time.monotonic()
        rate = saturate(stack, args.clients, args.seconds, data)
        jobs = rate * (time.monotonic() - started)
        print(f"saturation: {rate:.1f} jobs/s with {args.clients} closed-loop clients over {args.seconds:.0f} s")
        spent = {name: (cpu_seconds(pids) - before[name]) * 1000 / jobs for name, pids in groups.items()}
        spent["clients"] = (time.process_time() - clients_before) * 1000 / jobs
        print("  CPU per job (ms): " + ", ".join(f"{name} {ms:.1f}" for name, ms in spent.items())
              + f"; total {sum(spent.values()):.1f}")
        for load in [rate / 2, *args.rate]:
            report(f"open loop at {load:.1f} jobs/s" + (" (half the saturation rate)" if load == rate / 2 else ""),
                   open_loop(stack, load, args.seconds, data))


def report(title: str, samples: list[Sample]) -> None:
    latency = [s.latency_ms for s in samples]
    overhead = [s.overhead_ms for s in samples]
    print(f"{title}, {len(samples)} jobs:")
    for label, values in (("submit-to-result latency", latency), ("service overhead", overhead)):
        print(f"  {label:<25} p50 {percentile(values, 0.5):7.1f} ms   p99 {percentile(values, 0.99):7.1f} ms")
    print("  stage medians (ms): " + ", ".join(
        f"{stage} {statistics.median(s.stages[stage] for s in samples):.1f}" for stage in STAGES))
    print("  stage p99 (ms):     " + ", ".join(
        f"{stage} {percentile([s.stages[stage] for s in samples], 0.99):.1f}" for stage in STAGES))


if __name__ == "__main__":
    main()
