"""The fair queue on real Redis: tenants take turns, a redelivered turn runs its own job again, ended jobs cost
no turn."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
import redis

from common.fairqueue import FairQueue, Reclaimed
from common.jobstore import JobStore
from common.schemas import CaptionTask, GenerationOptions, ImageRef, JobStatus
from common.settings import Settings
from common.workers import WorkerRegistry, report_key


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
    taken = [task.task.job_id for turn in range(7) if (task := queue.take(f"t{uuid.uuid4().hex}{turn}", "w"))]
    assert taken == [heavy[0], light[0], heavy[1], light[1], heavy[2], heavy[3], heavy[4]]
    assert queue.take(f"t{uuid.uuid4().hex}", "w") is None  # nothing left: the turn does nothing


def test_a_tenant_that_comes_later_is_served_next(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    heavy = [queue_job(queue, jobs, "heavy") for _ in range(4)]
    assert queue.take(uuid.uuid4().hex, "w").task.job_id == heavy[0]  # type: ignore[union-attr]
    late = queue_job(queue, jobs, "late")
    assert queue.take(uuid.uuid4().hex, "w").task.job_id == late  # type: ignore[union-attr]


def test_a_redelivered_turn_takes_its_own_job_again_until_done(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    first, second = queue_job(queue, jobs, "a"), queue_job(queue, jobs, "a")
    turn = uuid.uuid4().hex
    assert queue.take(turn, "w").task.job_id == first  # type: ignore[union-attr]
    assert queue.take(turn, "w").task.job_id == first  # type: ignore[union-attr]
    queue.done(turn)
    assert queue.take(turn, "w").task.job_id == second  # type: ignore[union-attr]


def test_ended_and_vanished_jobs_cost_no_turn(stores: tuple[FairQueue, JobStore]) -> None:
    queue, jobs = stores
    canceled, live = queue_job(queue, jobs, "a"), queue_job(queue, jobs, "a")
    jobs.finish(canceled, JobStatus.CANCELED)
    queue.push("a", CaptionTask(job_id="0" * 32, images=[ImageRef(index=0, key="k")], tenant="a"))  # no record
    last = queue_job(queue, jobs, "a")
    assert queue.take(uuid.uuid4().hex, "w").task.job_id == live  # type: ignore[union-attr]
    assert queue.take(uuid.uuid4().hex, "w").task.job_id == last  # type: ignore[union-attr]
    assert queue.take(uuid.uuid4().hex, "w") is None
    assert queue.waiting("a") == []


def test_the_turns_of_a_dead_worker_are_reclaimed_once_and_a_live_ones_kept(
    stores: tuple[FairQueue, JobStore], settings: Settings
) -> None:
    queue, jobs = stores
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete("captioner:fair:holders")
    registry = WorkerRegistry(client)
    alive, dead = f"alive-{uuid.uuid4().hex}", f"dead-{uuid.uuid4().hex}"
    registry.report(alive, "ready", 60)
    held = {name: f"turn-{uuid.uuid4().hex}" for name in (alive, dead)}
    for name, turn in held.items():
        queue_job(queue, jobs, "t")
        assert queue.take(turn, name) is not None
    finished = f"turn-{uuid.uuid4().hex}"
    queue_job(queue, jobs, "t")
    assert queue.take(finished, dead) is not None
    queue.done(finished)  # its job is done with: nothing to send again
    assert queue.reclaim() == Reclaimed([held[dead]], [])
    assert queue.reclaim() == Reclaimed([], [])  # once: a second reaper finds nothing
    # The turn sent again is taken by a live worker, with its own job.
    job = queue.take(held[dead], alive)
    assert job is not None and queue.take(held[dead], alive) == job
    registry.report(alive, "ready", 1)
    client.delete(report_key(alive))  # its report expired
    assert sorted(queue.reclaim().again) == sorted([held[alive], held[dead]])


def test_a_job_is_blamed_for_each_worker_that_died_holding_it_and_fails_at_the_limit(
    stores: tuple[FairQueue, JobStore], settings: Settings
) -> None:
    """All of a dead worker's jobs are blamed, unless it named the one it ran alone: then that one only."""
    queue, jobs = stores
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete("captioner:fair:holders")
    poison, innocent = queue_job(queue, jobs, "p"), queue_job(queue, jobs, "q")
    turn = {poison: f"turn-{uuid.uuid4().hex}", innocent: f"turn-{uuid.uuid4().hex}"}

    def deaths(job_id: str) -> int:
        return int(cast(str | None, client.hget(f"captioner:job:{job_id}", "deaths")) or 0)

    def die_holding(held: list[str], suspect: str | None = None) -> Reclaimed:
        worker = f"w-{uuid.uuid4().hex}"  # it never reports: it is dead
        for job_id in held:
            taken = queue.take(turn[job_id], worker)
            assert taken is not None and taken.task.job_id == job_id
        if suspect is not None:
            queue.suspect(worker, turn[suspect])
        return queue.reclaim()

    first = die_holding([poison, innocent])  # it ran both: both are blamed
    assert sorted(first.again) == sorted(turn.values()) and first.poisoned == []
    assert (deaths(poison), deaths(innocent)) == (1, 1)
    second = die_holding([poison, innocent], suspect=poison)  # it ran the poison alone: that one is blamed
    assert sorted(second.again) == sorted(turn.values())
    assert (deaths(poison), deaths(innocent)) == (2, 1)
    assert die_holding([poison], suspect=poison) == Reclaimed([], [turn[poison]])  # the third death: it fails
    taken = queue.take(turn[innocent], "a live worker")
    assert taken is not None and taken.deaths == 1  # it runs alone, and ends well


