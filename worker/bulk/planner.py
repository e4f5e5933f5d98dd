"""Planning a bulk run: list the source page by page and queue chunks of keys, a bounded window at a time.

A planning step resumes the listing after the last key it queued (the job's cursor) and stops when the
window of queued chunks is full; finished chunks queue the next step. So neither the bucket's key list nor
one message per image ever sits in memory or in Redis, and a step that dies is simply run again: a chunk
index is queued once (see common/bulkstore.py), and the cursor moves only with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from common.bulk_schemas import BulkManifest, DryRunReport, ObjectRef
from common.bulkstore import BulkRecord, BulkStore, WorkItem
from common.errors import WorkerStopping
from common.storage import ListedObject, ObjectStorage
from worker.bulk.layout import KeyFilter, latest_manifest_key
from worker.bulk.prior import PriorResults

log = logging.getLogger(__name__)

NO_PRIOR = "-"  # the job's prior_manifest when there is no earlier complete run to reuse
DRY_RUN_OBJECTS_PER_STEP = 20_000


class JobEnded(Exception):
    """The bulk job was canceled or failed while this piece of its work ran."""


class LeaseLost(Exception):
    """Another worker took this piece of work over (this one was presumed dead)."""


@dataclass
class Lease:
    """Keeps a held work item's lease alive, renewing at most every third of the lease."""

    store: BulkStore
    item: WorkItem
    token: str
    stopping: threading.Event | None = None
    _renewed_at: float = 0.0

    def __post_init__(self) -> None:
        self._renewed_at = time.monotonic()

    def keep(self, progress: tuple[int, int, int] | None = None, force: bool = False) -> None:
        if self.stopping is not None and self.stopping.is_set():
            raise WorkerStopping(f"This worker is stopping; {self.item} goes back to the queue.")
        if not force and time.monotonic() - self._renewed_at < self.store.lease_s / 3:
            return
        self._check(self.store.renew(self.item, self.token, progress))

    def hold(self, part: str | None) -> None:
        """Renew, naming the object a careful run now has in hand (None: none), worker/bulk/careful.py."""
        if self.stopping is not None and self.stopping.is_set():
            raise WorkerStopping(f"This worker is stopping; {self.item} goes back to the queue.")
        self._check(self.store.hold(self.item, self.token, part))

    def _check(self, status: str) -> None:
        self._renewed_at = time.monotonic()
        if status == "lost":
            raise LeaseLost(str(self.item))
        if status not in ("queued", "running"):
            raise JobEnded(status)


