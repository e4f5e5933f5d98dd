"""Everything a worker process holds for its whole life, and the one place that picks and wires it: the model
(loaded once), the image decoding, the batcher, the stores, the webhook dispatcher and the bulk lane."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import redis

from common.batches import BatchStore
from common.bulkstore import BulkStore
from common.files import FileStore
from common.jobstore import JobStore
from common.outbound import OutboundPolicy
from common.redis_client import service_redis
from common.retention import UploadJanitor, UploadSweeper
from common.settings import Settings
from common.storage import ObjectStorage
from common.tenants import TenantStore
from common.webhooks import DeliveryStore, RetrySchedule
from common.workers import WorkerRegistry
from worker import metrics
from worker.bulk.batch import BatchDeps, BatchWork
from worker.bulk.chunks import ChunkDeps
from worker.bulk.notify import ProgressNotifier
from worker.bulk.planner import Planner
from worker.bulk.runner import BulkDeps, BulkRunner
from worker.decode.base import Decoding
from worker.decode.gpu_jpeg import DecodeJpeg, DeviceJpegDecoder, GpuJpegDecoding, load_nvjpeg
from worker.decode.processes import DecodePool, ProcessDecoding
from worker.decode.threads import ThreadDecoding
from worker.health import WorkerHealth
from worker.jobs.batches import BatchCaptioner, CaptionBatcher
from worker.jobs.batching import DynamicBatcher
from worker.jobs.pipeline import PipelineDeps
from worker.jobs.sources import ImageSource
from worker.jobs.webhooks import WebhookDispatcher, WebhookSender
from worker.model.captioner import BlipCaptioner, set_torch_threads
from worker.sizing import automatic_batch_size, automatic_concurrency, automatic_decode_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    redis: redis.Redis  # every store's client: it rides out a short Redis outage (common/redis_client.py)
    captioner: BlipCaptioner
    deps: PipelineDeps
    health: WorkerHealth
    webhooks: WebhookDispatcher
    bulk: BulkRunner
    fetch_pool: ThreadPoolExecutor
    progress: ProgressNotifier
    uploads: UploadSweeper
    concurrency: int = 32  # jobs held at once: the Celery pool's threads

    def hand_back(self) -> None:
        """The worker was asked to stop: the batch on the model finishes, and every job and bulk item held gives back
        what it has not captioned, for other workers to take at once. The bulk lane first, so that its items go
        back to the queue now rather than when their leases end."""
        self.bulk.hand_back()
        self.deps.batcher.hand_back()

    def close(self) -> None:
        # Bulk first: its threads give their work back while the batcher still runs.
        self.bulk.stop(timeout=30)
        self.fetch_pool.shutdown(wait=True, cancel_futures=True)
        self.deps.decoding.close()
        self.deps.batcher.stop(timeout=30)
        self.progress.close()
        self.webhooks.stop()
        self.uploads.stop()
        self.health.close()


def worker_redis(settings: Settings) -> redis.Redis:
    """The worker's one Redis client: a job in hand waits out a Redis restart rather than failing."""
    return service_redis(settings, ride_out_outages=True)


def thread_decoding(captioner: BlipCaptioner) -> ThreadDecoding:
    """Decoding on the jobs' threads, JPEGs at the smallest draft scale that covers the model's input, each image
    fitted to that input there rather than on the model's thread."""
    return ThreadDecoding(captioner.input_size, captioner.prepare)


