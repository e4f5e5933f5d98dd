"""The service as deployed, in miniature: gunicorn and a Celery worker as real processes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from captioner.client import Client
from cli.processes import ManagedProcess, free_ports, stop_together
from common.bulk_schemas import BulkJob
from common.redis_client import service_redis
from common.schemas import Job
from common.settings import Settings
from common.tenants import CreatedKey, TenantStore
from tests.conftest import GENEROUS, settings_for

ROOT = Path(__file__).resolve().parents[2]
CAPTIONER = [sys.executable, "-m", "cli.main"]
# The tenant of every stack's key (each stack makes its own key).
TENANT = "tests"
# The Redis database of the stack that the whole run shares (`stack`); every other stack and the unit tests use 0.
SHARED_STACK_DB = 1


def child_env(settings: Settings) -> dict[str, str]:
    """The environment that hands these settings to `captioner api` / `captioner worker`."""
    return settings.child_env(os.environ) | {"CAPTIONER_API_WORKERS": "2", "PYTHONUNBUFFERED": "1"}


def worker_process(settings: Settings, log_path: Path, build: str | None = None) -> ManagedProcess:
    """`captioner worker` on these settings; with `build`, the test build in tests/fixtures/<build>/, whose
    sitecustomize.py Python loads at start (tests/fixtures/README.md)."""
    env = child_env(settings)
    if build is not None:
        env["PYTHONPATH"] = f"{ROOT / 'tests' / 'fixtures' / build}:{ROOT}"
    return ManagedProcess(
        "worker", [*CAPTIONER, "worker"], log_path, env=env, cwd=ROOT,
        ready=lambda: " ready." in log_path.read_text(errors="replace"),
    )


@dataclass
class Stack:
    url: str
    settings: Settings
    api: ManagedProcess
    worker: ManagedProcess
    key: CreatedKey  # of tenant TENANT, any bulk bucket
    # Raw HTTP with the key, for the tests that check the wire itself; everything else goes through `client`.
    http: requests.Session = field(default_factory=requests.Session)
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.http.headers["Authorization"] = f"Bearer {self.key.key}"
        self.client = Client(self.url, self.key.key)

    @property
    def webhook_secret(self) -> str:
        """What signs this stack's webhooks: its tenant's secret."""
        return self.key.webhook_secret

    def wait(self, job_id: str, timeout_s: float = 120) -> Job:
        """The job once it has ended (the client's long poll); on a timeout, the worker's log says why."""
        try:
            return self.client.wait(job_id, timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.worker.log_tail()}") from exc

    def wait_bulk(self, bulk_id: str, timeout_s: float = 240) -> BulkJob:
        try:
            return wait_bulk(self.client, bulk_id, timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.worker.log_tail()}") from exc


def wait_bulk(client: Client, bulk_id: str, timeout_s: float) -> BulkJob:
    """The bulk run once it has ended, read every 0.2 s: a bulk run has no long poll."""
    deadline = time.monotonic() + timeout_s
    while not (run := client.bulk_status(bulk_id)).status.is_terminal():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"bulk run {bulk_id} is still {run.status.value} after {timeout_s:g} s")
        time.sleep(0.2)
    return run


@contextmanager
def running_stack(settings: Settings, logs: Path) -> Iterator[Stack]:
    """gunicorn and one worker on these settings, stopped (by PID) when the block ends."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    api = ManagedProcess(
        "api", [*CAPTIONER, "api", "--host", "127.0.0.1", "--port", str(port)], logs / "api.log",
        env=child_env(settings), cwd=ROOT,
        ready=lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200,
    )
    key = TenantStore(service_redis(settings)).create_key(f"stack-{port}", TENANT, GENEROUS)
    stack = Stack(url, settings, api, worker_process(settings, logs / "worker.log"), key)
    try:
        api.start()
        stack.worker.start()
        api.wait_ready(60)
        stack.worker.wait_ready(120)
        yield stack
    finally:
        stack.client.close()
        stack.http.close()
        stop_together([stack.worker, api])  # a test may have replaced the worker


@pytest.fixture(scope="session")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One API and worker for every test that needs no settings of its own: starting and stopping a stack costs
    about ten seconds, which each module paid again when this was per module. So a test must not assume the worker
    or the tenant is fresh: it reads its own jobs by id, its own log lines (`batch_sizes`), and leaves a running
    worker behind if it replaces one (`stop_together` stops whichever is current).

    It lives until the run ends, so it has a Redis database of its own: on the others' its worker would take the
    work of the stacks that modules start for themselves, and of the unit tests."""
    settings = settings_for(
        services, redis_url=services.redis_url.rsplit("/", 1)[0] + f"/{SHARED_STACK_DB}", batch_size=16,
        batch_wait_ms=50,
        webhook_max_attempts=4, webhook_first_retry_seconds=0.2,
        webhook_max_retry_seconds=2.0, webhook_timeout_seconds=2.0,
        # Below the default, so the tests' uploads (a few KiB to tens of KiB) take both paths: Redis and S3.
        redis_upload_max_bytes=16 * 1024,
    )
    with running_stack(settings, tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def batch_sizes(stack: Stack) -> Callable[[], list[int]]:
    """Sizes of the batches the worker has run since the test began, read from its log."""
    log_path = stack.worker.log_path
    start = log_path.stat().st_size  # the shared worker's earlier batches are other tests'

    def read() -> list[int]:
        with log_path.open("rb") as log:
            log.seek(start)
            lines = log.read().decode(errors="replace").splitlines()
        return [int(line.split("captioned a batch of ")[1].split()[0])
                for line in lines if "captioned a batch of " in line]

    return read
