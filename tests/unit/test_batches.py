"""Batches (OpenAI's Batch API) as records of the bulk lane, on a real redis-server: OpenAI's statuses and times as
the worker moves a batch on, cancellation and expiry, and each tenant seeing only its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from common.batch_input import BatchLineError
from common.batches import BatchChunkFiles, BatchCreate, BatchNotCancellable, BatchStore
from common.bulk_schemas import BulkStatus
from common.bulk_scripts import LEASES_KEY, READY_KEY
from common.bulkstore import BulkStore, WorkItem
from common.errors import JobNotFound
from common.settings import Settings

REQUEST = BatchCreate(input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h",
                      metadata={"run": "7"})


@pytest.fixture
def stores(settings: Settings) -> Iterator[tuple[BatchStore, BulkStore]]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete(READY_KEY, LEASES_KEY)
    bulk = BulkStore(client, ttl_seconds=600, lease_s=30, window=4)
    yield BatchStore(client, bulk), bulk
    client.delete(READY_KEY, LEASES_KEY)


def test_a_batch_moves_through_openais_statuses(stores: tuple[BatchStore, BulkStore]) -> None:
    batches, bulk = stores
    created = batches.create(REQUEST, tenant="a", model="tiny_blip")
    assert (created.status, created.request_counts.total, created.metadata) == ("validating", 0, {"run": "7"})
    assert created.expires_at == created.created_at + 24 * 3600
    batches.validated(created.id, 3, [(0, 1), (100, 3)], 150)
    record = batches.record(created.id)
    assert record is not None and record.chunk(0).end == 100 and record.chunk(1).end == 150
    assert batches.get(created.id, tenant="a").status == "in_progress"
    for index in (0, 1):
        assert bulk.add_raw_chunk(created.id, index, record.chunk(index).model_dump_json(), str(index), 2) == 1
    plan = WorkItem("plan", created.id)
    assert bulk.claim(plan, "planner").attempts == 1
    bulk.end_plan_step(created.id, "planner", listing_done=True)
    for index, (answered, failed) in enumerate(((2, 0), (0, 1))):
        files = BatchChunkFiles(index=index, first_key="1", last_key="2", results_key=None, errors_key=None,
                                captioned=answered, failed=failed, skipped=0, input_tokens=10 * answered,
                                output_tokens=answered)
        assert bulk.complete_chunk(created.id, files, answered + failed)
    finalizing = batches.get(created.id, tenant="a")
    assert (finalizing.status, finalizing.request_counts.completed, finalizing.request_counts.failed) == (
        "finalizing", 2, 1)
    assert (finalizing.usage.input_tokens, finalizing.usage.output_tokens, finalizing.usage.total_tokens) == (20, 2, 22)
    batches.finalizing(created.id)
    batches.finalized(created.id, "file-out", None)
    bulk.end(created.id, BulkStatus.SUCCEEDED, None, final_step=False)
    done = batches.get(created.id, tenant="a")
    assert (done.status, done.output_file_id, done.error_file_id) == ("completed", "file-out", None)
    assert done.completed_at is not None and done.finalizing_at is not None and done.cancelled_at is None
    with pytest.raises(BatchNotCancellable):
        batches.cancel(created.id, tenant="a")


def test_cancelling_then_cancelled_once_the_files_are_written(stores: tuple[BatchStore, BulkStore]) -> None:
    batches, bulk = stores
    batch_id = batches.create(REQUEST, tenant="a", model="m").id
    cancelling = batches.cancel(batch_id, tenant="a")
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    # The end queued the final step, which writes the files.
    assert bulk._redis.zscore(LEASES_KEY, str(WorkItem("final", batch_id))) is not None
    assert batches.cancel(batch_id, tenant="a").status == "cancelling"
    batches.finalized(batch_id, None, "file-err")
    cancelled = batches.get(batch_id, tenant="a")
    assert (cancelled.status, cancelled.error_file_id) == ("cancelled", "file-err")
    assert cancelled.cancelled_at is not None


def test_an_expired_batch_ends_expired_once_finalized(stores: tuple[BatchStore, BulkStore]) -> None:
    batches, _ = stores
    batch_id = batches.create(REQUEST, tenant="a", model="m").id
    record = batches.record(batch_id)
    assert record is not None and not record.expired(time.time())
    assert record.expired(time.time() + 24 * 3600 + 1)
    batches.expire(batch_id)
    assert batches.get(batch_id, tenant="a").status == "finalizing"
    found = batches.record(batch_id)
    assert found is not None and found.ended_by == "batch_expired"
    batches.finalized(batch_id, None, "file-err")
    expired = batches.get(batch_id, tenant="a")
    assert expired.status == "expired" and expired.expired_at is not None


def test_a_bad_file_fails_with_its_lines(stores: tuple[BatchStore, BulkStore]) -> None:
    batches, _ = stores
    batch_id = batches.create(REQUEST, tenant="a", model="m").id
    batches.fail_validation(batch_id, [BatchLineError(code="invalid_request", message="Line 2: no.", line=2)])
    failed = batches.get(batch_id, tenant="a")
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and [e.line for e in failed.errors.data] == [2]


def test_a_tenant_sees_only_its_batches_and_bulk_sees_none(stores: tuple[BatchStore, BulkStore]) -> None:
    batches, bulk = stores
    mine, theirs = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    batch_id = batches.create(REQUEST, tenant=mine, model="m").id
    with pytest.raises(JobNotFound):
        batches.get(batch_id, tenant=theirs)
    with pytest.raises(JobNotFound):
        batches.cancel(batch_id, tenant=theirs)
    with pytest.raises(JobNotFound):
        bulk.get(batch_id, tenant=mine)  # a batch is no bulk job on /v1/bulk
    assert [b.id for b in batches.page(mine, 10, None).data] == [batch_id]
    assert batches.page(theirs, 10, None).data == []
    assert bulk.page(mine, 10).data == []
