"""What Redis does per interactive job and per image: commands (top-level and from scripts) and Redis's CPU, on the
local stack (tiny model, one worker), less what the idle service costs it over the same time (workers' reports,
reapers, the broker's polling).

    .venv/bin/python -m bench.redis_per_job --jobs 300 --images 1 16
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import redis

from bench.service import image
from bench.stack import LocalStack, local_stack


def snapshot(client: redis.Redis) -> tuple[Counter[str], float]:
    """Calls per command so far, and Redis's CPU seconds so far."""
    stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
    calls = Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})
    cpu = cast(dict[str, float], client.info("cpu"))
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_jobs(stack: LocalStack, jobs: int, images: int, clients: int) -> None:
    data = image()
    files = [("images", (f"{i}.png", data, "image/png")) for i in range(images)]

    def one(_: int) -> None:
        with stack.session() as session:
            job = session.post(f"{stack.url}/v1/jobs", params={"wait": 30}, files=files, timeout=60).json()
            assert job["status"] == "succeeded", job

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(jobs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16], help="images per job, one round each")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--uploads-to-s3", action="store_true", help="CAPTIONER_REDIS_UPLOAD_MAX_BYTES=0")
    args = parser.parse_args()
    overrides: dict[str, object] = {"torch_threads": 1, "batch_size": 16}
    if args.uploads_to_s3:
        overrides["redis_upload_max_bytes"] = 0
    with local_stack(0.0, **overrides) as stack:
        client = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
        run_jobs(stack, 20, 1, args.clients)  # warm
        calls0, cpu0 = snapshot(client)
        idle_s = 10.0
        time.sleep(idle_s)
        calls1, cpu1 = snapshot(client)
        idle_calls = sum((calls1 - calls0).values()) / idle_s
        idle_cpu = (cpu1 - cpu0) / idle_s
        print(f"idle service: {idle_calls:.0f} commands/s, Redis CPU {idle_cpu * 1000:.1f} ms/s")
        for images in args.images:
            calls0, cpu0 = snapshot(client)
            started = time.perf_counter()
            run_jobs(stack, args.jobs, images, args.clients)
            elapsed = time.perf_counter() - started
            calls1, cpu1 = snapshot(client)
            diff = calls1 - calls0
            total = sum(diff.values()) - idle_calls * elapsed
            scripts = diff["evalsha"] + diff["eval"]
            cpu = (cpu1 - cpu0) - idle_cpu * elapsed
            per = args.jobs
            print(f"{images:3d} image(s) a job, {per} jobs in {elapsed:.1f} s: per job {total / per:.1f} commands "
                  f"({scripts / per:.1f} scripts, {diff['multi'] / per:.1f} MULTI), Redis CPU "
                  f"{cpu / per * 1e6:.0f} us; per image {total / per / images:.1f} commands, "
                  f"{cpu / per / images * 1e6:.0f} us")
            print("   most called, per job: " + ", ".join(
                f"{name} {count / per:.1f}" for name, count in diff.most_common(12)))


if __name__ == "__main__":
    main()
