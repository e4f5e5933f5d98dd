"""Long polling on a real redis-server: a waiter wakes when the job store announces the job's end."""

from __future__ import annotations

import threading
import time
import uuid

import redis

from api.waiting import JobWaiter
from common.jobstore import JobStore
from common.schemas import GenerationOptions, ImageResult, JobStatus
from common.settings import Settings


def test_a_waiter_wakes_when_the_last_result_ends_the_job_and_not_for_other_jobs(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    jobs, waiter = JobStore(client, 600), JobWaiter(client)
    mine, other = uuid.uuid4().hex, uuid.uuid4().hex
    for job_id in (mine, other):
        jobs.create(job_id, 1, None, GenerationOptions(), tenant="tests")

    threading.Timer(0.2, lambda: jobs.finish(other, JobStatus.CANCELED)).start()
    threading.Timer(0.6, lambda: jobs.record_result(mine, ImageResult(index=0, caption="a red circle"))).start()
    started = time.monotonic()
    waiter.wait_for_end(mine, jobs.status, timeout_s=10)
    waited = time.monotonic() - started
    assert jobs.get(mine, tenant=None).status is JobStatus.SUCCEEDED
    assert 0.5 < waited < 5  # not woken by the other job's end, nor left to time out


def test_a_job_that_ended_before_the_wait_answers_at_once(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    jobs, waiter = JobStore(client, 600), JobWaiter(client)
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 1, None, GenerationOptions(), tenant="tests")
    jobs.finish(job_id, JobStatus.CANCELED)
    started = time.monotonic()
    waiter.wait_for_end(job_id, jobs.status, timeout_s=10)
    assert time.monotonic() - started < 5


def test_a_stopping_process_ends_its_long_polls_and_keeps_the_waits_that_need_the_end(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    jobs, waiter = JobStore(client, 600), JobWaiter(client)
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 1, None, GenerationOptions(), tenant="tests")
    waited: dict[str, float] = {}

    def wait(name: str, long_poll: bool) -> None:
        started = time.monotonic()
        waiter.wait_for_end(job_id, jobs.status, timeout_s=10, long_poll=long_poll)
        waited[name] = time.monotonic() - started

    threads = [threading.Thread(target=wait, args=(name, name == "long poll")) for name in ("long poll", "caption")]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    waiter.end_long_polls()
    threads[0].join(5)
    assert waited["long poll"] < 1 and "caption" not in waited  # the synchronous caption still waits
    jobs.record_result(job_id, ImageResult(index=0, caption="a red circle"))
    threads[1].join(5)
    assert 0.3 < waited["caption"] < 5
    started = time.monotonic()
    waiter.wait_for_end(uuid.uuid4().hex, lambda _: JobStatus.QUEUED, timeout_s=10)  # a long poll that starts later
    assert time.monotonic() - started < 1
