"""One job's path through a worker: load, decode, batch with other jobs, caption, record.

Plain functions over their collaborators, so they can be tested without Celery. Idempotent by job and image
index: a redelivered task skips images that have a result, and the job store keeps the first result anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch

from common.errors import ImageError
from common.jobstore import JobStore
from common.schemas import CaptionTask, ErrorBody, GenerationOptions, ImageResult, JobStatus, JobTimings
from worker.batch_prep import BatchPreparer, DecodedBatch
from worker.batching import BatchFuture, DynamicBatcher, ItemFailed
from worker.captioner import BlipCaptioner
from worker.decode_pool import DecodePool
from worker.device_jpeg import BatchItem, DecodeJpeg, DeviceJpegDecoder, load_nvjpeg
from worker.fit import Picture
from worker.images import decode_image
from worker.preprocess import ModelImage
from worker.priority import ForegroundGate
from worker.sizing import automatic_decode_processes
from worker.sources import ImageSource

log = logging.getLogger(__name__)


class BatchKey(NamedTuple):
    """What the images of one batch must share."""

    prompt: str | None
    options: GenerationOptions


CaptionBatcher = DynamicBatcher[BatchKey, BatchItem, str]


def decoder_for(captioner: BlipCaptioner) -> Callable[[bytes], Picture]:
    """Bytes to the image the model will see: large JPEGs decoded at a reduced scale that still covers the
    model's input (Pillow's draft mode), then resized on the calling (decoding) thread, not the model's."""
    draft_to = captioner.input_size

    def decode(data: bytes) -> Picture:
        return captioner.prepare(decode_image(data, draft_to=draft_to))

    return decode


def decode_pool_for(captioner: BlipCaptioner, setting: int | Literal["auto"]) -> DecodePool | None:
    """decoder_for's work in processes of their own (CAPTIONER_DECODE_PROCESSES), or None: decoding stays on the
    jobs' threads when the setting is 0, when "auto" finds no GPU, and when the model has no fixed input size.

    "auto" on a GPU starts one process per core but two: one core for the thread driving the GPU, one for the
    jobs' own work. If that many cannot start (no room in /dev/shm, say), "auto" says so and uses the threads;
    a number asked for explicitly fails the worker's start with the reason instead."""
    automatic = setting == "auto"
    processes = automatic_decode_processes(captioner.device) if setting == "auto" else setting
    size, preprocessor = captioner.input_size, captioner.preprocessor
    if not processes:
        return None
    if size is None or preprocessor is None:
        log.warning("the model has no fixed input size: decoding stays on the jobs' threads")
        return None
    try:
        pool = DecodePool(processes, size, preprocessor.resample)
    except (RuntimeError, OSError) as exc:
        if not automatic:
            raise
        log.warning("decoding processes could not start (%s): decoding stays on the jobs' threads", exc)
        return None
    log.info("decoding and resizing images, and fetching bulk objects, in %d processes", processes)
    return pool


def device_jpeg_decoder_for(
    captioner: BlipCaptioner,
    wanted: bool,
    processes: DecodePool | None = None,
    load: Callable[[], DecodeJpeg] = load_nvjpeg,
) -> DeviceJpegDecoder | None:
    """The decoder of JPEGs on the GPU (CAPTIONER_DECODE_JPEG_ON_GPU), or None, with the reason logged: it needs
    a GPU, a model of fixed input size, and torchvision. What nvJPEG refuses is decoded on the batcher's thread;
    with the decoding `processes`, they take a share of each batch's large JPEGs."""
    if not wanted:
        return None
    size = captioner.input_size
    if captioner.device.type != "cuda":
        reason = f"ignored on {captioner.device.type} (GPU only)"
    elif size is None:
        reason = "ignored: the model has no fixed input size"
    else:
        try:
            decoder = DeviceJpegDecoder(load(), captioner.device, size, decoder_for(captioner), processes)
        except (ImportError, OSError) as exc:
            reason = f"ignored: torchvision does not import ({exc})"
        else:
            log.info("CAPTIONER_DECODE_JPEG_ON_GPU: baseline JPEGs are decoded and resized on %s%s", captioner.device,
                     ", sharing large ones with the decoding processes" if processes is not None else "")
            return decoder
    log.warning("CAPTIONER_DECODE_JPEG_ON_GPU: %s; JPEGs are decoded on the CPU", reason)
    return None


