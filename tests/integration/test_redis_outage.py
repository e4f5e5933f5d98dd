"""Redis dies under load (SIGKILL) and comes back on the same port and data directory: every job the API answered
202 ends succeeded, with its images' captions; while Redis is down the API answers 503 with Retry-After at once
(never a 500, never a hang); once it is back, the API and the worker carry on by themselves. Prints how soon each did.

The guarantee (docs/reliability.md, "Redis dies"): Redis writes each command to its append-only file before it
answers it, and the API answers 202 only once Redis has answered the job's last write, so a killed Redis loses no
accepted job. This test runs its own Redis, so killing it breaks no other test's.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import redis
import requests

from captioner.client import APIConnectionError, APIError, Client
from cli.processes import ManagedProcess, free_ports, redis_process
from common.schemas import Job, JobStatus
from tests.conftest import Services, settings_for
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import Stack, running_stack

pytestmark = pytest.mark.integration

SCENES = [Scene("circle", "red", "white"), Scene("square", "blue", "white"), Scene("triangle", "green", "black"),
          Scene("triangle", "yellow", "black")]
LOAD_THREADS = 3
DOWN_S = 5.0  # longer than the workers' reports live unrenewed (CAPTIONER_WORKER_SILENCE_SECONDS=3, below)


def png_of(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, (64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Accepted:
    job_id: str
    scenes: list[Scene]
    at: float


@dataclass
class Load:
    """Clients submitting one- and two-image jobs, each as soon as the last was answered (then a short pause),
    noting every answer."""

    stack: Stack
    accepted: list[Accepted] = field(default_factory=list)
    refusals: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds to answer) of each 503
    wrong: list[str] = field(default_factory=list)  # any other answer, or none
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._submit, args=(n,), daemon=True) for n in range(LOAD_THREADS)]
        for thread in self._threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def accepted_after(self, moment: float) -> list[Accepted]:
        with self._lock:
            return [job for job in self.accepted if job.at > moment]

    def _submit(self, n: int) -> None:
        with Client(self.stack.url, self.stack.key.key, timeout_s=15, max_retries=0) as client:  # every 503 noted
            for i in itertools.count():
                if self.stop.is_set():
                    return
                scenes = [SCENES[(n + i) % len(SCENES)], SCENES[(n + i + 1) % len(SCENES)]][: 1 + i % 2]
                started = time.monotonic()
                try:
                    job = client.submit([png_of(scene) for scene in scenes])
                except APIConnectionError as exc:
                    self.wrong.append(f"no answer: {exc}")
                    continue
                except APIError as exc:
                    with self._lock:
                        if exc.status == 503 and (exc.retry_after_s or 0) > 0:
                            self.refusals.append((started, time.monotonic() - started))
                        else:
                            self.wrong.append(f"{exc} (Retry-After {exc.retry_after_s})")
                    self.stop.wait(0.1)
                    continue
                answered = time.monotonic()
                with self._lock:
                    if job.status == JobStatus.QUEUED:  # answered 202: accepted, not yet run
                        self.accepted.append(Accepted(job.id, scenes, answered))
                    else:
                        self.wrong.append(f"accepted as {job.status.value}: {job}")
                self.stop.wait(0.1)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A Redis of this test's own, append-only in a directory of its own, as deployed."""
    (port,) = free_ports(1)
    process = redis_process(tmp_path / "redis-data", port, tmp_path / "redis.log").start()
    try:
        process.wait_ready(30)
        yield process
    finally:
        process.stop()


def unavailable_within(response: requests.Response, openai_shape: bool) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert set(error) == ({"message", "type", "param", "code"} if openai_shape else {"code", "message"}), error
    assert error["code"] == "service_unavailable"


def wait_all_ended(stack: Stack, jobs: list[Accepted], timeout_s: float) -> dict[str, Job]:
    """Each job that has ended within `timeout_s`, by its id: long polls, one job after another."""
    ended: dict[str, Job] = {}
    deadline = time.monotonic() + timeout_s
    for job in jobs:
        with contextlib.suppress(TimeoutError):
            ended[job.job_id] = stack.client.wait(job.job_id, timeout_s=max(0.0, deadline - time.monotonic()))
    return ended