def test_a_dead_worker_that_held_no_turn_still_gets_spare_turns_sent_for_the_waiting_jobs(
    stores: tuple[FairQueue, JobStore], settings: Settings
) -> None:
    """Messages it had received but not started come back only after the visibility timeout: spares go now."""
    queue, jobs = stores
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete("captioner:fair:holders", "captioner:fair:workers")
    alive, dead = f"alive-{uuid.uuid4().hex}", f"dead-{uuid.uuid4().hex}"
    WorkerRegistry(client).report(alive, "ready", 60)
    queue.join(alive)
    for _ in range(3):
        queue_job(queue, jobs, "waiting")
    assert queue.reclaim() == Reclaimed([], [], 0)  # every worker alive: nothing to do
    # After a Redis outage, which may have lost turns on their way, spares go out for every job waiting.
    assert queue.reclaim(spare_anyway=True) == Reclaimed([], [], 3)
    queue.join(dead)  # it never reports: it died
    assert queue.reclaim() == Reclaimed([], [], 3)
    assert queue.reclaim() == Reclaimed([], [], 0)  # once
    queue.leave(alive)
    client.delete(report_key(alive))
    assert queue.reclaim() == Reclaimed([], [], 0)  # a worker that left cleanly is no dead one


def test_a_turn_given_back_keeps_its_job_and_no_reaper_blames_it(
    stores: tuple[FairQueue, JobStore], settings: Settings
) -> None:
    """A worker that stops gives its turns back to the broker: whoever takes one next takes the same job, and the
    stopped worker's expired report costs the job nothing."""
    queue, jobs = stores
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete("captioner:fair:holders")
    stopping, next_worker = f"stopping-{uuid.uuid4().hex}", f"next-{uuid.uuid4().hex}"
    job_id, turn = queue_job(queue, jobs, "t"), f"turn-{uuid.uuid4().hex}"
    queue.join(stopping)
    assert queue.take(turn, stopping) is not None
    queue.give_back(turn)
    queue.leave(stopping)  # its report was never written: as good as expired
    assert queue.reclaim() == Reclaimed([], [])
    taken = queue.take(turn, next_worker)
    assert taken is not None and taken.task.job_id == job_id and taken.deaths == 0