class Planner:
    def __init__(self, store: BulkStore, storage: ObjectStorage, model: str, chunk_size: int) -> None:
        self._store = store
        self._storage = storage
        self._model = model
        self._chunk_size = chunk_size
        # Run manifests never change once written; a planner keeps the few it reads at every step.
        self._manifests: dict[tuple[str, str], BulkManifest | None] = {}

    def step(self, record: BulkRecord, lease: Lease) -> None:
        bulk_id = lease.item.bulk_id
        prior = self._prior(bulk_id, record)
        if record.request.dry_run:
            self._dry_run_step(record, lease, prior)
        else:
            self._chunk_step(record, lease, prior)

    def _chunk_step(self, record: BulkRecord, lease: Lease, prior: PriorResults | None) -> None:
        bulk_id, request = lease.item.bulk_id, record.request
        model = self._store.set_once(bulk_id, "model", self._model)
        room = self._store.window - (record.n_chunks - record.n_chunks_done)
        left = request.source.max_objects - record.discovered if request.source.max_objects else None
        index, pending = record.n_chunks, []
        for obj in self._matching(record, lease):
            if left is not None and left <= 0:
                break
            reusable = prior.lookup(obj.key) if prior else None
            if reusable and not reusable.made_like(obj.etag, model, request.prompt, request.options):
                reusable = None
            pending.append(ObjectRef(key=obj.key, etag=obj.etag, size=obj.size, prior=reusable))
            left = left - 1 if left is not None else None
            if len(pending) == self._chunk_size:
                self._add(bulk_id, index, pending)
                index, pending, room = index + 1, [], room - 1
                lease.keep()
                if room <= 0:
                    self._store.end_plan_step(bulk_id, lease.token, listing_done=False)
                    return
        if pending:
            self._add(bulk_id, index, pending)
        log.info("bulk %s: listing complete, %d chunks", bulk_id, index + (1 if pending else 0))
        self._store.end_plan_step(bulk_id, lease.token, listing_done=True)

    def _add(self, bulk_id: str, index: int, objects: list[ObjectRef]) -> None:
        added = self._store.add_chunk(bulk_id, index, objects)
        if added == 0:
            raise LeaseLost(f"chunk {index} of {bulk_id} was queued by another planning step")
        if added < 0:
            raise JobEnded("gone or ended")

    def _dry_run_step(self, record: BulkRecord, lease: Lease, prior: PriorResults | None) -> None:
        """Count a stretch of the listing without queueing anything; the cursor moves with the counts."""
        bulk_id, request = lease.item.bulk_id, record.request
        model = self._store.set_once(bulk_id, "model", self._model)
        keep = KeyFilter(request.source, record.output)
        cursor, counts, seen, last = record.cursor, DryRunReport(), 0, record.cursor
        left = request.source.max_objects - record.discovered if request.source.max_objects else None
        source = self._storage.in_bucket(request.source.bucket)
        for obj in source.list_objects(request.source.prefix, start_after=record.cursor):
            if left is not None and counts.matched >= left:
                break
            lease.keep()
            counts.objects, counts.bytes, seen = counts.objects + 1, counts.bytes + obj.size, seen + 1
            if keep(obj.key):
                counts.matched, counts.matched_bytes = counts.matched + 1, counts.matched_bytes + obj.size
                reusable = prior.lookup(obj.key) if prior else None
                if reusable and reusable.made_like(obj.etag, model, request.prompt, request.options):
                    counts.would_skip += 1
            if seen % 1000 == 0:
                cursor = self._commit_counts(bulk_id, cursor, obj.key, counts)
                counts = DryRunReport()
                lease.keep()
                if seen >= DRY_RUN_OBJECTS_PER_STEP:
                    self._store.end_plan_step(bulk_id, lease.token, listing_done=False)
                    return
            last = obj.key
        if counts.objects:
            self._commit_counts(bulk_id, cursor, last, counts)
        self._store.end_plan_step(bulk_id, lease.token, listing_done=True)

    def _commit_counts(self, bulk_id: str, cursor: str, new_cursor: str, counts: DryRunReport) -> str:
        if not self._store.dry_progress(bulk_id, cursor, new_cursor, counts):
            raise LeaseLost(f"the dry run of {bulk_id} moved on in another step")
        return new_cursor

    def _matching(self, record: BulkRecord, lease: Lease) -> Iterator[ListedObject]:
        """The listed objects the run takes, renewing the lease as it goes: long stretches of keys that
        do not match (a bucket of mostly other files) must not make this step look dead."""
        keep = KeyFilter(record.request.source, record.output)
        source = self._storage.in_bucket(record.request.source.bucket)
        for obj in source.list_objects(record.request.source.prefix, start_after=record.cursor):
            lease.keep()  # cheap: it renews at most every third of the lease
            if keep(obj.key):
                yield obj

    def _prior(self, bulk_id: str, record: BulkRecord) -> PriorResults | None:
        """The previous complete run's results over the same output, fixed when the run starts."""
        if not record.request.incremental:
            return None
        manifest_key = record.prior_manifest
        if not manifest_key:
            latest = self._storage.in_bucket(record.output.bucket).get_text(latest_manifest_key(record.output))
            found = BulkManifest.model_validate_json(latest).manifest_key if latest else NO_PRIOR
            manifest_key = self._store.set_once(bulk_id, "prior_manifest", found)
        if manifest_key == NO_PRIOR:
            return None
        manifest = self._manifest(record.output.bucket, manifest_key)
        if manifest is None:
            return None
        return PriorResults(self._storage.in_bucket(record.output.bucket), manifest, record.cursor)

    def _manifest(self, bucket: str, key: str) -> BulkManifest | None:
        if (bucket, key) not in self._manifests:
            if len(self._manifests) >= 4:
                self._manifests.clear()
            text = self._storage.in_bucket(bucket).get_text(key)
            self._manifests[bucket, key] = BulkManifest.model_validate_json(text) if text else None
        return self._manifests[bucket, key]
