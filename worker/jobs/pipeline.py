"""One job's path through a worker: load, decode, batch with other jobs, caption, record.

Plain functions over their collaborators, so they can be tested without Celery. Idempotent by job and image
index: a redelivered task skips images that have a result, and the job store keeps the first result anyway.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from common.errors import ImageError, InferenceError, WorkerFailure
from common.jobstore import JobStore
from common.schemas import CaptionTask, ErrorBody, ImageResult, JobStatus, JobTimings
from common.usage import ModelWork
from worker import metrics
from worker.decode.base import Decoding
from worker.jobs.batches import BatchKey, CaptionBatcher
from worker.jobs.batching import BatchFuture
from worker.jobs.priority import ForegroundGate
from worker.jobs.sources import ImageSource
from worker.model.output import Caption

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineDeps:
    jobs: JobStore
    source: ImageSource
    batcher: CaptionBatcher
    decoding: Decoding
    gate: ForegroundGate = field(default_factory=ForegroundGate)


def run_caption_task(task: CaptionTask, deps: PipelineDeps, alone: bool = False) -> JobStatus | None:
    """Caption every image of a job that has no result yet; return the job's status afterwards. A WorkerFailure
    (WorkerStopping included) propagates once the images the model captioned are recorded, the others left for
    another worker. `alone`: in batches of its own images only."""
    with deps.gate.interactive():
        return _run(task, deps, alone)


def _run(task: CaptionTask, deps: PipelineDeps, alone: bool) -> JobStatus | None:
    status, waited_s = deps.jobs.start(task.job_id)
    first_run = waited_s is not None
    if waited_s is not None:  # this run started the job: its wait is observed once, however often the job runs
        metrics.QUEUE_WAIT.observe(waited_s)
    if status is None:
        log.warning("job %s does not exist (expired?); dropping its task", task.job_id)
        return None
    if status.is_terminal():
        return status  # canceled before it ran, or a redelivery of a finished job
    started = time.monotonic()
    # A redelivered task skips the images that have results; a first run has none to look up.
    done = set() if first_run else deps.jobs.finished_indices(task.job_id)
    key = BatchKey.of(task.prompt, task.options.model_dump(), task.job_id if alone else None)
    in_flight: list[tuple[int, BatchFuture[Caption]]] = []
    handed_back: WorkerFailure | None = None  # the worker failed or is stopping
    todo = [ref for ref in task.images if ref.index not in done]
    with deps.batcher.arriving(len(todo)):  # a batch about to run waits a little for them
        for ref in todo:
            try:
                image = deps.decoding.load(deps.source.locate(task.job_id, ref))
            except ImageError as exc:
                status = _record(deps, task.job_id, ImageResult(index=ref.index, error=ErrorBody.of(exc)))
                continue
            try:
                in_flight.append((ref.index, deps.batcher.submit(key, image, share=task.tenant)))
            except WorkerFailure as exc:
                handed_back = exc
                break
    submitted = time.monotonic()
    results = []
    for index, future in in_flight:
        try:
            results.append(_outcome(index, future, task.job_id))
        except WorkerFailure as exc:
            handed_back = handed_back or exc
    timings = _timings(started, submitted, [f for _, f in in_flight]) if in_flight else None
    for result, work in results:
        status = _record(deps, task.job_id, result, timings, work)
        timings = None  # stored with the first result, before the job can end
    if handed_back is not None:  # what the model finished is kept; the rest goes to another worker
        raise handed_back
    return status


def _outcome(index: int, future: BatchFuture[Caption], job_id: str) -> tuple[ImageResult, ModelWork | None]:
    """The image's result, and what the model did for it (nothing, for an image that failed)."""
    try:
        caption = future.result()
        return (ImageResult(index=index, caption=caption.text, new_tokens=caption.new_tokens),
                ModelWork(caption.new_tokens, future.model_s))
    except ImageError as exc:  # undecodable after all, found as its batch was prepared (a JPEG left for the GPU)
        return ImageResult(index=index, error=ErrorBody.of(exc)), None
    except WorkerFailure:
        raise
    except Exception as exc:  # the model failed on this image alone (the batcher isolates it)
        log.exception("captioning image %d of job %s failed", index, job_id)
        return ImageResult(index=index, error=ErrorBody.of(InferenceError(str(exc)))), None


def _timings(started: float, submitted: float, futures: list[BatchFuture[Caption]]) -> JobTimings:
    """Stage times of a job's images: from the worker taking it to the last batch that held one of them."""
    batch_starts = [f.batch_started for f in futures if f.batch_started is not None]
    batch_ends = [f.batch_ended for f in futures if f.batch_ended is not None]
    if not batch_starts or not batch_ends:
        return JobTimings(fetch_decode_ms=round((submitted - started) * 1000, 2))
    return JobTimings(
        fetch_decode_ms=round((submitted - started) * 1000, 2),
        batch_wait_ms=round(max(0.0, min(batch_starts) - submitted) * 1000, 2),
        model_ms=round((max(batch_ends) - min(batch_starts)) * 1000, 2),
    )


def _record(
    deps: PipelineDeps, job_id: str, result: ImageResult, timings: JobTimings | None = None,
    work: ModelWork | None = None,
) -> JobStatus | None:
    _, status = deps.jobs.record_result(job_id, result, timings, work)
    return status
