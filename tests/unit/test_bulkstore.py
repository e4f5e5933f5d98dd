"""The bulk store on a real redis-server: the leased work queue, chunks recorded once, the window, the end, and the
deaths of workers blamed on the chunks and objects they held."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from common.bulk_schemas import BulkRequest, BulkStatus, ChunkFiles, DryRunReport, ObjectRef
from common.bulk_scripts import IN_HAND_KEY, LEASES_KEY, READY_KEY
from common.bulkstore import BulkStore, ChunkBlame, Claim, WorkItem
from common.settings import Settings
from common.webhooks import delivery_key


@pytest.fixture
def store(settings: Settings) -> Iterator[BulkStore]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    # The work queue is shared by all bulk jobs: start each test with none of another test's items.
    client.delete(READY_KEY, LEASES_KEY)
    yield BulkStore(client, ttl_seconds=600, lease_s=0.5, window=2)
    client.delete(READY_KEY, LEASES_KEY)


def new_job(store: BulkStore, **body: object) -> str:
    bulk_id = uuid.uuid4().hex
    store.create(bulk_id, BulkRequest.model_validate({"source": {"bucket": "photos"}, **body}), tenant="tests")
    return bulk_id


def objects(*keys: str) -> list[ObjectRef]:
    return [ObjectRef(key=key, etag="e", size=1) for key in keys]


def files(index: int, captioned: int = 1, failed: int = 0) -> ChunkFiles:
    return ChunkFiles(index=index, first_key="a", last_key="b", results_key="r", errors_key=None,
                      captioned=captioned, failed=failed, skipped=0)


def take(store: BulkStore, token: str = "t1") -> WorkItem:
    item = store.pop(timeout_s=1)
    assert item is not None
    assert store.claim(item, token).attempts == 1
    return item


def test_a_new_job_queues_its_first_planning_step_and_starts_running_when_it_is_taken(store: BulkStore) -> None:
    bulk_id = new_job(store)
    assert store.get(bulk_id, tenant=None).status is BulkStatus.QUEUED
    item = take(store)
    assert item == WorkItem("plan", bulk_id)
    assert store.get(bulk_id, tenant=None).status is BulkStatus.RUNNING
    assert store.claim(item, "t2") == Claim(0, "held")  # one worker at a time


def test_a_chunk_is_queued_once_and_recorded_once(store: BulkStore) -> None:
    bulk_id = new_job(store)
    take(store)
    assert store.add_chunk(bulk_id, 0, objects("a", "b")) == 1
    assert store.add_chunk(bulk_id, 0, objects("a", "b")) == 0  # a duplicate planning step changes nothing
    store.end_plan_step(bulk_id, "t1", listing_done=True)
    chunk = take(store)
    assert chunk == WorkItem("chunk", bulk_id, 0)
    assert [o.key for o in store.chunk(bulk_id, 0) or []] == ["a", "b"]
    assert store.complete_chunk(bulk_id, files(0, captioned=1, failed=1), objects=2)
    assert not store.complete_chunk(bulk_id, files(0, captioned=1, failed=1), objects=2)  # ran twice
    job = store.get(bulk_id, tenant=None)
    assert (job.progress.discovered, job.progress.captioned, job.progress.failed) == (2, 1, 1)
    assert job.progress.in_flight == 0 and job.progress.listing_complete
    assert store.pop(timeout_s=1) == WorkItem("final", bulk_id)  # the last chunk queues the final step


def test_the_window_holds_the_listing_back_until_chunks_finish(store: BulkStore) -> None:
    bulk_id = new_job(store)
    take(store)
    store.add_chunk(bulk_id, 0, objects("a"))
    store.add_chunk(bulk_id, 1, objects("b"))
    store.end_plan_step(bulk_id, "t1", listing_done=False)  # the window (2) is full: no planning queued
    queued = [store.pop(timeout_s=1), store.pop(timeout_s=1)]
    assert queued == [WorkItem("chunk", bulk_id, 0), WorkItem("chunk", bulk_id, 1)]
    assert store.pop(timeout_s=0.1) is None
    for item in queued:
        assert item is not None
        store.claim(item, "t")
    store.complete_chunk(bulk_id, files(0), objects=1)  # one of two left: half the window is free
    assert store.pop(timeout_s=1) == WorkItem("plan", bulk_id)


def test_work_whose_lease_runs_out_is_queued_again_and_its_old_holder_learns_it(store: BulkStore) -> None:
    new_job(store)
    item = take(store, "dead-worker")
    assert store.renew(item, "dead-worker") == "running"
    time.sleep(0.6)
    assert store.reap() == 1
    assert store.reap() == 0  # the lease was extended as it was queued again
    again = store.pop(timeout_s=1)
    assert again == item
    assert store.claim(item, "new-worker").attempts == 2  # the second attempt
    assert store.renew(item, "dead-worker") == "lost"


def test_a_reaped_item_still_in_the_queue_is_not_queued_twice(store: BulkStore) -> None:
    new_job(store)
    time.sleep(0.6)
    assert store.reap() == 1
    assert store.pop(timeout_s=1) is not None
    assert store.pop(timeout_s=0.1) is None


def test_cancel_ends_the_job_once_and_queues_its_manifest(store: BulkStore, settings: Settings) -> None:
    bulk_id = new_job(store, webhook={"url": "https://example.com/hook"})
    take(store)
    assert store.cancel(bulk_id, tenant="tests").status is BulkStatus.CANCELED
    assert store.end(bulk_id, BulkStatus.SUCCEEDED, None) is BulkStatus.CANCELED  # terminal stays terminal
    assert store.renew(WorkItem("plan", bulk_id), "t1") == "canceled"
    assert store.add_chunk(bulk_id, 0, objects("a")) == -2
    assert store.pop(timeout_s=1) == WorkItem("final", bulk_id)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert client.hget(delivery_key(bulk_id, "bulk.canceled"), "state") == "pending"


def test_dry_run_counts_are_added_once_per_stretch_of_the_listing(store: BulkStore) -> None:
    bulk_id = new_job(store, dry_run=True)
    counts = DryRunReport(objects=10, bytes=100, matched=8, matched_bytes=80, would_skip=3)
    assert store.dry_progress(bulk_id, "", "k10", counts)
    assert not store.dry_progress(bulk_id, "", "k10", counts)  # a repeated step finds the cursor moved
    report = store.get(bulk_id, tenant=None).dry_run_report
    assert report is not None
    assert (report.objects, report.matched, report.would_skip, report.to_caption) == (10, 8, 3, 5)


def queued_chunk(store: BulkStore, *keys: str) -> tuple[str, WorkItem]:
    """A job whose listing is done, with one chunk of these keys waiting."""
    bulk_id = new_job(store)
    take(store)
    store.add_chunk(bulk_id, 0, objects(*keys))
    store.end_plan_step(bulk_id, "t1", listing_done=True)
    item = store.pop(timeout_s=1)
    assert item == WorkItem("chunk", bulk_id, 0)
    return bulk_id, item


def dies_holding(store: BulkStore, item: WorkItem) -> None:
    """The item's holder stops renewing; a reaper finds its lease run out."""
    time.sleep(0.6)
    assert store.reap() == 1
    assert store.pop(timeout_s=1) == item


