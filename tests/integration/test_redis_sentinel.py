"""Redis Sentinel fails over under load: the primary is SIGKILLed, the sentinels promote the replica, the API and the
worker follow it by themselves within 30 s, and every job the API answered 202 before the kill ends succeeded with its
images' captions. Prints how soon each step came.

The guarantee (docs/reliability.md, "Redis with Sentinel"): the primary sends each write to its replica in the same
round of its event loop as its answers, so a primary process that dies on a live host has handed the replica every
write it answered; CAPTIONER_REDIS_WAIT_REPLICAS makes a 202 wait for the replica's acknowledgement, which covers the
loss of the primary's host too. The test runs without it, as deployed by default; SENTINEL_TEST_WAIT_REPLICAS=1 runs
it with it. It runs a Sentinel group of its own (tests/sentinels.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from captioner.client import Client, ServiceUnavailableError
from common.redis_client import service_redis
from common.schemas import JobStatus
from tests.conftest import Services, settings_for
from tests.integration.conftest import Stack, running_stack
from tests.integration.test_redis_outage import SCENES, Load, broker_connected_after, epoch, png_of, wait_all_ended
from tests.sentinels import sentinel_group

pytestmark = pytest.mark.integration

FOLLOW_BOUND_S = 30.0
WAIT_REPLICAS = int(os.environ.get("SENTINEL_TEST_WAIT_REPLICAS", "0"))  # CAPTIONER_REDIS_WAIT_REPLICAS


def test_the_service_follows_a_failover_and_loses_no_accepted_job(services: Services, tmp_path: Path) -> None:
    with sentinel_group(tmp_path / "redis") as group:
        old_port = group.primary_port()
        assert old_port is not None
        settings = settings_for(services, redis_url=f"redis://127.0.0.1:{old_port}/0", redis_sentinels=group.addresses,
                                batch_wait_ms=10, worker_silence_seconds=3, redis_upload_max_bytes=16 * 1024,
                                redis_wait_replicas=WAIT_REPLICAS, redis_wait_timeout_ms=200)
        with running_stack(settings, tmp_path) as stack:
            load = Load(stack).start()
            try:
                time.sleep(3)  # jobs queued, running and ended when the primary dies
                group.primary.kill()
                killed_at = time.monotonic()
                before_kill = load.accepted_after(0)
                new_port = group.wait_for_primary_other_than(old_port, FOLLOW_BOUND_S)
                promoted_s = time.monotonic() - killed_at
                followed_s = followed(stack, killed_at)
                time.sleep(1)  # jobs accepted after the failover, for the worker to take
            finally:
                load.finish()

            assert str(new_port) == group.replica.argv[group.replica.argv.index("--port") + 1]
            assert not load.wrong, load.wrong[:5]
            ended = wait_all_ended(stack, load.accepted_after(0), timeout_s=60)
            all_ended_s = time.monotonic() - killed_at
            lost = [job.job_id for job in load.accepted_after(0) if job.job_id not in ended]
            assert not lost, f"{len(lost)} of {len(load.accepted_after(0))} accepted jobs did not end " \
                f"({len([j for j in before_kill if j.job_id in lost])} accepted before the kill):\n" \
                f"{stack.worker.log_tail()}"
            # Jobs in hand at the kill go on at the new primary, rather than retry the dead one for a minute.
            assert all_ended_s < FOLLOW_BOUND_S, all_ended_s
            for job in load.accepted_after(0):
                done = ended[job.job_id]
                assert done.status == JobStatus.SUCCEEDED, done
                assert [r.caption for r in done.results] == [scene.caption for scene in job.scenes], done
            jobs = service_redis(settings)
            blamed = [job.job_id for job in before_kill if jobs.hget(f"captioner:job:{job.job_id}", "deaths")]
            assert not blamed, blamed  # the worker was cut off, not dead (worker/jobs/recovery.py)
            reconnected_at = broker_connected_after(stack.worker, epoch(killed_at))
            assert reconnected_at is not None, stack.worker.log_tail()
            worker_back_s = reconnected_at - epoch(killed_at)
            refused = [seconds for at, seconds in load.refusals if at >= killed_at]
            # The API has followed at the first job accepted after it first refused one (a 202 just after the kill
            # may answer a request the old primary handled).
            first_refused = min((at for at, _ in load.refusals if at >= killed_at), default=killed_at)
            api_back_s = min(job.at for job in load.accepted_after(first_refused)) - killed_at

    print(f"\nPrimary SIGKILLed under load (WAIT replicas {WAIT_REPLICAS}): {len(before_kill)} jobs accepted before "
          f"the kill, {len(load.accepted_after(0))} in all, every one succeeded with its captions. The sentinels "
          f"promoted the replica {promoted_s:.1f} s after the kill; the API accepted again after {api_back_s:.1f} s "
          f"({len(refused)} submissions answered 503 meanwhile, slowest {max(refused, default=0):.2f} s), the "
          f"worker's broker connection was back after {worker_back_s:.1f} s, a job submitted then had succeeded "
          f"{followed_s:.1f} s after the kill, and every job had ended {all_ended_s:.1f} s after it.")


def followed(stack: Stack, killed_at: float) -> float:
    """Seconds from the kill until a job submitted after it had succeeded: the API and the worker both follow."""
    deadline = killed_at + FOLLOW_BOUND_S
    with Client(stack.url, stack.key.key, timeout_s=10, max_retries=0) as client:  # each 503 as it comes
        while time.monotonic() < deadline:
            try:
                job = client.submit([png_of(SCENES[0])])
            except ServiceUnavailableError:
                time.sleep(0.1)
                continue
            done = client.wait(job.id, timeout_s=max(1.0, deadline - time.monotonic()))
            assert done.status == JobStatus.SUCCEEDED and done.results[0].caption == SCENES[0].caption, done
            return time.monotonic() - killed_at
    raise AssertionError(f"the API accepted no job within {FOLLOW_BOUND_S} s of the kill:\n{stack.api.log_tail()}")
