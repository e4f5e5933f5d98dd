"""The API's collaborators, built once per process and reachable from any view."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api.waiting import JobWaiter
from common.admission import Admission
from common.batches import BatchStore
from common.bulkstore import BulkStore
from common.fairqueue import FairQueue
from common.files import FileStore
from common.idempotency import IdempotencyStore
from common.jobstore import JobStore
from common.outbound import OutboundPolicy
from common.queue import make_celery
from common.redis_client import service_redis
from common.replication import ReplicaWait
from common.retention import UploadJanitor
from common.settings import Settings
from common.storage import ObjectStorage
from common.tenants import TenantStore
from common.usage import UsageStore
from common.webhooks import DeliveryStore


@dataclass(frozen=True)
class ApiServices:
    settings: Settings
    jobs: JobStore
    storage: ObjectStorage
    celery: Celery
    deliveries: DeliveryStore
    outbound: OutboundPolicy
    bulk: BulkStore
    waiter: JobWaiter
    tenants: TenantStore
    admission: Admission
    idempotency: IdempotencyStore
    uploads: UploadJanitor
    queue: FairQueue
    files: FileStore
    batches: BatchStore
    usage: UsageStore
    replicas: ReplicaWait  # CAPTIONER_REDIS_WAIT_REPLICAS before a submission's 202

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiServices:
        # One client, one pool of connections, for every store: each fails fast when Redis is away.
        client = service_redis(settings)
        storage = ObjectStorage.from_settings(settings)
        bulk = BulkStore.from_settings(settings, client)
        return cls(
            settings=settings,
            jobs=JobStore(client, settings.job_ttl_seconds, settings.usage_retention_days),
            storage=storage,
            celery=make_celery(settings),
            deliveries=DeliveryStore(client, settings.job_ttl_seconds),
            outbound=OutboundPolicy.from_settings(settings),
            bulk=bulk,
            waiter=JobWaiter(client),
            tenants=TenantStore(client, settings.webhook_secret),
            admission=Admission(client),
            idempotency=IdempotencyStore(client, settings.idempotency_ttl_seconds),
            uploads=UploadJanitor(client, storage),
            queue=FairQueue(client, settings.job_ttl_seconds),
            files=FileStore(client, storage),
            batches=BatchStore(client, bulk),
            usage=UsageStore(client),
            replicas=ReplicaWait(client, settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
        )


def services() -> ApiServices:
    """The current app's collaborators (set by create_app)."""
    found: ApiServices = current_app.extensions["captioner"]
    return found
