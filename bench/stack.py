"""A local stack for benchmarks: redis-server (or a Sentinel group), weed (S3), the API and one worker on free loopback
ports."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import requests
from botocore.config import Config

from bench.latency import delayed
from cli.processes import ManagedProcess, free_ports, redis_process, s3_process
from common.redis_client import service_redis
from common.settings import Settings
from common.tenants import KeyLimits, TenantStore
from tests.sentinels import sentinel_group

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"
ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "tests" / "fixtures" / "tiny_blip"
# The bench's key: any bucket, and limits the benches never reach (they measure the service, not the limits).
UNLIMITED = KeyLimits(("*",), rate_limit="1000000/minute", max_in_flight=1_000_000)


@dataclass(frozen=True)
class LocalStack:
    url: str
    settings: Settings
    api: ManagedProcess
    worker: ManagedProcess
    key: str  # an API key, any bulk bucket: the benches measure the service with keys on

    def session(self) -> requests.Session:
        """An HTTP session that sends the stack's key."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session

    def s3(self) -> S3Client:
        return boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))


def local_stack(s3_latency_s: float = 0.0, **overrides: object) -> AbstractContextManager[LocalStack]:
    """Everything started, ready, and stopped by PID at the end; `overrides` are Settings fields. With
    `s3_latency_s`, every S3 answer reaches the service (and the bench's own client) that much later."""
    return _stack(s3_latency_s, False, overrides)


def sentinel_stack(**overrides: object) -> AbstractContextManager[LocalStack]:
    """local_stack with Redis as a primary, a replica and three sentinels (tests/sentinels.py), which the service
    follows."""
    return _stack(0.0, True, overrides)


@contextmanager
def _stack(s3_latency_s: float, sentinel: bool, overrides: dict[str, object]) -> Iterator[LocalStack]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as contexts:
        root = Path(tmp)
        redis_port, s3_port, api_port = free_ports(3)
        started: list[ManagedProcess] = [
            s3_process(root / "s3", s3_port, root / "s3.log", ACCESS_KEY, SECRET_KEY).start(),
        ]
        try:
            redis_settings: dict[str, object] = {"redis_url": f"redis://127.0.0.1:{redis_port}/0"}
            if sentinel:
                group = contexts.enter_context(sentinel_group(root / "redis"))
                redis_settings = {"redis_url": f"redis://127.0.0.1:{group.primary_port()}/0",
                                  "redis_sentinels": group.addresses}
            else:
                started.append(redis_process(root / "redis", redis_port, root / "redis.log").start())
                started[-1].wait_ready(30)
            started[0].wait_ready(60)
            if s3_latency_s:
                s3_port = contexts.enter_context(delayed(s3_port, s3_latency_s))
            values: dict[str, object] = {
                **redis_settings, "s3_endpoint_url": f"http://127.0.0.1:{s3_port}",
                "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, "model": str(TINY_MODEL),
                "device": "cpu", **overrides,
            }
            settings = Settings(**values)  # type: ignore[arg-type]
            # This shell's environment (MALLOC_ARENA_MAX, ONEDNN_*, ... reach the services), less the service's
            # own settings, which come from `settings` alone.
            env = settings.child_env(os.environ) | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
            url = f"http://127.0.0.1:{api_port}"
            me = [sys.executable, "-m", "cli.main"]
            worker_log = root / "worker.log"
            api = ManagedProcess("api", [*me, "api", "--host", "127.0.0.1", "--port", str(api_port)],
                                 root / "api.log", env=env, cwd=ROOT,
                                 ready=lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200)
            worker = ManagedProcess("worker", [*me, "worker"], worker_log, env=env,
                                    cwd=ROOT, ready=lambda: " ready." in worker_log.read_text(errors="replace"))
            key = TenantStore(service_redis(settings)).create_key("bench", limits=UNLIMITED).key
            started += [api.start(), worker.start()]
            api.wait_ready(60)
            worker.wait_ready(120)
            yield LocalStack(url, settings, api, worker, key)
        finally:
            for process in reversed(started):
                process.stop()


def process_tree(pid: int) -> set[int]:
    """A process and all its descendants, from /proc."""
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
    return tree


def cpu_seconds(pids: set[int]) -> float:
    """User plus system CPU time these processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024