def test_a_chunk_whose_worker_died_is_blamed_and_the_death_is_not_one_of_its_attempts(store: BulkStore) -> None:
    bulk_id, item = queued_chunk(store, "a", "b", "c")
    assert store.claim(item, "first") == Claim(1, "running", 0)
    dies_holding(store, item)
    assert store.claim(item, "second") == Claim(1, "running", 1)  # runs carefully now; attempts still 1
    assert store.blame(bulk_id, 0) == ChunkBlame(1, {})
    assert store.blame(bulk_id, 0).cost("2") == 1  # a death every object of it has cost


def test_a_death_in_a_careful_run_is_blamed_on_the_object_in_hand_alone(store: BulkStore) -> None:
    bulk_id, item = queued_chunk(store, "a", "b", "c")
    store.claim(item, "first")
    dies_holding(store, item)
    store.claim(item, "careful")
    assert store.hold(item, "careful", "1") == "running"
    dies_holding(store, item)
    assert store.claim(item, "careful-2") == Claim(1, "running", 1)  # the chunk was not blamed again
    blame = store.blame(bulk_id, 0)
    assert blame == ChunkBlame(1, {"1": 1}) and (blame.cost("0"), blame.cost("1")) == (1, 2)
    # Between two objects nothing is in hand: a death then is blamed on nothing, and is one of its attempts.
    store.hold(item, "careful-2", "1")
    store.hold(item, "careful-2", None)
    dies_holding(store, item)
    assert store.claim(item, "careful-3") == Claim(2, "running", 1)
    assert store.blame(bulk_id, 0) == blame


def test_work_given_back_waiting_or_of_an_ended_job_is_not_blamed(store: BulkStore, settings: Settings) -> None:
    bulk_id, item = queued_chunk(store, "a")
    time.sleep(0.6)  # it waited in the list past its lease: nobody held it
    assert store.reap() == 1
    store.claim(item, "first")
    store.abandon(item, "first")  # it failed on its own (S3 away, say): given back
    time.sleep(0.6)
    assert store.reap() == 1
    assert store.claim(item, "second") == Claim(2, "running", 0)
    assert store.hold(item, "first", "0") == "lost"  # a stale holder names nothing
    store.hold(item, "second", "0")
    store.cancel(bulk_id, tenant="tests")
    time.sleep(0.6)
    store.reap()
    assert store.blame(bulk_id, 0) == ChunkBlame(0, {})
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert not client.hexists(IN_HAND_KEY, str(item))


def test_a_careful_chunk_recorded_leaves_nothing_in_hand(store: BulkStore, settings: Settings) -> None:
    bulk_id, item = queued_chunk(store, "a", "b")
    store.claim(item, "first")
    dies_holding(store, item)
    store.claim(item, "careful")
    store.hold(item, "careful", "1")
    assert store.complete_chunk(bulk_id, files(0, captioned=2), objects=2)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert not client.hexists(IN_HAND_KEY, str(item))
    assert store.pop(timeout_s=1) == WorkItem("final", bulk_id)


def test_a_bulk_job_keeps_the_request_id_that_made_it_for_the_worker_s_lines(store: BulkStore) -> None:
    bulk_id = uuid.uuid4().hex
    store.create(bulk_id, BulkRequest.model_validate({"source": {"bucket": "photos"}}), tenant="tests",
                 request_id="req-7")
    assert store.identity(bulk_id) == ("bulk", {"tenant": "tests", "request_id": "req-7"})
    assert store.identity(new_job(store))[1] == {"tenant": "tests"}  # made without one
    assert store.identity("gone") == (None, {})