def test_a_killed_redis_loses_no_accepted_job_and_everyone_reconnects(
    services: Services, own_redis: ManagedProcess, tmp_path: Path
) -> None:
    redis_url = f"redis://127.0.0.1:{own_redis.argv[own_redis.argv.index('--port') + 1]}/0"
    settings = settings_for(services, redis_url=redis_url, batch_wait_ms=10, worker_silence_seconds=3,
                            redis_upload_max_bytes=16 * 1024)
    with running_stack(settings, tmp_path) as stack:
        load = Load(stack).start()
        try:
            time.sleep(3)  # jobs queued, running and ended when Redis dies
            own_redis.kill()
            killed_at = time.monotonic()
            before_kill = load.accepted_after(0)
            # While Redis is down: a native and an OpenAI-shaped path, a job's read, readiness.
            job_id = before_kill[-1].job_id
            probes = [
                (lambda: stack.http.post(f"{stack.url}/v1/jobs", files={"images": ("a.png", png_of(SCENES[0]))},
                                         timeout=10), False),
                (lambda: stack.http.get(f"{stack.url}/v1/jobs/{job_id}?wait=5", timeout=10), False),
                (lambda: stack.http.post(f"{stack.url}/v1/chat/completions", timeout=10, json={
                    "model": "tiny_blip", "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": data_url(SCENES[1])}}]}]}), True),
            ]
            slowest_s = 0.0
            for probe, openai_shape in probes:
                started = time.monotonic()
                unavailable_within(probe(), openai_shape)
                slowest_s = max(slowest_s, time.monotonic() - started)
            assert stack.http.get(f"{stack.url}/readyz", timeout=10).status_code == 503
            assert stack.http.get(f"{stack.url}/healthz", timeout=10).status_code == 200
            time.sleep(max(0.0, killed_at + DOWN_S - time.monotonic()))

            own_redis.start()  # the same port and directory: it loads its append-only file
            own_redis.wait_ready(30)
            back_at = time.monotonic()
            deadline = back_at + 30
            while not load.accepted_after(back_at) and time.monotonic() < deadline:
                time.sleep(0.05)
            api_back_s = load.accepted_after(back_at)[0].at - back_at if load.accepted_after(back_at) else None
            time.sleep(2)  # jobs accepted after Redis returned, for the worker to take
        finally:
            load.finish()

        assert not load.wrong, load.wrong[:5]
        assert api_back_s is not None, f"no job was accepted within 30 s of Redis's return:\n{stack.api.log_tail()}"
        during = [seconds for at, seconds in load.refusals if killed_at <= at < back_at]
        assert during and max(during) < 2, during  # refused at once, never held
        after = load.accepted_after(back_at)
        ended = wait_all_ended(stack, load.accepted_after(0), timeout_s=60)
        all_ended_s = time.monotonic() - back_at

        lost = [job.job_id for job in load.accepted_after(0) if job.job_id not in ended]
        assert not lost, f"{len(lost)} accepted jobs did not end:\n{stack.worker.log_tail()}"
        for job in load.accepted_after(0):
            done = ended[job.job_id]
            assert done.status == JobStatus.SUCCEEDED, done
            assert [r.caption for r in done.results] == [scene.caption for scene in job.scenes], done
        # The worker was cut off, not dead: no job was blamed for its silence (worker/jobs/recovery.py).
        jobs = redis.Redis.from_url(redis_url, decode_responses=True)
        blamed = [job.job_id for job in before_kill if jobs.hget(f"captioner:job:{job.job_id}", "deaths")]
        assert not blamed, blamed
        reconnected_at = broker_connected_after(stack.worker, epoch(back_at))
        assert reconnected_at is not None, stack.worker.log_tail()
        worker_back_s = reconnected_at - epoch(back_at)
        assert after and all(ended[job.job_id].status == JobStatus.SUCCEEDED for job in after)

    print(f"\nRedis down {back_at - killed_at:.1f} s under load: {len(before_kill)} jobs accepted before the kill, "
          f"{len(load.accepted_after(0))} in all, every one succeeded with its captions; {len(during)} submissions "
          f"answered 503 while it was down (slowest {max([*during, slowest_s]):.2f} s). After its return: the API "
          f"accepted again in {api_back_s:.2f} s, the worker was consuming again in {worker_back_s:.1f} s, and "
          f"every job had ended {all_ended_s:.1f} s after it.")


def data_url(scene: Scene) -> str:
    return "data:image/png;base64," + base64.b64encode(png_of(scene)).decode()


def epoch(monotonic_at: float) -> float:
    """A time.monotonic() reading as a Unix time, to compare with the times in a log."""
    return time.time() - (time.monotonic() - monotonic_at)


def broker_connected_after(worker: ManagedProcess, after: float) -> float | None:
    """When the worker's Celery consumer (re)connected to the broker, first after `after` (Unix time), by its log (JSON
    lines, CAPTIONER_LOG_FORMAT's default)."""
    for line in worker.log_path.read_text(errors="replace").splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("logger", "").endswith("consumer.connection") and record["message"].startswith("Connected to "):
            at = datetime.fromisoformat(record["time"]).timestamp()
            if at > after:
                return at
    return None
