"""What CAPTIONER_REDIS_WAIT_REPLICAS costs a submission: one client sends POST /v1/jobs (one small image, no ?wait)
to two APIs on one Redis Sentinel group (a primary, a replica, three sentinels) and one worker, the one API waiting
for the replica's acknowledgement (WAIT) before its 202 and the other not, alternating in rounds; it reports each
one's p50, p99 and mean answer time. Then, as the difference drowns in a shared machine's noise, the WAIT alone:
the round trip ReplicaWait adds after a write like a submission's turn.

    python -m bench.replica_wait [--rounds 6] [--per-round 300]

Everything runs on this machine, so the replica is a loopback hop away: a replica across a network adds its round
trip to every submission.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from bench.stack import ROOT, LocalStack, sentinel_stack
from cli.processes import ManagedProcess, free_ports
from common.redis_client import service_redis
from common.replication import ReplicaWait
from tests.fixtures.shapes import Scene, render


def image() -> bytes:
    buffer = io.BytesIO()
    render(Scene("circle", "red", "blue"), (64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def waiting_api(stack: LocalStack, log: Path) -> tuple[ManagedProcess, str]:
    """A second API on the same Redis and S3, which waits for one replica."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    settings = stack.settings.model_copy(update={"redis_wait_replicas": 1})
    env = settings.child_env(os.environ) | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    api = ManagedProcess("api-wait", [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port",
                                      str(port)], log, env=env, cwd=ROOT,
                         ready=lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200)
    return api, url


def submit_times(session: requests.Session, url: str, data: bytes, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.post(f"{url}/v1/jobs", files={"images": ("x.png", data, "image/png")}, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 202, response.text
    return times


def wait_times(stack: LocalStack, count: int) -> list[float]:
    writer, waiter = service_redis(stack.settings), service_redis(stack.settings)
    wait = ReplicaWait(waiter, replicas=1, timeout_ms=1000)
    times = []
    for _ in range(count):
        writer.lpush("bench:replica-wait", "x" * 600)
        started = time.perf_counter()
        assert wait.wait() == 1
        times.append((time.perf_counter() - started) * 1000)
    writer.delete("bench:replica-wait")
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, values: list[float]) -> str:
    return (f"{label:<12} p50 {percentile(values, 0.5):6.2f} ms   p99 {percentile(values, 0.99):6.2f} ms   "
            f"mean {statistics.mean(values):6.2f} ms   ({len(values)} submissions)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=300, help="submissions to each API per round")
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"python {platform.python_version()}; one client, sequential POST /v1/jobs of a 64x64 PNG")
    data = image()
    with sentinel_stack(redis_wait_replicas=0) as stack:
        api, wait_url = waiting_api(stack, Path(stack.api.log_path).with_name("api-wait.log"))
        try:
            api.start().wait_ready(60)
            session = stack.session()
            submit_times(session, stack.url, data, 20)  # warm up: connections, first requests
            submit_times(session, wait_url, data, 20)
            results: dict[str, list[float]] = {"no WAIT": [], "WAIT 1": []}
            for n in range(args.rounds):
                # Alternate which goes first, so that neither always follows the other's backlog.
                order = [("no WAIT", stack.url), ("WAIT 1", wait_url)]
                for label, url in order if n % 2 == 0 else reversed(order):
                    times = submit_times(session, url, data, args.per_round)
                    results[label] += times
                    print(f"round {n + 1} " + line(label, times), flush=True)
            print("all rounds:")
            for label, times in results.items():
                print("  " + line(label, times))
            print("the WAIT alone, after a 600-byte LPUSH on another connection:")
            print("  " + line("WAIT 1", wait_times(stack, args.rounds * args.per_round)))
        finally:
            api.stop()


if __name__ == "__main__":
    main()
