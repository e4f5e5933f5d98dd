"""Bulk benchmark: caption buckets of 1,000 and 10,000 small images on a local stack with the tiny model.

    python -m bench.bulk [--sizes 1000 10000] [--model tests/fixtures/tiny_blip]

Starts redis-server, weed (S3), the API (gunicorn) and one worker on free loopback ports, fills a bucket with
synthetic PNG/JPEG images (40-200 px), runs one bulk job per size and reports images/s and the peak resident
memory (RSS, summed over each process tree) of the API and the worker while it ran. Memory should not grow
with the bucket: listing is paged, chunks are queued a window at a time, and results go straight to S3.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import requests
from botocore.config import Config

from cli.processes import ManagedProcess, free_ports, redis_process, s3_process
from common.settings import Settings
from tests.fixtures.shapes import random_scene, render

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"
ROOT = Path(__file__).resolve().parents[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    total = 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


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
                self.peaks[name] = max(self.peaks[name], tree_rss_mb(pid))


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


def run_bulk(url: str, bucket: str, prefix: str) -> dict[str, object]:
    job = requests.post(f"{url}/v1/bulk", json={"source": {"bucket": bucket, "prefix": prefix}}, timeout=30).json()
    while job["status"] in ("queued", "running"):
        time.sleep(0.2)
        job = requests.get(f"{url}/v1/bulk/{job['id']}", timeout=30).json()
    return dict(job)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "tiny_blip"))
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"python {platform.python_version()}; model {args.model}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis_port, s3_port, api_port = free_ports(3)
        redis = redis_process(root / "redis", redis_port, root / "redis.log").start()
        s3_server = s3_process(root / "s3", s3_port, root / "s3.log", ACCESS_KEY, SECRET_KEY).start()
        started: list[ManagedProcess] = [redis, s3_server]
        try:
            redis.wait_ready(30)
            s3_server.wait_ready(60)
            settings = Settings(
                redis_url=f"redis://127.0.0.1:{redis_port}/0", s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, model=args.model, device="cpu",
                batch_size=args.batch_size,
            )
            env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **settings.to_env()}
            url = f"http://127.0.0.1:{api_port}"
            me = [sys.executable, "-m", "cli.main"]
            api = ManagedProcess("api", [*me, "api", "--host", "127.0.0.1", "--port", str(api_port)],
                                 root / "api.log", env=env, cwd=ROOT,
                                 ready=lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200).start()
            worker_log = root / "worker.log"
            worker = ManagedProcess("worker", [*me, "worker"], worker_log, env=env, cwd=ROOT,
                                    ready=lambda: " ready." in worker_log.read_text(errors="replace")).start()
            started += [api, worker]
            api.wait_ready(60)
            worker.wait_ready(120)
            s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
            s3.create_bucket(Bucket="bench")
            print(f"{'objects':>8} {'seconds':>8} {'images/s':>9} {'API peak MiB':>13} {'worker peak MiB':>16}")
            for size in args.sizes:
                prefix = f"n{size}/"
                fill(s3, "bench", prefix, size)
                with PeakSampler({"api": api.pid, "worker": worker.pid}) as sampler:
                    started_at = time.monotonic()
                    job = run_bulk(url, "bench", prefix)
                    seconds = time.monotonic() - started_at
                progress = job["progress"]
                assert isinstance(progress, dict) and progress["captioned"] == size, job
                print(f"{size:>8} {seconds:>8.1f} {size / seconds:>9.1f} {sampler.peaks['api']:>13.0f} "
                      f"{sampler.peaks['worker']:>16.0f}", flush=True)
        finally:
            for process in reversed(started):
                process.stop()


if __name__ == "__main__":
    main()