def decode_pool_for(captioner: BlipCaptioner, setting: int | Literal["auto"]) -> DecodePool | None:
    """The decoding processes CAPTIONER_DECODE_PROCESSES asks for, or None: decoding stays on the jobs' threads
    when the setting is 0, when "auto" finds no GPU, and when the model has no fixed input size.

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


def gpu_jpeg_decoder_for(
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
            decoder = DeviceJpegDecoder(load(), captioner.device, size, thread_decoding(captioner).decode, processes)
        except (ImportError, OSError) as exc:
            reason = f"ignored: torchvision does not import ({exc})"
        else:
            log.info("CAPTIONER_DECODE_JPEG_ON_GPU: baseline JPEGs are decoded and resized on %s%s", captioner.device,
                     ", sharing large ones with the decoding processes" if processes is not None else "")
            return decoder
    log.warning("CAPTIONER_DECODE_JPEG_ON_GPU: %s; JPEGs are decoded on the CPU", reason)
    return None


def decoding_for(captioner: BlipCaptioner, settings: Settings) -> Decoding:
    """The worker's one way of decoding (worker/decode/base.py): processes where CAPTIONER_DECODE_PROCESSES gives
    some, else the jobs' threads; with CAPTIONER_DECODE_JPEG_ON_GPU, JPEGs on the GPU in front of either."""
    pool = decode_pool_for(captioner, settings.decode_processes)
    cpu: Decoding = ProcessDecoding(pool) if pool is not None else thread_decoding(captioner)
    gpu = gpu_jpeg_decoder_for(captioner, settings.decode_jpeg_on_gpu, pool)
    return cpu if gpu is None else GpuJpegDecoding(gpu, cpu)


def webhook_sender(
    settings: Settings, client: redis.Redis, jobs: JobStore, bulk: BulkStore, deliveries: DeliveryStore
) -> WebhookSender:
    """The signer and sender of this process's webhooks, each signed with its tenant's secret."""
    tenants = TenantStore(client, settings.webhook_secret)
    return WebhookSender(
        jobs, deliveries, secrets=tenants.signing_secrets, policy=OutboundPolicy.from_settings(settings),
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


def build_runtime(settings: Settings, name: str, stop_worker: Callable[[], None]) -> WorkerRuntime:
    """Load the model and start the batcher. Raises ModelLoadError with a fix when the model won't load.

    `name` is the worker's, as it reports its health; `stop_worker` stops it taking work and makes it exit, once
    its device has failed (worker/health.py)."""
    set_torch_threads(settings.torch_threads)
    captioner = BlipCaptioner.load(settings.model, settings.device, settings.dtype)
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
    client = worker_redis(settings)
    health = WorkerHealth(WorkerRegistry(client), name, stop_worker, settings.worker_silence_seconds)
    ahead = settings.prepare_ahead == "on" or (settings.prepare_ahead == "auto" and captioner.device.type == "cuda")
    decoding = decoding_for(captioner, settings)
    batches = BatchCaptioner(captioner, decoding, metrics.observe_batch)
    batcher: CaptionBatcher = DynamicBatcher(
        batches.run, batch_size, settings.batch_wait_ms / 1000, batches.prepare if ahead else None,
        on_worker_failure=health.failed,
    ).start()
    storage = ObjectStorage.from_settings(settings, job_threads=concurrency)
    jobs = JobStore(client, settings.job_ttl_seconds, settings.usage_retention_days)
    deps = PipelineDeps(jobs=jobs, source=ImageSource(storage, jobs, settings), batcher=batcher, decoding=decoding)
    bulk = BulkStore.from_settings(settings, client)
    deliveries = DeliveryStore(client, settings.job_ttl_seconds)
    sender = webhook_sender(settings, client, jobs, bulk, deliveries)
    progress = ProgressNotifier(bulk, sender, settings.bulk_progress_interval_seconds)
    fetch_pool = ThreadPoolExecutor(settings.bulk_fetch_threads, thread_name_prefix="bulk-fetch")
    chunks = ChunkDeps(
        bulk, storage, batcher, decoding, fetch_pool, captioner.name, settings.max_image_bytes, deps.gate,
    )
    openai_batches = BatchWork(BatchDeps(
        BatchStore(client, bulk), FileStore(client, storage), storage, chunks, settings, settings.bulk_chunk_size,
    ))
    bulk_deps = BulkDeps(
        store=bulk, planner=Planner(bulk, storage, captioner.name, settings.bulk_chunk_size), chunks=chunks,
        batches=openai_batches, on_chunk_done=progress, max_attempts=settings.max_attempts,
    )
    uploads = UploadSweeper(UploadJanitor(client, storage))
    return WorkerRuntime(
        settings, client, captioner, deps, health,
        start_webhook_dispatcher(settings, sender, deliveries),
        BulkRunner(bulk_deps, settings.bulk_concurrency).start(), fetch_pool, progress, uploads.start(), concurrency,
    )
