"""Captioning one chunk: read its objects straight from the source bucket, caption them in the background
lane of the worker's batcher, and write the chunk's results and errors files whole.

A file per chunk, written in one PUT under a name fixed by the chunk's index, is what makes a chunk that runs
twice harmless: the second run replaces the file rather than adding lines, so every object appears once. A chunk
that a worker died holding runs carefully (worker/bulk/careful.py): one object at a time.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from common.bulk_schemas import ChunkFiles, ErrorLine, ObjectRef, ResultLine
from common.bulkstore import BulkRecord, BulkStore
from common.errors import ImageError, InferenceError, InternalError, WorkerFailure
from common.schemas import ErrorBody
from common.storage import ObjectStorage
from common.usage import ModelWork
from worker.bulk.careful import Careful
from worker.bulk.layout import errors_key, results_key
from worker.bulk.planner import Lease
from worker.decode.base import Decoding, StoredObject
from worker.jobs.batches import BatchKey, CaptionBatcher
from worker.jobs.batching import BatchFuture
from worker.jobs.priority import ForegroundGate
from worker.model.output import Caption

log = logging.getLogger(__name__)


class ChunkRetry(Exception):
    """The service, not an image, failed (S3 away, the worker stopping): the whole chunk runs again later."""


@dataclass(frozen=True)
class ChunkDeps:
    store: BulkStore
    storage: ObjectStorage
    batcher: CaptionBatcher
    decoding: Decoding  # fetches each object from the source bucket as it sees fit, and decodes it
    fetch_pool: ThreadPoolExecutor
    model: str
    max_image_bytes: int
    gate: ForegroundGate


def run_chunk(
    record: BulkRecord, objects: list[ObjectRef], lease: Lease, deps: ChunkDeps, careful: Careful | None = None
) -> tuple[ChunkFiles, ModelWork]:
    """Caption the chunk's objects that have no reusable result (carefully, when given how) and write the chunk's
    files; return them, and what the model did for the chunk (for usage, counted when the chunk is recorded)."""
    request = record.request
    key = BatchKey.of(request.prompt, request.options.model_dump())
    source = deps.storage.in_bucket(request.source.bucket)
    to_caption = [(position, obj) for position, obj in enumerate(objects) if obj.prior is None]
    started = start_captions(
        [(str(position), functools.partial(StoredObject, source, obj.key, deps.max_image_bytes), key)
         for position, obj in to_caption],
        lease, deps, careful,
    )
    outcomes = {position: future for (position, _), future in zip(to_caption, started, strict=True)}
    captioned = failed = 0
    work = ModelWork()
    lines: list[ResultLine] = []
    errors: list[ErrorLine] = []
    for position, obj in enumerate(objects):
        if obj.prior is not None:
            lines.append(obj.prior)  # the previous run's result still holds: carry it into this run's files
            continue
        caption, error = wait_caption(outcomes[position], lease, (captioned, failed, 0))
        if caption is not None:
            captioned += 1
            work += ModelWork(caption.new_tokens, outcomes[position].model_s)
            lines.append(ResultLine(key=obj.key, etag=obj.etag, caption=caption.text, model=deps.model,
                                    prompt=request.prompt, options=request.options))
        else:
            failed += 1
            errors.append(ErrorLine(key=obj.key, etag=obj.etag, error=error or _internal()))
    lease.keep(force=True)  # the job may have been canceled meanwhile: then write nothing
    output = deps.storage.in_bucket(record.output.bucket)
    files = ChunkFiles(
        index=lease.item.chunk, first_key=objects[0].key, last_key=objects[-1].key,
        results_key=results_key(record.output, lease.item.bulk_id, lease.item.chunk) if lines else None,
        errors_key=errors_key(record.output, lease.item.bulk_id, lease.item.chunk) if errors else None,
        captioned=captioned, failed=failed, skipped=len(objects) - captioned - failed,
    )
    if files.results_key:
        output.put(files.results_key, _jsonl(lines), "application/x-ndjson")
    if files.errors_key:
        output.put(files.errors_key, _jsonl(errors), "application/x-ndjson")
    return files, work


def start_captions(
    work: Sequence[tuple[str, Callable[[], bytes | StoredObject], BatchKey]], lease: Lease, deps: ChunkDeps,
    careful: Careful | None = None,
) -> list[BatchFuture[Caption]]:
    """Queue each image (its part of the chunk, the callable that reads it on the fetch pool, its batch key) for
    the background lane, pausing while interactive jobs run; one future per image, in order, holding its caption
    or its error. A careful run takes one image at a time and returns when all are done."""
    if careful is not None:
        return _one_at_a_time(work, lease, deps, careful)
    # Decoded images wait for the model; bound how many, so a chunk of huge photos cannot exhaust memory.
    slots = threading.BoundedSemaphore(2 * deps.batcher.max_batch_size)
    futures = []
    for _, read, key in work:
        while not (deps.gate.wait_until_idle(1.0) and slots.acquire(timeout=1.0)):
            lease.keep()
        futures.append(_start(read, deps, key, slots.release))
    return futures


def _one_at_a_time(
    work: Sequence[tuple[str, Callable[[], bytes | StoredObject], BatchKey]], lease: Lease, deps: ChunkDeps,
    careful: Careful,
) -> list[BatchFuture[Caption]]:
    """Each image read, decoded and captioned before the next, named in Redis while it is in hand, so that a death
    meanwhile is blamed on it alone; an image that has cost too many workers fails untried."""
    futures: list[BatchFuture[Caption]] = []
    for part, read, key in work:
        outcome: BatchFuture[Caption]
        if (spent := careful.spent(part)) is not None:
            log.warning("bulk %s: its image %s is not tried again: %s", lease.item, part, spent.message)
            outcome = BatchFuture()
            outcome.set_exception(spent)
            futures.append(outcome)
            continue
        while not deps.gate.wait_until_idle(1.0):
            lease.keep()
        lease.hold(part)
        outcome = _start(read, deps, key, lambda: None)
        while not wait([outcome], timeout=1.0).done:
            lease.keep()
        lease.hold(None)
        if isinstance(failure := outcome.exception(), ChunkRetry | WorkerFailure):
            raise failure  # the chunk runs again later, as it would have from wait_caption
        futures.append(outcome)
    return futures


def _start(
    read: Callable[[], bytes | StoredObject], deps: ChunkDeps, key: BatchKey, release: Callable[[], None]
) -> BatchFuture[Caption]:
    """Fetch and decode on the pool, then queue for the model; the returned future holds the caption."""
    outcome: BatchFuture[Caption] = BatchFuture()

    def fetch_and_submit() -> None:
        try:
            image = deps.decoding.load(read())
            captioned = deps.batcher.submit(key, image, background=True)
        except (ImageError, WorkerFailure) as exc:
            release()
            outcome.set_exception(exc)
            return
        except Exception as exc:
            release()
            outcome.set_exception(ChunkRetry(f"{type(exc).__name__}: {exc}"))
            return
        captioned.add_done_callback(lambda _: _copy(captioned, outcome, release))

    # In the chunk's log context: its lines, and the batches its images join, name its bulk run.
    deps.fetch_pool.submit(contextvars.copy_context().run, fetch_and_submit)
    return outcome


def _copy(source: BatchFuture[Caption], target: BatchFuture[Caption], release: Callable[[], None]) -> None:
    release()
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.model_s = source.model_s
        target.set_result(source.result())


def wait_caption(
    outcome: BatchFuture[Caption], lease: Lease, progress: tuple[int, int, int]
) -> tuple[Caption | None, ErrorBody | None]:
    """The caption, or the per-image error; ChunkRetry and WorkerFailure propagate, for the chunk to run again."""
    while True:
        try:
            return outcome.result(timeout=1.0), None
        except TimeoutError:
            lease.keep(progress)
        except ImageError as exc:
            return None, ErrorBody.of(exc)
        except (ChunkRetry, WorkerFailure):
            raise
        except Exception as exc:  # the model failed on this image alone (the batcher isolates it)
            log.exception("captioning a bulk image failed")
            return None, ErrorBody.of(InferenceError(str(exc)))


def _internal() -> ErrorBody:
    return ErrorBody.of(InternalError("The image failed for an unknown reason."))


def _jsonl(lines: list[ResultLine] | list[ErrorLine]) -> bytes:
    return "".join(line.model_dump_json() + "\n" for line in lines).encode()
