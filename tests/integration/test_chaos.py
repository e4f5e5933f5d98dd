"""Chaos: the whole stack under a steady load while its processes are killed, stopped, restarted and paused at random
moments, checked from the clients' side (docs/reliability.md, "The chaos test").

Every fault happens once, in a random order, then random ones for CHAOS_SECONDS more (0 in CI; the long run:
`CHAOS_SECONDS=600 .venv/bin/pytest tests/integration/test_chaos.py -s`). CHAOS_SEED replays a run's order and
moments. The CI run shortens the times a dead worker's work waits (its report's lifetime, the bulk lease) and the
pause of S3 (4 s) so that it fits the suite; the long run keeps the defaults and pauses S3 for 10 s.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from captioner.client import ServiceUnavailableError
from common.bulk_schemas import BulkStatus
from common.schemas import JobStatus
from tests.integration.chaos import ChaosStack, Load, Recovery, WebhookReceiver, png, run_faults
from tests.integration.conftest import wait_bulk
from tests.integration.test_bulk import caption_alone

pytestmark = pytest.mark.integration

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "0"))
SEED = int(os.environ.get("CHAOS_SEED", str(random.randrange(10**6))))
BULK_OBJECTS = 150
# Shorter than the defaults (10 s, 15 s) in CI only, where the run must fit the suite's time; so is the pause of S3
# (the S3 test stops it for 10 s).
FAST = {"worker_silence_seconds": 3, "bulk_lease_seconds": 3.0} if CHAOS_SECONDS == 0 else {}
S3_PAUSE_S = 4.0 if CHAOS_SECONDS == 0 else 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    stack = ChaosStack(
        tmp_path_factory.mktemp("chaos"), batch_size=8, batch_wait_ms=20, bulk_chunk_size=25, bulk_concurrency=1,
        # The 400x300 images (1.08 KB or more) go to S3, the 64x64 ones (300 bytes or less) stay in Redis: both
        # paths meet the faults.
        redis_upload_max_bytes=1024,
        webhook_first_retry_seconds=0.5, webhook_max_retry_seconds=4.0, webhook_timeout_seconds=2.0,
        webhook_max_attempts=30, **FAST,
    )
    try:
        stack.start(workers=2)
        yield stack
    finally:
        stack.stop()


def bulk_results(stack: ChaosStack, bucket: str) -> list[dict[str, Any]]:
    s3 = stack.s3_client()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="captioner-results/set/manifest.json")["Body"].read())
    assert manifest["complete"], manifest
    return [json.loads(line) for key in manifest["result_files"]
            for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]


def put_objects(stack: ChaosStack, bucket: str, objects: dict[str, bytes]) -> None:
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def test_s3_away_for_ten_seconds_costs_time_and_no_work(stack: ChaosStack) -> None:
    """The S3 server is stopped for 10 s while workers start on jobs whose images it holds and on a bulk run: large
    uploads get 503 with Retry-After at once, small ones (kept in Redis) are accepted, and once it is back every job
    and the bulk run finish, right."""
    large, small = png(11, (400, 300)), png(12, (64, 64))
    expected = {large: caption_alone(large), small: caption_alone(small)}
    for worker in stack.workers:
        worker.stop()  # nothing reads the images before S3 goes
    objects = {f"set/{i:03d}.png": (large, small)[i % 2] for i in range(40)}
    put_objects(stack, "s3-outage", objects)
    jobs = [stack.client.submit([large, small]) for _ in range(3)]
    bulk = stack.client.bulk("s3-outage", "set/")
    assert all(job.status == JobStatus.QUEUED for job in jobs), jobs

    stack.s3.kill()
    down_at = time.monotonic()
    stack.workers = [stack.new_worker() for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as refused:  # the client retries nothing here
        stack.client.submit([large])
    refused_s = time.monotonic() - started
    assert refused.value.retry_after_s is not None, refused.value
    assert refused_s < 10, f"a large upload was refused {refused_s:.1f} s after it was sent"
    kept = stack.client.submit([small])
    assert kept.status == JobStatus.QUEUED, kept
    # The OpenAI layer's files, which the client does not reach.
    file = stack.http.post(f"{stack.url}/v1/files", data={"purpose": "batch"},
                           files={"file": ("in.jsonl", b"{}\n", "application/jsonl")}, timeout=30)
    assert file.status_code == 503 and file.json()["error"]["code"] == "service_unavailable", file.text
    for worker in stack.workers:
        worker.wait_ready(120)
    time.sleep(max(0.0, down_at + 10 - time.monotonic()))
    stack.restart_s3()
    back_at = time.monotonic()

    for accepted, images in [*((job, [large, small]) for job in jobs), (kept, [small])]:
        job = stack.client.wait(accepted.id, timeout_s=90)
        assert job.status == JobStatus.SUCCEEDED, job
        assert [r.caption for r in job.results] == [expected[data] for data in images]
    run = wait_bulk(stack.client, bulk.id, timeout_s=90)
    assert run.status == BulkStatus.SUCCEEDED, run
    lines = bulk_results(stack, "s3-outage")
    assert sorted(line["key"] for line in lines) == sorted(objects)
    assert all(line["caption"] == expected[objects[line["key"]]] for line in lines)
    print(f"S3 away 10 s: a large upload refused in {refused_s:.1f} s; every job and the bulk run done "
          f"{time.monotonic() - back_at:.1f} s after it was back")


def test_every_accepted_job_ends_once_and_right_whatever_is_killed(stack: ChaosStack) -> None:
    print(f"chaos seed {SEED} (CHAOS_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    images = [png(seed, (64, 64) if seed % 2 else (400, 300)) for seed in range(8)]
    captioned = [(data, caption_alone(data)) for data in images]
    bucket = f"chaos-{SEED}"
    objects = {f"set/{i:04d}.png": images[i % len(images)] for i in range(BULK_OBJECTS)}
    put_objects(stack, bucket, objects)

    with WebhookReceiver(stack.webhook_secret) as hooks, stack.supervised() as exits:
        load = Load(stack, captioned, hooks.url).start(submitters=1)
        bulk = stack.client.bulk(bucket, "set/")
        recovery = Recovery()
        faults: dict[str, Callable[[random.Random], None]] = {
            "worker SIGKILL": stack.kill_worker,
            "worker SIGTERM": stack.stop_worker,
            "API restart": stack.restart_api,
            "Redis SIGKILL": stack.kill_redis,
            f"S3 paused {S3_PAUSE_S:g} s": lambda rng: stack.pause_s3(rng, S3_PAUSE_S),
        }
        done = run_faults(stack, load, faults, seconds=CHAOS_SECONDS, rng=rng, recovery=recovery, probe=captioned[0])
        load.stop()
        load.finish(timeout_s=180)
        run = wait_bulk(stack.client, bulk.id, timeout_s=180)
        deadline = time.monotonic() + 60
        hooked = [job for job in load.accepted if job.webhook]
        while time.monotonic() < deadline and any((job.id, "job.succeeded") not in hooks.events() for job in hooked):
            time.sleep(0.2)

    lost = [job for job in load.accepted
            if job.first_terminal is None or job.first_terminal.status != JobStatus.SUCCEEDED]
    print(f"faults: {', '.join(done)}; {len(load.accepted)} jobs accepted, {len(lost)} lost; "
          f"other answers: {load.refused}; workers' exit codes: {exits}")
    print(recovery.report())
    assert not lost, [job.first_terminal or job.id for job in lost][:5]
    assert "500" not in load.refused, load.refused
    for job in load.accepted:
        assert job.first_terminal is not None
        assert [(r.index, r.caption) for r in job.first_terminal.results] == list(enumerate(job.captions))
        now = stack.client.get(job.id)
        assert now.status == job.first_terminal.status and now.results == job.first_terminal.results
    assert not hooks.bad, hooks.bad[:3]
    events = hooks.events()
    for job in hooked:
        assert len(events.get((job.id, "job.succeeded"), set())) == 1, (job.id, events.get((job.id, "job.succeeded")))
    assert run.status == BulkStatus.SUCCEEDED, run
    lines = bulk_results(stack, bucket)
    assert sorted(line["key"] for line in lines) == sorted(objects), "an object is missing or appears twice"
    expected = dict(captioned)
    assert all(line["caption"] == expected[objects[line["key"]]] for line in lines)
