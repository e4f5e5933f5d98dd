"""Everything a worker process holds for its whole life: the model (loaded once), the batcher, the stores."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.jobstore import JobStore
from common.outbound import OutboundPolicy
from common.settings import Settings
from common.storage import ObjectStorage
from common.webhooks import DeliveryStore, RetrySchedule
from worker.batching import DynamicBatcher
from worker.captioner import BlipCaptioner
from worker.pipeline import CaptionBatcher, PipelineDeps, make_batch_runner
from worker.sources import ImageSource
from worker.webhooks import WebhookDispatcher, WebhookSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    captioner: BlipCaptioner
    deps: PipelineDeps
    webhooks: WebhookDispatcher | None

    def close(self) -> None:
        self.deps.batcher.stop(timeout=30)
        if self.webhooks is not None:
            self.webhooks.stop()


def start_webhook_dispatcher(settings: Settings, jobs: JobStore) -> WebhookDispatcher | None:
    """Deliver webhooks from this process, on threads apart from captioning; None without a secret."""
    if not settings.webhook_secret:
        log.warning("CAPTIONER_WEBHOOK_SECRET is not set: this worker delivers no webhooks")
        return None
    deliveries = DeliveryStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    sender = WebhookSender(
        jobs, deliveries, secret=settings.webhook_secret, policy=OutboundPolicy.from_settings(settings),
        schedule=RetrySchedule.from_settings(settings), timeout_s=settings.webhook_timeout_seconds,
        public_url=settings.public_url,
    )
    # A claim outlives any one attempt, so only a dispatcher that died lets another one retry it.
    lease_s = 2 * settings.webhook_timeout_seconds + 5
    return WebhookDispatcher(
        sender, deliveries, concurrency=settings.webhook_concurrency, lease_s=lease_s
    ).start()


def build_runtime(settings: Settings) -> WorkerRuntime:
    """Load the model and start the batcher. Raises ModelUnavailable with a fix when the model won't load."""
    captioner = BlipCaptioner.load(settings.model, settings.device)
    batcher: CaptionBatcher = DynamicBatcher(
        make_batch_runner(captioner), settings.batch_size, settings.batch_wait_ms / 1000
    ).start()
    storage = ObjectStorage.from_settings(settings)
    jobs = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    deps = PipelineDeps(jobs=jobs, source=ImageSource(storage, settings), batcher=batcher)
    return WorkerRuntime(settings, captioner, deps, start_webhook_dispatcher(settings, jobs))
