"""Everything a worker process holds for its whole life: the model (loaded once), the batcher, the stores,
the webhook dispatcher and the bulk lane."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from common.bulkstore import BulkStore
from common.jobstore import JobStore
from common.outbound import OutboundPolicy
from common.settings import Settings
from common.storage import ObjectStorage
from common.webhooks import DeliveryStore, RetrySchedule
from worker.batching import DynamicBatcher
from worker.bulk.chunks import ChunkDeps
from worker.bulk.notify import ProgressNotifier
from worker.bulk.planner import Planner
from worker.bulk.runner import BulkDeps, BulkRunner
from worker.captioner import BlipCaptioner
from worker.decode_pool import DecodePool
from worker.device_jpeg import BatchItem, with_device_jpegs
from worker.pipeline import (
    CaptionBatcher,
    PipelineDeps,
    decode_pool_for,
    decoder_for,
    device_jpeg_decoder_for,
    make_batch_preparer,
    make_batch_runner,
)
from worker.sizing import automatic_batch_size, automatic_concurrency
from worker.sources import ImageSource
from worker.webhooks import WebhookDispatcher, WebhookSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    captioner: BlipCaptioner
    deps: PipelineDeps
    webhooks: WebhookDispatcher | None
    bulk: BulkRunner
    fetch_pool: ThreadPoolExecutor
    progress: ProgressNotifier | None
    decode_pool: DecodePool | None = None
    concurrency: int = 32  # jobs held at once: the Celery pool's threads

    def close(self) -> None:
        # Bulk first: its threads give their work back while the batcher still runs.
        self.bulk.stop(timeout=30)
        self.fetch_pool.shutdown(wait=True, cancel_futures=True)
        if self.decode_pool is not None:
            self.decode_pool.close()
        self.deps.batcher.stop(timeout=30)
        if self.progress is not None:
            self.progress.close()
        if self.webhooks is not None:
            self.webhooks.stop()


def webhook_sender(
    settings: Settings, jobs: JobStore, bulk: BulkStore, deliveries: DeliveryStore
) -> WebhookSender | None:
    """The signer and sender of this process's webhooks; None without a secret."""
    if not settings.webhook_secret:
        log.warning("CAPTIONER_WEBHOOK_SECRET is not set: this worker delivers no webhooks")
        return None
    return WebhookSender(
        jobs, deliveries, secret=settings.webhook_secret, policy=OutboundPolicy.from_settings(settings),
        schedule=RetrySchedule.from_settings(settings), timeout_s=settings.webhook_timeout_seconds,
        public_url=settings.public_url, bulk=bulk,
    )


def start_webhook_dispatcher(
    settings: Settings, sender: WebhookSender, deliveries: DeliveryStore
) -> WebhookDispatcher:
    """Deliver webhooks from this process, on threads apart from captioning."""
    # A claim outlives any one attempt, so only a dispatcher that died lets another one retry it.
    lease_s = 2 * settings.webhook_timeout_seconds + 5
    return WebhookDispatcher(
        sender, deliveries, concurrency=settings.webhook_concurrency, lease_s=lease_s
    ).start()


def set_torch_threads(settings: Settings) -> None:
    """Apply CAPTIONER_TORCH_THREADS to this process (0 keeps torch's default)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    log.info("torch uses %d threads per model call on the CPU", torch.get_num_threads())


def build_runtime(settings: Settings) -> WorkerRuntime:
    """Load the model and start the batcher. Raises ModelUnavailable with a fix when the model won't load."""
    set_torch_threads(settings)
    captioner = BlipCaptioner.load(settings.model, settings.device)
    if settings.compile_encoder:
        compiled = captioner.fast is not None and captioner.fast.compile_encoder()
        log.log(logging.INFO if compiled else logging.WARNING, "CAPTIONER_COMPILE_ENCODER: %s", (
            "the vision encoder compiles on the first batch" if compiled
            else f"ignored on {captioner.device.type} (GPU only, and only for the fast path)"))
    batch_size = automatic_batch_size(captioner.device) if settings.batch_size == "auto" else settings.batch_size
    concurrency = (
        automatic_concurrency(batch_size) if settings.worker_concurrency == "auto" else settings.worker_concurrency
    )
    log.info("batches of up to %d images, from up to %d jobs at once", batch_size, concurrency)
    ahead = settings.prepare_ahead == "on" or (settings.prepare_ahead == "auto" and captioner.device.type == "cuda")
    decode_pool = decode_pool_for(captioner, settings.decode_processes)
    device_jpegs = device_jpeg_decoder_for(captioner, settings.decode_jpeg_on_gpu, decode_pool)
    batcher: CaptionBatcher = DynamicBatcher(
        make_batch_runner(captioner, device_jpegs), batch_size, settings.batch_wait_ms / 1000,
        make_batch_preparer(captioner, device_jpegs) if ahead else None,
    ).start()
    storage = ObjectStorage.from_settings(settings, job_threads=concurrency)
    jobs = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    decode_on_cpu = decode_pool.decode if decode_pool is not None else decoder_for(captioner)
    decode: Callable[[bytes], BatchItem] = decode_on_cpu
    if device_jpegs is not None:
        decode = with_device_jpegs(decode_on_cpu, device_jpegs)
    # Decoding processes fetch objects themselves, to spare this process a boto3 GET, but then decode them too;
    # with JPEGs decoded on the GPU, this process fetches, to leave the JPEGs encoded.
    fetching_pool = decode_pool if device_jpegs is None else None
    source = ImageSource(storage, jobs, settings, fetching_pool)
    deps = PipelineDeps(jobs=jobs, source=source, batcher=batcher, decode=decode)
    bulk = BulkStore.from_settings(settings)
    deliveries = DeliveryStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    sender = webhook_sender(settings, jobs, bulk, deliveries)
    progress = ProgressNotifier(bulk, sender, settings.bulk_progress_interval_seconds) if sender else None
    fetch_pool = ThreadPoolExecutor(settings.bulk_fetch_threads, thread_name_prefix="bulk-fetch")
    bulk_deps = BulkDeps(
        store=bulk,
        planner=Planner(bulk, storage, captioner.name, settings.bulk_chunk_size),
        chunks=ChunkDeps(
            bulk, storage, batcher, fetch_pool, captioner.name, settings.max_image_bytes, deps.gate, decode,
            fetching_pool,
        ),
        on_chunk_done=progress if progress is not None else lambda bulk_id: None,
    )
    return WorkerRuntime(
        settings, captioner, deps, start_webhook_dispatcher(settings, sender, deliveries) if sender else None,
        BulkRunner(bulk_deps, settings.bulk_concurrency).start(), fetch_pool, progress, decode_pool, concurrency,
    )