def make_batch_runner(
    captioner: BlipCaptioner, device_jpegs: DeviceJpegDecoder | None = None
) -> Callable[[BatchKey, list[BatchItem]], list[str | ItemFailed]]:
    def run(key: BatchKey, items: list[BatchItem]) -> list[str | ItemFailed]:
        batch = DecodedBatch.of(items, device_jpegs)
        return batch.merged(_caption_batch(captioner, key, batch.images, None))

    return run


def make_batch_preparer(
    captioner: BlipCaptioner, device_jpegs: DeviceJpegDecoder | None = None
) -> Callable[[BatchKey, list[BatchItem]], Callable[[], list[str | ItemFailed]]]:
    """The batcher's prepare stage: the batch's JPEGs decoded on the GPU (with `device_jpegs`), its pixels
    stacked and on the model's device (BatchPreparer); then what captions it."""

    preparer = BatchPreparer(captioner, device_jpegs)

    def prepare(key: BatchKey, items: list[BatchItem]) -> Callable[[], list[str | ItemFailed]]:
        batch, pixel_values = preparer(items)
        return lambda: batch.merged(_caption_batch(captioner, key, batch.images, pixel_values))

    return prepare


def _caption_batch(
    captioner: BlipCaptioner, key: BatchKey, images: list[ModelImage], pixel_values: torch.Tensor | None
) -> list[str]:
    if not images:
        return []
    started = time.perf_counter()
    captions = captioner.caption(images, key.prompt, key.options.model_dump(), pixel_values=pixel_values)
    on_gpu = sum(isinstance(image, torch.Tensor) for image in images)  # JPEGs decoded there
    log.info("captioned a batch of %d in %.0f ms (prompt %r%s%s)", len(images),
             (time.perf_counter() - started) * 1000, key.prompt, ", prepared ahead" if pixel_values is not None else "",
             f", {on_gpu} JPEGs decoded on the GPU" if on_gpu else "")
    return captions


@dataclass(frozen=True)
class PipelineDeps:
    jobs: JobStore
    source: ImageSource
    batcher: CaptionBatcher
    gate: ForegroundGate = field(default_factory=ForegroundGate)
    decode: Callable[[bytes], BatchItem] = decode_image


def run_caption_task(task: CaptionTask, deps: PipelineDeps) -> JobStatus | None:
    """Caption every image of a job that has no result yet; return the job's status afterwards."""
    with deps.gate.interactive():
        return _run(task, deps)


def _run(task: CaptionTask, deps: PipelineDeps) -> JobStatus | None:
    status, first_run = deps.jobs.start(task.job_id)
    if status is None:
        log.warning("job %s does not exist (expired?); dropping its task", task.job_id)
        return None
    if status.is_terminal():
        return status  # canceled before it ran, or a redelivery of a finished job
    started = time.monotonic()
    # A redelivered task skips the images that have results; a first run has none to look up.
    done = set() if first_run else deps.jobs.finished_indices(task.job_id)
    key = BatchKey(task.prompt, task.options)
    in_flight: list[tuple[int, BatchFuture[str]]] = []
    for ref in task.images:
        if ref.index in done:
            continue
        try:
            image = deps.source.picture(task.job_id, ref, deps.decode)
        except ImageError as exc:
            status = _record(deps, task.job_id, ImageResult(index=ref.index, error=_error(exc)))
            continue
        in_flight.append((ref.index, deps.batcher.submit(key, image)))
    submitted = time.monotonic()
    results = [_outcome(index, future, task.job_id) for index, future in in_flight]
    timings = _timings(started, submitted, [f for _, f in in_flight]) if in_flight else None
    for result in results:
        status = _record(deps, task.job_id, result, timings)
        timings = None  # stored with the first result, before the job can end
    return status


def _outcome(index: int, future: Future[str], job_id: str) -> ImageResult:
    try:
        return ImageResult(index=index, caption=future.result())
    except ImageError as exc:  # undecodable after all, found as its batch was prepared (a JPEG left for the GPU)
        return ImageResult(index=index, error=_error(exc))
    except Exception as exc:  # the model failed on this image alone (the batcher isolates it)
        log.exception("captioning image %d of job %s failed", index, job_id)
        return ImageResult(index=index, error=ErrorBody(code="inference_failed", message=str(exc)))


def _timings(started: float, submitted: float, futures: list[BatchFuture[str]]) -> JobTimings:
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
    deps: PipelineDeps, job_id: str, result: ImageResult, timings: JobTimings | None = None
) -> JobStatus | None:
    _, status = deps.jobs.record_result(job_id, result, timings)
    return status


def _error(exc: ImageError) -> ErrorBody:
    return ErrorBody(code=exc.code, message=exc.message)
