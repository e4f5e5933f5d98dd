"""The chaos test's parts: a whole stack of its own (Redis, the S3 server, the API, two workers) whose every process
can be killed, stopped or paused; a steady load of jobs and a bulk run, watched from the clients' side; a webhook
receiver that verifies every delivery; and the faults, each timed until the service answers again.
"""

from __future__ import annotations

import http.server
import io
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook

from captioner.client import APIConnectionError, APIError, Client
from cli.processes import ManagedProcess, free_ports, redis_process, s3_process, stop_together
from common.schemas import Job, JobStatus
from common.settings import Settings
from common.tenants import TenantStore
from tests.conftest import GENEROUS, S3_ACCESS_KEY, S3_SECRET_KEY, Services, settings_for
from tests.fixtures.shapes import random_scene, render
from tests.integration.conftest import CAPTIONER, ROOT, TENANT, child_env, worker_process


def png(seed: int, size: tuple[int, int]) -> bytes:
    rng = random.Random(seed)
    buffer = io.BytesIO()
    render(random_scene(rng), size, rng).save(buffer, format="PNG")
    return buffer.getvalue()


class ChaosStack:
    """Its own Redis (append-only, in `root`) and S3 server, so that killing them harms no other test; the API and
    `workers` workers on them. Every process is stopped by its PID when the block that made it ends."""

    client: Client  # of the stack's key, made in start()

    def __init__(self, root: Path, **overrides: object) -> None:
        self.root = root
        self.redis_port, self.s3_port, self.api_port = free_ports(3)
        self.services = Services(f"redis://127.0.0.1:{self.redis_port}/0", f"http://127.0.0.1:{self.s3_port}")
        self.settings: Settings = settings_for(self.services, **overrides)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.redis = self._redis()
        self.s3 = self._s3()
        self.api = ManagedProcess(
            "api", [*CAPTIONER, "api", "--host", "127.0.0.1", "--port", str(self.api_port)], root / "api.log",
            env=child_env(self.settings), cwd=ROOT,
            ready=lambda: requests.get(f"{self.url}/readyz", timeout=1).status_code == 200,
        )
        self.workers: list[ManagedProcess] = []
        self._started = 0
        self.http = requests.Session()  # raw HTTP with the key, where a test checks the wire itself
        self.key = ""
        self.webhook_secret = ""

    def _redis(self) -> ManagedProcess:
        return redis_process(self.root / "redis", self.redis_port, self.root / "redis.log")

    def _s3(self) -> ManagedProcess:
        return s3_process(self.root / "s3", self.s3_port, self.root / "s3.log", S3_ACCESS_KEY, S3_SECRET_KEY)

    def restart_s3(self) -> None:
        """Start the S3 server again, on its port and its data, after it was killed."""
        self.s3 = self._s3().start()
        self.s3.wait_ready(60)

    def start(self, workers: int) -> None:
        self.redis.start()
        self.s3.start()
        self.redis.wait_ready(30)
        self.s3.wait_ready(60)
        key = TenantStore.from_url(self.settings.redis_url).create_key("chaos", TENANT, GENEROUS)
        self.http.headers["Authorization"] = f"Bearer {key.key}"
        self.key, self.webhook_secret = key.key, key.webhook_secret
        self.client = self.new_client()
        self.api.start()
        self.workers = [self.new_worker() for _ in range(workers)]
        self.api.wait_ready(60)
        for worker in self.workers:
            worker.wait_ready(120)

    def new_client(self, timeout_s: float = 30) -> Client:
        """A client of the stack's key that retries nothing: the chaos tests see every answer as it comes."""
        return Client(self.url, self.key, timeout_s=timeout_s, max_retries=0)

    def new_worker(self) -> ManagedProcess:
        self._started += 1
        return worker_process(self.settings, self.root / f"worker-{self._started}.log").start()

    def stop(self) -> None:
        for process in [*self.workers, self.api, self.s3, self.redis]:
            process.signal(signal.SIGCONT)  # a paused process cannot take its SIGTERM
        stop_together([*self.workers, self.api])  # before the services, which they would wait for
        stop_together([self.s3, self.redis])
        self.http.close()
        if hasattr(self, "client"):
            self.client.close()

    def s3_client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.services.s3_endpoint_url, region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    # The faults. Each returns once the fault is over (a restarted process started, a paused one resumed); the
    # supervisor (`supervise`) replaces workers that exit, as `captioner up` or Kubernetes would.

    def kill_worker(self, rng: random.Random) -> None:
        rng.choice(self.workers).kill()

    def stop_worker(self, rng: random.Random) -> None:
        rng.choice(self.workers).signal(signal.SIGTERM)

    def restart_api(self, rng: random.Random) -> None:
        if rng.random() < 0.5:
            self.api.kill()
        else:
            self.api.stop(timeout_s=40)
        self.api.start()
        self.api.wait_ready(60)

    def kill_redis(self, rng: random.Random) -> None:
        self.redis.kill()
        time.sleep(rng.uniform(1, 4))
        self.redis = self._redis().start()
        self.redis.wait_ready(30)

    def pause_s3(self, rng: random.Random, seconds: float = 10.0) -> None:
        os.killpg(self.s3.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.killpg(self.s3.pid, signal.SIGCONT)

    @contextmanager
    def supervised(self) -> Iterator[list[int]]:
        """Replace each worker that exits with a fresh one; yields the exit codes seen."""
        exits: list[int] = []
        done = threading.Event()

        def supervise() -> None:
            while not done.wait(0.2):
                for index, worker in enumerate(self.workers):
                    if not worker.alive():
                        exits.append(worker.returncode() or 0)
                        worker.stop()
                        self.workers[index] = self.new_worker()

        thread = threading.Thread(target=supervise, name="chaos-supervisor", daemon=True)
        thread.start()
        try:
            yield exits
        finally:
            done.set()
            thread.join()


class WebhookReceiver:
    """An HTTP server that verifies every delivery's signature and keeps (webhook-id, payload) per delivery."""

    def __init__(self, secret: str) -> None:
        receiver = self
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.bad: list[str] = []  # deliveries whose signature did not verify
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(secret).verify(body, headers)
                except Exception as exc:
                    with receiver.lock:
                        receiver.bad.append(f"{type(exc).__name__}: {exc}")
                    self.send_response(400)
                else:
                    with receiver.lock:
                        receiver.received.append((headers["webhook-id"], payload))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join()

    def events(self) -> dict[tuple[str, str], set[str]]:
        """(job id, event type) -> the webhook-ids its deliveries carried."""
        found: dict[tuple[str, str], set[str]] = {}
        with self.lock:
            for webhook_id, payload in self.received:
                found.setdefault((payload["data"]["id"], payload["type"]), set()).add(webhook_id)
        return found


@dataclass
class Accepted:
    """A job the API answered 202, what its images must be captioned, and the first terminal view of it seen."""

    id: str
    captions: list[str]
    webhook: bool
    first_terminal: Job | None = None
    seen_ended_at: float | None = None  # time.monotonic() when the client first saw it ended


@dataclass
class Load:
    """A steady load of one- and several-image jobs, some with webhooks; every job answered 202 is watched until it
    is terminal, and the first terminal view of it is kept. Answers other than 202 are counted by status."""

    stack: ChaosStack
    images: list[tuple[bytes, str]]  # each image and the tiny model's caption for it alone
    webhook_url: str
    accepted: list[Accepted] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watched: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, submitters: int = 2) -> Load:
        self._threads = [threading.Thread(target=self._submit, args=(i,), daemon=True) for i in range(submitters)]
        self._threads.append(threading.Thread(target=self._watch, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads[:-1]:
            thread.join(30)

    def finish(self, timeout_s: float) -> None:
        """Wait until every accepted job has been seen terminal, then stop watching."""
        deadline = time.monotonic() + timeout_s
        while any(job.first_terminal is None for job in self.accepted) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._watched.set()
        self._threads[-1].join(30)

    def in_flight(self) -> list[Accepted]:
        return [job for job in self.accepted if job.first_terminal is None]

    def _submit(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.wait(rng.uniform(0.05, 0.3)):
            chosen = rng.sample(self.images, rng.choice((1, 1, 2, 4)))
            webhook = rng.random() < 0.3
            try:
                job = self.stack.client.submit([data for data, _ in chosen],
                                               webhook={"url": self.webhook_url} if webhook else None)
            except APIConnectionError as exc:
                self._count(type(exc.__cause__ or exc).__name__)  # ConnectError, ReadTimeout, ...
                continue
            except APIError as exc:
                self._count(str(exc.status))
                if exc.status == 503:
                    assert exc.retry_after_s is not None, exc
                continue
            if job.status == JobStatus.QUEUED:  # answered 202
                self.accepted.append(Accepted(job.id, [c for _, c in chosen], webhook))
            else:
                self._count(f"answered {job.status.value}")

    def _count(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1

    def _watch(self) -> None:
        with self.stack.new_client(timeout_s=10) as client:
            while not self._watched.is_set():
                for job in list(self.accepted):
                    if job.first_terminal is not None:
                        continue
                    try:
                        found = client.get(job.id)
                    except APIConnectionError:
                        break
                    except APIError:
                        continue
                    if found.status.is_terminal():
                        job.first_terminal, job.seen_ended_at = found, time.monotonic()
                time.sleep(0.2)


@dataclass
class Recovery:
    """How long after each fault was over the service had ended every job in flight when it began, and captioned a
    fresh one."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    last_jobs: dict[str, list[str]] = field(default_factory=dict)  # per fault, the job in flight that ended last

    def wait(self, stack: ChaosStack, fault: str, in_flight: list[Accepted], *, over: float,
             probe: tuple[bytes, str]) -> None:
        deadline = over + 120
        image, caption = probe
        while time.monotonic() < deadline:
            job: Job | None
            try:
                submitted = stack.client.submit([image])
                job = stack.client.wait(submitted.id, timeout_s=max(0.0, deadline - time.monotonic()))
            except (APIError, APIConnectionError, TimeoutError, ValidationError):  # an answer that is no job
                job = None
            if job is not None and job.status == JobStatus.SUCCEEDED:
                assert [r.caption for r in job.results] == [caption], job
                break
            time.sleep(0.2)
        while any(job.first_terminal is None for job in in_flight) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert time.monotonic() < deadline, f"the service did not recover from {fault} within 120 s"
        self.seconds.setdefault(fault, []).append(time.monotonic() - over)
        if in_flight:
            last = max(in_flight, key=lambda job: job.seen_ended_at or 0.0)
            ended = last.first_terminal.model_dump(mode="json") if last.first_terminal else {}
            self.last_jobs.setdefault(fault, []).append(
                f"{last.id}: {len(last.captions)} images, seen ended {(last.seen_ended_at or over) - over:+.1f} s "
                f"after the fault, created {ended.get('created_at')} started {ended.get('started_at')} "
                f"completed {ended.get('completed_at')}")

    def report(self) -> str:
        every = [s for values in self.seconds.values() for s in values]
        lines = [f"recovery after a fault: p50 {statistics.median(every):.1f} s, max {max(every):.1f} s"]
        for fault, values in self.seconds.items():
            lines.append(f"  {fault}: {', '.join(f'{s:.1f}' for s in values)} s")
            lines += [f"    the last job in flight to end: {job}" for job in self.last_jobs.get(fault, [])]
        return "\n".join(lines)


def run_faults(
    stack: ChaosStack, load: Load, faults: dict[str, Callable[[random.Random], None]], *, seconds: float,
    rng: random.Random, recovery: Recovery, probe: tuple[bytes, str],
) -> list[str]:
    """Every fault once in a random order, then random ones until `seconds` have passed, each at a random moment and
    timed until the service has recovered from it; the faults done, in order."""
    order = rng.sample(list(faults), len(faults))
    done: list[str] = []
    ends = time.monotonic() + seconds
    while order or time.monotonic() < ends:
        fault = order.pop() if order else rng.choice(list(faults))
        time.sleep(rng.uniform(0.5, 2.5))
        in_flight = load.in_flight()
        faults[fault](rng)
        recovery.wait(stack, fault, in_flight, over=time.monotonic(), probe=probe)
        done.append(fault)
    return done
