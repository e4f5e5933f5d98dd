"""Chaos: the whole stack under a steady load while its processes are killed, stopped, restarted and paused at random
moments, checked from the clients' side (docs/reliability.md, "The chaos test").

Every fault happens once, in a random order, then random ones for CHAOS_SECONDS more (0 in CI; the long run:
`CHAOS_SECONDS=600 .venv/bin/pytest tests/integration/test_chaos.py -s`). CHAOS_SEED replays a run's order and
moments. The CI run shortens the times a dead worker's work waits (its report's lifetime, the bulk lease) so that
it fits the suite; the long run keeps the defaults.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chaos import ChaosStack, Load, Recovery, WebhookReceiver, png, run_faults
from tests.integration.test_bulk import caption_alone

pytestmark = pytest.mark.integration

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "0"))
SEED = int(os.environ.get("CHAOS_SEED", str(random.randrange(10**6))))
BULK_OBJECTS = 150
# Shorter than the defaults (10 s, 15 s) in CI only, where the run must fit the suite's time.
FAST = {"worker_silence_seconds": 3, "bulk_lease_seconds": 3.0} if CHAOS_SECONDS == 0 else {}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[ChaosStack]:
    stack = ChaosStack(
        tmp_path, batch_size=8, batch_wait_ms=20, bulk_chunk_size=25, bulk_concurrency=1,
        # Larger images go to S3, smaller ones stay in Redis: both paths meet the faults.
        redis_upload_max_bytes=2048,
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


def test_every_accepted_job_ends_once_and_right_whatever_is_killed(stack: ChaosStack) -> None:
    print(f"chaos seed {SEED} (CHAOS_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    images = [png(seed, (64, 64) if seed % 2 else (160, 120)) for seed in range(8)]
    captioned = [(data, caption_alone(data)) for data in images]
    bucket = f"chaos-{SEED}"
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    objects = {f"set/{i:04d}.png": images[i % len(images)] for i in range(BULK_OBJECTS)}
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)

    with WebhookReceiver(stack.webhook_secret) as hooks, stack.supervised() as exits:
        load = Load(stack, captioned, hooks.url).start(submitters=1)
        bulk = stack.http.post(f"{stack.url}/v1/bulk", json={"source": {"bucket": bucket, "prefix": "set/"}},
                               timeout=30)
        assert bulk.status_code == 202, bulk.text
        recovery = Recovery()
        faults: dict[str, Callable[[random.Random], None]] = {
            "worker SIGKILL": stack.kill_worker, "worker SIGTERM": stack.stop_worker,
            "API restart": stack.restart_api, "Redis SIGKILL": stack.kill_redis, "S3 paused 10 s": stack.pause_s3,
        }
        done = run_faults(stack, load, faults, seconds=CHAOS_SECONDS, rng=rng, recovery=recovery, probe=captioned[0])
        load.stop()
        load.finish(timeout_s=180)
        deadline = time.monotonic() + 180
        while (run := stack.http.get(f"{stack.url}/v1/bulk/{bulk.json()['id']}", timeout=10).json())["status"] \
                in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        hooked = [job for job in load.accepted if job.webhook]
        while time.monotonic() < deadline and any((job.id, "job.succeeded") not in hooks.events() for job in hooked):
            time.sleep(0.2)

    lost = [job for job in load.accepted if job.first_terminal is None or job.first_terminal["status"] != "succeeded"]
    print(f"faults: {', '.join(done)}; {len(load.accepted)} jobs accepted, {len(lost)} lost; "
          f"other answers: {load.refused}; workers' exit codes: {exits}")
    print(recovery.report())
    assert not lost, [job.first_terminal or job.id for job in lost][:5]
    assert "500" not in load.refused, load.refused
    for job in load.accepted:
        assert job.first_terminal is not None
        assert [(r["index"], r["caption"]) for r in job.first_terminal["results"]] == list(enumerate(job.captions))
        now = stack.http.get(f"{stack.url}/v1/jobs/{job.id}", timeout=10).json()
        assert now["status"] == job.first_terminal["status"] and now["results"] == job.first_terminal["results"]
    assert not hooks.bad, hooks.bad[:3]
    events = hooks.events()
    for job in hooked:
        assert len(events.get((job.id, "job.succeeded"), set())) == 1, (job.id, events.get((job.id, "job.succeeded")))
    assert run["status"] == "succeeded", run
    lines = bulk_results(stack, bucket)
    assert sorted(line["key"] for line in lines) == sorted(objects), "an object is missing or appears twice"
    expected = dict(captioned)
    assert all(line["caption"] == expected[objects[line["key"]]] for line in lines)
