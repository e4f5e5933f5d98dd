"""The final step of a bulk run: write its manifest, then end the job with the status its counts give."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from common.bulk_schemas import BulkManifest, BulkStatus, ChunkFiles, ManifestCounts
from common.bulkstore import BulkRecord, BulkStore
from common.errors import AllImagesFailed
from common.schemas import ErrorBody
from common.storage import ObjectStorage
from worker.bulk.layout import latest_manifest_key, run_manifest_key

log = logging.getLogger(__name__)

ALL_IMAGES_FAILED = ErrorBody.of(AllImagesFailed("No image of this bulk job could be captioned."))


def status_for(counts: ManifestCounts) -> tuple[BulkStatus, ErrorBody | None]:
    """succeeded (nothing failed, also for an empty source), partial, or failed when every image failed."""
    if not counts.failed:
        return BulkStatus.SUCCEEDED, None
    if counts.captioned or counts.skipped:
        return BulkStatus.PARTIAL, None
    return BulkStatus.FAILED, ALL_IMAGES_FAILED


def finish_run(bulk_id: str, record: BulkRecord, store: BulkStore, storage: ObjectStorage) -> None:
    """Write runs/{id}/manifest.json; a complete run also becomes {output}manifest.json, then ends the job.

    A canceled or failed run ended already; its manifest lists the chunks that finished, and is not what
    the next incremental run reuses (it does not cover the whole listing).
    """
    if record.request.dry_run:
        store.end(bulk_id, BulkStatus.SUCCEEDED, None, final_step=False)
        return
    chunks = store.chunk_files(bulk_id, ChunkFiles)
    counts = _count(chunks)
    complete = not record.status.is_terminal()
    status, error = status_for(counts) if complete else (record.status, None)
    job = store.get(bulk_id, tenant=None)
    key = run_manifest_key(record.output, bulk_id)
    manifest = BulkManifest(
        bulk_id=bulk_id, status=status, complete=complete, source=record.request.source, output=record.output,
        model=record.model, prompt=record.request.prompt, options=record.request.options,
        created_at=job.created_at, completed_at=job.completed_at or datetime.now(UTC), counts=counts,
        result_files=[c.results_key for c in chunks if c.results_key],
        error_files=[c.errors_key for c in chunks if c.errors_key],
        chunks=chunks, manifest_key=key,
    )
    output = storage.in_bucket(record.output.bucket)
    body = manifest.model_dump_json(indent=1).encode()
    output.put(key, body, "application/json")
    if complete:
        output.put(latest_manifest_key(record.output), body, "application/json")
    store.set_manifest(bulk_id, key)
    if complete:
        store.end(bulk_id, status, error, final_step=False)
        progress = store.get(bulk_id, tenant=None).progress
        if progress.images_per_second and counts.captioned >= 100:
            store.record_rate(progress.images_per_second)
    log.info("bulk %s: %s, %s; manifest %s", bulk_id, status.value, counts.model_dump(), key)


def _count(chunks: list[ChunkFiles]) -> ManifestCounts:
    counts = ManifestCounts()
    for chunk in chunks:
        counts.captioned += chunk.captioned
        counts.failed += chunk.failed
        counts.skipped += chunk.skipped
    counts.objects = counts.captioned + counts.failed + counts.skipped
    return counts
