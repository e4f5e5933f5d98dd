"""The fair queue on real Redis: tenants take turns, a redelivered turn runs its own job again, ended jobs cost
no turn."""

from __future__ import annotations

import uuid

import pytest
import redis

from common.fairqueue import FairQueue
from common.jobstore import JobStore
from common.schemas import CaptionTask, GenerationOptions, ImageRef, JobStatus
from common.settings import Settings


@pytest.fixture
def stores(settings: Settings) -> tuple[FairQueue, JobStore]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete("captioner:fair:tenants")  # the session's Redis is shared: start from no waiting tenants
    return FairQueue(client, 3600), JobStore(client, 3600)


def queue_job(queue: FairQueue, jobs: JobStore, tenant: str) -> str:
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 1, None, GenerationOptions(), tenant=tenant)
    queue.push(tenant, CaptionTask(job_id=job_id, images=[ImageRef(index=0, key="k")], tenant=tenant))
    return job_id


def test_tenants_take_turns_whatever_came_first(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    heavy = [queue_job(queue, jobs, "heavy") for _ in range(5)]
    light = [queue_job(queue, jobs, "light") for _ in range(2)]
    taken = [task.job_id for turn in range(7) if (task := queue.take(f"t{uuid.uuid4().hex}{turn}"))]
    assert taken == [heavy[0], light[0], heavy[1], light[1], heavy[2], heavy[3], heavy[4]]
    assert queue.take(f"t{uuid.uuid4().hex}") is None  # nothing left: the turn does nothing


def test_a_tenant_that_comes_later_is_served_next(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    heavy = [queue_job(queue, jobs, "heavy") for _ in range(4)]
    assert queue.take(uuid.uuid4().hex).job_id == heavy[0]  # type: ignore[union-attr]
    late = queue_job(queue, jobs, "late")
    assert queue.take(uuid.uuid4().hex).job_id == late  # type: ignore[union-attr]


def test_a_redelivered_turn_takes_its_own_job_again_until_done(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    first, second = queue_job(queue, jobs, "a"), queue_job(queue, jobs, "a")
    turn = uuid.uuid4().hex
    assert queue.take(turn).job_id == first  # type: ignore[union-attr]
    assert queue.take(turn).job_id == first  # type: ignore[union-attr]
    queue.done(turn)
    assert queue.take(turn).job_id == second  # type: ignore[union-attr]


def test_ended_and_vanished_jobs_cost_no_turn(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    canceled, live = queue_job(queue, jobs, "a"), queue_job(queue, jobs, "a")
    jobs.finish(canceled, JobStatus.CANCELED)
    queue.push("a", CaptionTask(job_id="0" * 32, images=[ImageRef(index=0, key="k")], tenant="a"))  # no record
    last = queue_job(queue, jobs, "a")
    assert queue.take(uuid.uuid4().hex).job_id == live  # type: ignore[union-attr]
    assert queue.take(uuid.uuid4().hex).job_id == last  # type: ignore[union-attr]
    assert queue.take(uuid.uuid4().hex) is None
    assert queue.waiting("a") == []
