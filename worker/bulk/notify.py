"""bulk.progress webhooks: throttled to one per interval per job, best-effort (one attempt, never retried).

The terminal events (bulk.completed, bulk.failed, bulk.canceled) are not sent from here: the scripts that end
a bulk job create durable deliveries for them, sent and retried like job webhooks.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from common.bulkstore import BulkStore
from common.schemas import WebhookEvent
from worker.jobs.webhooks import WebhookSender

log = logging.getLogger(__name__)


class ProgressNotifier:
    def __init__(self, store: BulkStore, sender: WebhookSender, interval_s: float) -> None:
        self._store = store
        self._sender = sender
        self._interval_s = interval_s
        # Sends happen off the bulk threads: a slow receiver must not slow captioning.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="bulk-progress")

    def __call__(self, bulk_id: str) -> None:
        """After a chunk finished: tell the job's webhook how far it got, unless it heard lately."""
        try:
            job = self._store.get(bulk_id, tenant=None)
            webhook = job.webhook
            if webhook is None or WebhookEvent.BULK_PROGRESS not in webhook.events or job.status.is_terminal():
                return
            if not self._store.progress_due(bulk_id, self._interval_s):
                return
            now = time.time()
            body = self._sender.payload(bulk_id, WebhookEvent.BULK_PROGRESS, repr(now))
            message_id = f"msg_{bulk_id}_bulk.progress_{int(now * 1000)}"
            self._pool.submit(self._sender.send_once, job.tenant, webhook.url, message_id, body)
        except Exception:  # best-effort by contract: never let a progress note fail a chunk
            log.exception("could not send bulk.progress for %s", bulk_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
