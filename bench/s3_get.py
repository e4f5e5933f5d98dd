"""What one S3 GET costs the worker's process in CPU, by the way it is made.

    python -m bench.s3_get [--requests 400]

Starts weed (S3) on a free loopback port, stores objects of 5 KB, 100 KB and 1 MB, and prints the CPU time of
this process per GET: through the service's own ObjectStorage (boto3), and as a presigned URL fetched with
urllib3 (the presigning and the GET apart). Nearly all of it is Python, under the GIL: on a GPU worker, time the
thread that launches the model's kernels waits for, once per image of a bulk job.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import version
from pathlib import Path

import boto3
import urllib3
from botocore.config import Config

from bench.stack import ACCESS_KEY, SECRET_KEY
from cli.processes import free_ports, s3_process
from common.settings import Settings
from common.storage import ObjectStorage

SIZES = (5_000, 100_000, 1_000_000)


def cpu_ms(run: Callable[[], object], count: int) -> float:
    for _ in range(min(30, count)):  # warm: connections open, caches filled
        run()
    started = time.process_time()
    for _ in range(count):
        run()
    return (time.process_time() - started) / count * 1000


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="GETs per figure")
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, python "
          f"{platform.python_version()}, boto3 {boto3.__version__}, urllib3 {version('urllib3')}; CPU of this "
          f"process per GET, {args.requests} GETs each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        (port,) = free_ports(1)
        weed = s3_process(Path(tmp) / "s3", port, Path(tmp) / "s3.log", ACCESS_KEY, SECRET_KEY).start()
        try:
            weed.wait_ready(60)
            settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{port}", s3_bucket="bench",
                                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
            storage = ObjectStorage.from_settings(settings)
            storage.ensure_bucket()
            client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                                  aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                  config=Config(s3={"addressing_style": "path"}))
            http = urllib3.PoolManager()
            for size in SIZES:
                key = f"object-{size}"
                client.put_object(Bucket="bench", Key=key, Body=os.urandom(size))
                url = client.generate_presigned_url("get_object", Params={"Bucket": "bench", "Key": key})
                boto = cpu_ms(partial(storage.get, key, 10 * max(SIZES)), args.requests)
                presign = cpu_ms(partial(client.generate_presigned_url, "get_object",
                                         Params={"Bucket": "bench", "Key": key}), args.requests)
                fetch = cpu_ms(partial(http.request, "GET", url), args.requests)
                print(f"  {size / 1000:>6g} KB: ObjectStorage.get (boto3) {boto:.3f} ms; presigned URL {presign:.3f} "
                      f"ms + urllib3 GET {fetch:.3f} ms = {presign + fetch:.3f} ms", flush=True)
        finally:
            weed.stop()


if __name__ == "__main__":
    main()
