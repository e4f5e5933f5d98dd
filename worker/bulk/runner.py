"""The bulk lane of a worker: threads that take work items from the bulk queue, and a reaper.

Bulk work has its own queue (a Redis list, see common/bulkstore.py), consumed by `bulk_concurrency` threads
apart from the Celery pool that serves interactive jobs, and its images go to the batcher's background lane:
interactive jobs are never stuck behind a chunk, on the queue or on the model. A chunk that a worker died holding
runs carefully, alone on the lane (worker/bulk/careful.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from common import log_context
from common.batches import BATCH_KIND
from common.bulk_schemas import BulkStatus
from common.bulkstore import BulkStore, Claim, WorkItem
from common.errors import BulkFailed, WorkerFailure, WorkerStopping
from common.schemas import ErrorBody
from worker.bulk.batch import BatchWork
from worker.bulk.careful import BulkLane, Careful
from worker.bulk.chunks import ChunkDeps, run_chunk
from worker.bulk.manifest import finish_run
from worker.bulk.planner import JobEnded, Lease, LeaseLost, Planner

log = logging.getLogger(__name__)

# Runs of an item that failed (a worker's deaths blamed on a chunk are not counted: CAPTIONER_MAX_ATTEMPTS bounds
# those per object, worker/bulk/careful.py) before its job fails rather than have it go round for ever.
MAX_ATTEMPTS = 5
# S3 answers that no retry will change: the bucket is gone, or the service may not use it.
_PERMANENT_S3_ERRORS = ("NoSuchBucket", "AccessDenied", "403", "AllAccessDisabled", "InvalidBucketName")


@dataclass(frozen=True)
class BulkDeps:
    store: BulkStore
    planner: Planner
    chunks: ChunkDeps
    batches: BatchWork  # the lane's other kind of record: OpenAI-style batches
    on_chunk_done: Callable[[str], None] = lambda bulk_id: None
    max_attempts: int = 3  # workers an object may cost before it fails untried (CAPTIONER_MAX_ATTEMPTS)


class BulkRunner:
    def __init__(self, deps: BulkDeps, concurrency: int) -> None:
        self._deps = deps
        self._stop = threading.Event()
        self._lane = BulkLane()
        self._threads = [
            threading.Thread(target=self._work, name=f"bulk-{i}", daemon=True) for i in range(concurrency)
        ]
        if concurrency:
            self._threads.append(threading.Thread(target=self._reap, name="bulk-reaper", daemon=True))

    def start(self) -> BulkRunner:
        for thread in self._threads:
            thread.start()
        return self

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def hand_back(self) -> None:
        """Take no more work, and give back what is held at its next lease renewal or caption (the worker stops)."""
        self._stop.set()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _reap(self) -> None:
        """Put back the work of dead workers; every worker does it, the script makes it safe to race."""
        interval = min(max(self._deps.store.lease_s / 4, 0.25), 10.0)
        while not self._stop.wait(interval):
            try:
                if reaped := self._deps.store.reap():
                    log.info("requeued %d bulk work items whose lease ran out", reaped)
            except Exception:  # Redis away past the worker's retries, or a bug: the next round tries again
                log.exception("could not reap bulk work")

    def _work(self) -> None:
        store = self._deps.store
        while not self._stop.is_set():
            if not self._lane.open(timeout_s=1.0):
                continue  # a careful chunk has this worker's lane: work taken now would only wait
            try:
                item = store.pop(timeout_s=1.0)
                if item is None:
                    continue
                token = uuid.uuid4().hex
                claim = store.claim(item, token)
            except RedisError:
                log.exception("could not take bulk work")
                self._stop.wait(1.0)
                continue
            if claim.attempts:
                try:
                    self.run_item(item, token, claim)
                except Exception:  # Redis away even for giving the item back: its lease brings it back
                    log.exception("bulk %s: could not end its attempt", item)

    def run_item(self, item: WorkItem, token: str, claim: Claim) -> None:
        """Run one claimed item; whatever happens, the item ends done, given back, or its job ended."""
        with log_context.bound(bulk_id=item.bulk_id):  # and its tenant and request id, once read
            self._run_item(item, token, claim)

    def _run_item(self, item: WorkItem, token: str, claim: Claim) -> None:
        store = self._deps.store
        lease = Lease(store, item, token, self._stop)
        try:
            kind, whose = store.identity(item.bulk_id)
            log_context.bind(**whose)  # undone with bulk_id, by run_item
            if kind is None:
                store.drop(item)
                return
            if claim.attempts > MAX_ATTEMPTS:
                self._fail(item, f"Part of this {kind} job ({item}) failed {MAX_ATTEMPTS} times; see the worker logs.")
                return
            careful = self._careful(item, claim)
            with self._lane.enter(alone=careful is not None, keep=lease.keep):
                self._dispatch(item, kind, lease, careful)
        except (JobEnded, LeaseLost) as exc:
            log.info("bulk %s: stopped (%s: %s)", item, type(exc).__name__, exc)
            if isinstance(exc, JobEnded):
                store.drop(item)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _PERMANENT_S3_ERRORS:
                self._fail(item, f"S3 refused this bulk job's bucket ({code}): {exc}")
            else:
                self._give_back(item, token, exc)
        except WorkerStopping:
            self._give_back(item, token, None)
        except WorkerFailure as failure:  # this worker's device is broken: the item goes to another worker now
            self._give_back(item, token, None, now=True)
            log.warning("bulk %s goes back to the queue: %s", item, failure.message)
        except (BotoCoreError, RedisError, Exception) as exc:  # retried when the lease runs out
            self._give_back(item, token, exc)

    def _careful(self, item: WorkItem, claim: Claim) -> Careful | None:
        """How to run a chunk that workers died holding, once one more death would spend its objects; None for any
        other item, run as ever. Most deaths are not the chunk's doing (an OOM kill, a lost host): until then it runs
        again at full speed, and a poisonous object still costs exactly CAPTIONER_MAX_ATTEMPTS workers."""
        if claim.deaths < max(1, self._deps.max_attempts - 1):
            return None
        log.warning("bulk %s runs carefully, one object at a time: workers died holding it %d times", item,
                    claim.deaths)
        return Careful(self._deps.store.blame(item.bulk_id, item.chunk), self._deps.max_attempts)

    def _dispatch(self, item: WorkItem, kind: str, lease: Lease, careful: Careful | None) -> None:
        store = self._deps.store
        if kind == BATCH_KIND:
            self._deps.batches.run(item, lease, careful)
            return
        record = store.record(item.bulk_id)
        if record is None:
            store.drop(item)
            return
        if item.kind == "plan":
            if record.status.is_terminal():
                store.drop(item)
                return
            self._deps.planner.step(record, lease)
        elif item.kind == "chunk":
            objects = store.chunk(item.bulk_id, item.chunk)
            if objects is None or record.status.is_terminal():
                store.drop(item)
                return
            started = time.monotonic()
            files, work = run_chunk(record, objects, lease, self._deps.chunks, careful)
            if store.complete_chunk(item.bulk_id, files, len(objects), work):
                self._deps.on_chunk_done(item.bulk_id)
            # One line per chunk run, as per job: every chunk has a line naming its run, tenant and request id.
            log.info("bulk %s chunk %d: %d objects, %d captioned, %d failed, %d skipped after %.0f ms", item.bulk_id,
                     item.chunk, len(objects), files.captioned, files.failed, files.skipped,
                     (time.monotonic() - started) * 1000)
        elif item.kind == "final":
            finish_run(item.bulk_id, record, store, self._deps.chunks.storage)
            store.drop(item)
        else:
            log.error("unknown bulk work item %s", item)
            store.drop(item)

    def _give_back(self, item: WorkItem, token: str, exc: BaseException | None, now: bool = False) -> None:
        if exc is not None:
            log.warning("bulk %s failed (%s: %s); it runs again when its lease ends", item, type(exc).__name__, exc)
        try:
            self._deps.store.abandon(item, token, retry_now=now or self.stopping)
        except RedisError:
            log.exception("could not give back %s; its lease brings it back", item)

    def _fail(self, item: WorkItem, message: str) -> None:
        log.error("bulk %s: %s", item.bulk_id, message)
        self._deps.store.end(item.bulk_id, BulkStatus.FAILED, ErrorBody.of(BulkFailed(message)))
        self._deps.store.drop(item)
