"""The job store on a real redis-server: transitions, idempotency, terminal states."""

from __future__ import annotations

import uuid

import pytest
import redis

from common.errors import JobNotFound
from common.jobstore import JobStore
from common.schemas import ErrorBody, GenerationOptions, ImageResult, JobStatus, JobTimings
from common.settings import Settings


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.redis_url, ttl_seconds=600)


def new_job(store: JobStore, images: int = 2) -> str:
    job_id = uuid.uuid4().hex
    store.create(job_id, images, "a picture of", GenerationOptions(num_beams=2), tenant="tests")
    return job_id


def caption(index: int, text: str = "a red circle") -> ImageResult:
    return ImageResult(index=index, caption=text)


def failure(index: int) -> ImageResult:
    return ImageResult(index=index, error=ErrorBody(code="invalid_image", message="bad"))


def test_create_and_get_round_trip(store: JobStore) -> None:
    job_id = new_job(store, 3)
    job = store.get(job_id, tenant=None)
    assert (job.id, job.status, job.num_images, job.prompt) == (job_id, JobStatus.QUEUED, 3, "a picture of")
    assert job.options == GenerationOptions(num_beams=2)
    assert job.results == [] and job.started_at is None and job.completed_at is None


def test_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get(uuid.uuid4().hex, tenant=None)
    assert store.mark_running(uuid.uuid4().hex) is None
    assert store.record_result(uuid.uuid4().hex, caption(0)) == (False, None)


def test_results_finish_the_job_in_index_order(store: JobStore) -> None:
    job_id = new_job(store, 2)
    assert store.mark_running(job_id) == JobStatus.RUNNING
    assert store.record_result(job_id, caption(1, "second")) == (True, JobStatus.RUNNING)
    assert store.record_result(job_id, caption(0, "first")) == (True, JobStatus.SUCCEEDED)
    job = store.get(job_id, tenant=None)
    assert [r.caption for r in job.results] == ["first", "second"]
    assert job.started_at is not None and job.completed_at is not None
    assert job.completed_at >= job.started_at >= job.created_at


def test_first_result_wins_when_a_task_runs_twice(store: JobStore) -> None:
    job_id = new_job(store, 2)
    store.record_result(job_id, caption(0, "first run"))
    written, _ = store.record_result(job_id, caption(0, "second run"))
    assert not written
    assert store.finished_indices(job_id) == {0}
    assert store.get(job_id, tenant=None).results[0].caption == "first run"


def test_some_failures_still_succeed(store: JobStore) -> None:
    job_id = new_job(store, 2)
    store.record_result(job_id, failure(0))
    assert store.record_result(job_id, caption(1)) == (True, JobStatus.SUCCEEDED)
    job = store.get(job_id, tenant=None)
    assert job.results[0].error is not None and job.error is None


def test_all_failures_fail_the_job(store: JobStore) -> None:
    job_id = new_job(store, 2)
    store.record_result(job_id, failure(0))
    assert store.record_result(job_id, failure(1)) == (True, JobStatus.FAILED)
    job = store.get(job_id, tenant=None)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == "all_images_failed"


def test_terminal_states_never_change(store: JobStore) -> None:
    job_id = new_job(store, 1)
    assert store.finish(job_id, JobStatus.CANCELED) == JobStatus.CANCELED
    assert store.mark_running(job_id) == JobStatus.CANCELED
    assert store.record_result(job_id, caption(0)) == (False, JobStatus.CANCELED)
    assert store.finish(job_id, JobStatus.FAILED) == JobStatus.CANCELED
    job = store.get(job_id, tenant=None)
    assert job.status == JobStatus.CANCELED and job.results == []


def test_mark_running_only_moves_queued_jobs(store: JobStore) -> None:
    job_id = new_job(store, 1)
    assert store.mark_running(job_id) == JobStatus.RUNNING
    started = store.get(job_id, tenant=None).started_at
    assert store.mark_running(job_id) == JobStatus.RUNNING
    assert store.get(job_id, tenant=None).started_at == started


def test_finish_refuses_a_non_terminal_status(store: JobStore) -> None:
    with pytest.raises(ValueError, match="not a terminal"):
        store.finish(new_job(store), JobStatus.RUNNING)


def test_small_uploads_live_with_the_job_until_it_ends(store: JobStore, settings: Settings) -> None:
    # Bytes that are not UTF-8 must come back exactly, although the store's client decodes replies.
    images = {0: b"\x89PNG\r\n\x1a\n\xff\x00", 1: bytes(range(256))}
    job_id = uuid.uuid4().hex
    store.create(job_id, 2, None, GenerationOptions(), uploads=images, tenant="tests")
    assert [store.upload(job_id, i) for i in (0, 1, 2)] == [images[0], images[1], None]
    ttl = redis.Redis.from_url(settings.redis_url).ttl(f"captioner:job:{job_id}:uploads")
    assert 0 < ttl <= 600  # an abandoned job's uploads expire with it
    store.record_result(job_id, caption(0))
    assert store.upload(job_id, 1) == images[1]  # still needed: the job has not ended
    store.record_result(job_id, caption(1))
    assert store.upload(job_id, 0) is None and store.upload(job_id, 1) is None


def test_a_canceled_job_frees_its_uploads(store: JobStore) -> None:
    job_id = uuid.uuid4().hex
    store.create(job_id, 1, None, GenerationOptions(), uploads={0: b"image"}, tenant="tests")
    store.finish(job_id, JobStatus.CANCELED)
    assert store.upload(job_id, 0) is None


def test_stage_times_are_stored_with_a_result_and_read_back_with_the_record_s_own(store: JobStore) -> None:
    job_id = new_job(store, 1)
    store.mark_running(job_id)
    store.record_result(job_id, caption(0), JobTimings(fetch_decode_ms=1.5, batch_wait_ms=2.0, model_ms=3.0))
    timings = store.get(job_id, tenant=None).timings
    assert timings is not None
    assert (timings.fetch_decode_ms, timings.batch_wait_ms, timings.model_ms) == (1.5, 2.0, 3.0)
    assert timings.queue_ms is not None and timings.queue_ms >= 0 and timings.record_ms is not None
