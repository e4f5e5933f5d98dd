"""Bulk benchmark: caption buckets of 1,000 and 10,000 small images on a local stack with the tiny model.

    python -m bench.bulk [--sizes 1000 10000] [--s3-latency-ms 30] [--fetch-threads 8 32] [--batches]

Starts redis-server, weed (S3), the API (gunicorn) and one worker on free loopback ports, fills a bucket with
synthetic PNG/JPEG images (40-200 px), runs one bulk job per size and reports images/s and the peak resident
memory (RSS, summed over each process tree) of the API and the worker while it ran. Memory should not grow
with the bucket: listing is paged, chunks are queued a window at a time, and results go straight to S3.

A local S3 answers in a millisecond; a real one in tens. `--s3-latency-ms` delays every S3 answer by that much
(bench/latency.py), and `--fetch-threads` runs a stack per value of CAPTIONER_BULK_FETCH_THREADS, which bounds
how many objects a worker fetches at once: with S3's latency, that bound sets the images/s.

`--batches` also runs each size as an OpenAI-style batch (/v1/files, then /v1/batches) of the same images as
`data:` URIs, on the same stack: the input file's upload and the batch's run are timed apart.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import platform
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from bench.stack import LocalStack, cpu_seconds, local_stack, process_tree, rss_mb
from tests.fixtures.shapes import random_scene, render

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class PeakSampler:
    """Samples the RSS of some process trees every 0.1 s and keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self.peaks = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, pid in self._pids.items():
                self.peaks[name] = max(self.peaks[name], rss_mb(process_tree(pid)))


def image(rng: random.Random, index: int) -> bytes:
    buffer = io.BytesIO()
    size = (rng.randrange(40, 200), rng.randrange(40, 200))
    render(random_scene(rng), size, rng).save(buffer, format="PNG" if index % 2 else "JPEG")
    return buffer.getvalue()


def fill(s3: S3Client, bucket: str, prefix: str, count: int) -> None:
    rng = random.Random(count)
    blobs = [image(rng, i) for i in range(64)]  # distinct content is not needed for speed; keys are
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(
            Bucket=bucket, Key=f"{prefix}{i:06d}.{'png' if i % 2 else 'jpg'}", Body=blobs[i % 64]), range(count)))


def batch_file(count: int, model: str) -> bytes:
    """An input file of `count` chat completion requests, each holding one image of `fill`'s as a data: URI."""
    rng = random.Random(count)
    uris = [f"data:image/png;base64,{base64.b64encode(image(rng, i)).decode()}" for i in range(64)]
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": model, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uris[i % 64]}}]}]}}) + "\n" for i in range(count)).encode()


def run_batch(stack: LocalStack, content: bytes) -> tuple[float, dict[str, object]]:
    """Upload the input file and run its batch: the upload's seconds, and the batch when it ended."""
    session, url = stack.session(), stack.url
    started_at = time.monotonic()
    uploaded = session.post(f"{url}/v1/files", files={"file": ("requests.jsonl", content)},
                            data={"purpose": "batch"}, timeout=300).json()
    upload_s = time.monotonic() - started_at
    batch = session.post(f"{url}/v1/batches", json={"input_file_id": uploaded["id"], "completion_window": "24h",
                                                     "endpoint": "/v1/chat/completions"}, timeout=30).json()
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.2)
        batch = session.get(f"{url}/v1/batches/{batch['id']}", timeout=30).json()
    return upload_s, dict(batch)


def run_bulk(stack: LocalStack, bucket: str, prefix: str) -> dict[str, object]:
    session, url = stack.session(), stack.url
    job = session.post(f"{url}/v1/bulk", json={"source": {"bucket": bucket, "prefix": prefix}}, timeout=30).json()
    while job["status"] in ("queued", "running"):
        time.sleep(0.2)
        job = session.get(f"{url}/v1/bulk/{job['id']}", timeout=30).json()
    return dict(job)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--s3-latency-ms", type=float, default=0.0)
    parser.add_argument("--fetch-threads", type=int, nargs="*", default=[],
                        help="CAPTIONER_BULK_FETCH_THREADS values, a stack each (default: the setting's default)")
    parser.add_argument("--decode-processes", type=int, nargs="*", default=[0],
                        help="CAPTIONER_DECODE_PROCESSES values, a stack each (processes fetch bulk objects too)")
    parser.add_argument("--batches", action="store_true", help="each size as an OpenAI-style batch too")
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"python {platform.python_version()}; tiny model, batch size {args.batch_size}, S3 latency "
          f"{args.s3_latency_ms:g} ms")
    for threads, processes in itertools.product(args.fetch_threads or [None], args.decode_processes):
        overrides: dict[str, object] = {"decode_processes": processes}
        if threads:
            overrides["bulk_fetch_threads"] = threads
        with local_stack(args.s3_latency_ms / 1000, batch_size=args.batch_size, **overrides) as stack:
            print(f"fetch threads {stack.settings.bulk_fetch_threads}, decoding processes {processes}:", flush=True)
            run_sizes(stack, args.sizes, args.batches)


def run_sizes(stack: LocalStack, sizes: Sequence[int], batches: bool) -> None:
    s3 = stack.s3()
    s3.create_bucket(Bucket="bench")
    print(f"{'objects':>8} {'seconds':>8} {'images/s':>9} {'API peak MiB':>13} {'worker peak MiB':>16} "
          f"{'worker process CPU ms/image':>28}")
    for size in sizes:
        prefix = f"n{size}/"
        fill(s3, "bench", prefix, size)
        # The worker's own process only, not its decoding processes: its CPU is what a GPU's thread competes for.
        cpu_before = cpu_seconds({stack.worker.pid})
        with PeakSampler({"api": stack.api.pid, "worker": stack.worker.pid}) as sampler:
            started_at = time.monotonic()
            job = run_bulk(stack, "bench", prefix)
            seconds = time.monotonic() - started_at
        cpu_ms = (cpu_seconds({stack.worker.pid}) - cpu_before) / size * 1000
        progress = job["progress"]
        assert isinstance(progress, dict) and progress["captioned"] == size, job
        print(f"{size:>8} {seconds:>8.1f} {size / seconds:>9.1f} {sampler.peaks['api']:>13.0f} "
              f"{sampler.peaks['worker']:>16.0f} {cpu_ms:>28.2f}", flush=True)
        if batches:
            run_batch_size(stack, size)


def run_batch_size(stack: LocalStack, size: int) -> None:
    content = batch_file(size, stack.settings.served_model_id)
    cpu_before = cpu_seconds({stack.worker.pid})
    with PeakSampler({"api": stack.api.pid, "worker": stack.worker.pid}) as sampler:
        started_at = time.monotonic()
        upload_s, batch = run_batch(stack, content)
        seconds = time.monotonic() - started_at - upload_s
    cpu_ms = (cpu_seconds({stack.worker.pid}) - cpu_before) / size * 1000
    counts = batch["request_counts"]
    assert batch["status"] == "completed" and isinstance(counts, dict) and counts["completed"] == size, batch
    print(f"{size:>8} {seconds:>8.1f} {size / seconds:>9.1f} {sampler.peaks['api']:>13.0f} "
          f"{sampler.peaks['worker']:>16.0f} {cpu_ms:>28.2f}   as a batch: a {len(content) / 2**20:.1f} MiB input "
          f"file, uploaded in {upload_s:.1f} s", flush=True)


if __name__ == "__main__":
    main()
