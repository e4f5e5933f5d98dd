"""What the workers' reapers cost Redis as workers grow: every worker runs the fair queue's reclaim every 2 s
(worker/jobs/recovery.py), a script that reads every turn held and every worker's report, so together they cost
workers x (workers + turns held) / 2 s. Times one reclaim on a local redis-server for a few sizes.

    .venv/bin/python -m bench.reclaim
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from cli.processes import free_ports, redis_process
from common.fairqueue import _HOLDERS, FairQueue
from common.workers import WorkerRegistry
from worker.jobs.recovery import RECLAIM_EVERY_S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10x512", "50x512", "100x512", "100x64", "200x64"],
                        help="WORKERSxTURNS_HELD_EACH (a busy GPU worker holds up to its concurrency: 512)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-reclaim-"))
    [port] = free_ports(1)
    server = redis_process(root, port, root / "redis.log").start()
    try:
        server.wait_ready(30)
        client = redis.Redis(port=port, decode_responses=True)
        queue, registry = FairQueue(client, 3600, 3), WorkerRegistry(client)
        for size in args.sizes:
            workers, held = (int(part) for part in size.split("x"))
            client.flushall()
            names = [f"captioner-1@pod-{i}" for i in range(workers)]
            for name in names:
                queue.join(name)
                registry.report(name, "ready", 600)
            client.hset(_HOLDERS, mapping={f"turn-{i}-{j}": name for i, name in enumerate(names) for j in range(held)})
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                queue.reclaim()
                runs.append(time.perf_counter() - started)
            best = min(runs)
            print(f"{workers:4d} workers x {held:4d} turns held: one reclaim {best * 1000:6.1f} ms; all reapers "
                  f"together {best * workers / RECLAIM_EVERY_S * 1000:6.0f} ms of Redis per second")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
