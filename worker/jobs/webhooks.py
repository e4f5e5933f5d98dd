"""Webhook delivery: sign (Standard Webhooks), POST, and decide what comes next, on threads of their own.

Delivery runs beside captioning, never in its way: a dispatcher thread claims due deliveries from Redis and
hands each to a small pool, so a slow or dead receiver costs a pool thread for at most the request timeout.
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from standardwebhooks.webhooks import Webhook

from common import log_context
from common.bulk_schemas import bulk_links
from common.bulkstore import BulkStore
from common.errors import JobNotFound, NoWebhookSecret, OutboundRequestError, UnsafeUrl
from common.jobstore import JobStore
from common.outbound import OutboundPolicy, post
from common.schemas import LOCAL_TENANT, DeliveryState, WebhookAttempt, WebhookEvent, job_links
from common.webhooks import DeliveryStore, RetrySchedule
from worker.metrics import WEBHOOK_DELIVERIES

log = logging.getLogger(__name__)

# An attempt's outcome as captioner_webhook_deliveries_total names it: what the delivery's state became.
OUTCOMES = {DeliveryState.DELIVERED: "delivered", DeliveryState.PENDING: "retrying", DeliveryState.DEAD: "dead"}

MAX_RETRY_AFTER_S = 24 * 3600.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def next_step(
    status_code: int | None, retry_after_s: float | None, attempts_made: int, schedule: RetrySchedule
) -> tuple[DeliveryState, float | None]:
    """After an attempt: delivered (2xx), dead (410, or the budget is spent), or retry after a delay."""
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryState.DELIVERED, None
    if status_code == 410:
        return DeliveryState.DEAD, None
    delay = schedule.delay_after(attempts_made)
    if delay is None:
        return DeliveryState.DEAD, None
    if status_code == 429 and retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return DeliveryState.PENDING, delay


class WebhookSender:
    """Delivers one (job, event): builds the payload once, signs each attempt with its tenant's secret, records
    the outcome."""

    def __init__(
        self,
        jobs: JobStore,
        deliveries: DeliveryStore,
        *,
        secrets: Callable[[str], list[str]],
        policy: OutboundPolicy,
        schedule: RetrySchedule,
        timeout_s: float,
        public_url: str | None = None,
        bulk: BulkStore | None = None,
    ) -> None:
        self._jobs = jobs
        self._bulk = bulk
        self._deliveries = deliveries
        self._secrets = secrets  # tenant -> the secrets that sign its webhooks (TenantStore.signing_secrets)
        self._policy = policy
        self._schedule = schedule
        self._timeout_s = timeout_s
        self._public_url = public_url or ""

    def payload(self, job_id: str, event: WebhookEvent, created_at: str) -> str:
        """{"type", "timestamp", "data"}: data is the (bulk) job object as GET /v1/jobs/{id} answers it."""
        job: BaseModel
        if event.value.startswith("bulk.") and self._bulk is not None:
            job = self._bulk.get(job_id, tenant=None).model_copy(update={"urls": bulk_links(job_id, self._public_url)})
        else:
            job = self._jobs.get(job_id, tenant=None).model_copy(update={"urls": job_links(job_id, self._public_url)})
        timestamp = datetime.fromtimestamp(float(created_at), tz=UTC).isoformat()
        return json.dumps({"type": event.value, "timestamp": timestamp, "data": job.model_dump(mode="json")})

    def headers(self, tenant: str, message_id: str, now: datetime, body: str) -> dict[str, str]:
        """Standard Webhooks headers, signed with each of the tenant's secrets (two while a rotation overlaps: the
        standard's space-separated signatures, any one of which a receiver accepts); NoWebhookSecret without one."""
        secrets = self._secrets(tenant or LOCAL_TENANT)
        if not secrets:
            raise NoWebhookSecret(f"Tenant {tenant!r} has no webhook secret.")
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(Webhook(secret).sign(message_id, now, body) for secret in secrets),
            "content-type": "application/json",
            "user-agent": "captioner-webhooks/1",
        }

    def send_once(self, tenant: str, url: str, message_id: str, body: str) -> int | None:
        """One signed attempt, no retries (bulk.progress): the receiver's status code, or None."""
        try:
            headers = self.headers(tenant, message_id, datetime.now(UTC), body)
            return post(url, body.encode(), headers, self._timeout_s, self._policy).status_code
        except (UnsafeUrl, OutboundRequestError, NoWebhookSecret) as exc:
            log.info("webhook %s to %s failed: %s (not retried)", message_id, url, exc.message)
            return None

    def deliver(self, job_id: str, event: WebhookEvent) -> None:
        record = self._deliveries.record(job_id, event)
        if record.get("state") != DeliveryState.PENDING:
            self._deliveries.drop(job_id, event)  # delivered, dead or expired meanwhile
            return
        now = datetime.now(UTC)
        attempts_made = int(record["attempts"]) + 1
        status_code, retry_after, error = None, None, None
        try:
            body = record.get("body") or self._deliveries.store_body_once(
                job_id, event, self.payload(job_id, event, record["created_at"])
            )
            headers = self.headers(record.get("tenant", ""), record["id"], now, body)
            response = post(record["url"], body.encode(), headers, self._timeout_s, self._policy)
            status_code = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        except (UnsafeUrl, OutboundRequestError) as exc:
            error = exc.message
        except NoWebhookSecret as exc:
            error = exc.message
            attempts_made = self._schedule.max_attempts  # unsignable: retrying cannot help
        except JobNotFound:
            error = "The job expired before its webhook could be built."
            attempts_made = self._schedule.max_attempts  # nothing left to send
        state, delay = next_step(status_code, retry_after, attempts_made, self._schedule)
        attempt = WebhookAttempt(
            at=now, status_code=status_code, error=error,
            next_attempt_at=now + timedelta(seconds=delay) if delay is not None else None,
        )
        self._deliveries.record_attempt(job_id, event, attempt, state)
        WEBHOOK_DELIVERIES.labels(outcome=OUTCOMES[state]).inc()
        log.info("webhook %s %s attempt %d: %s -> %s", record["id"], record["url"], attempts_made,
                 status_code or error, state.value)


class WebhookDispatcher:
    """Claims due deliveries and runs them on a bounded pool, until stopped."""

    def __init__(
        self, sender: WebhookSender, deliveries: DeliveryStore, *, concurrency: int, lease_s: float,
        poll_interval_s: float = 0.2,
    ) -> None:
        self._sender = sender
        self._deliveries = deliveries
        self._slots = threading.BoundedSemaphore(concurrency)
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="webhook")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)

    def start(self) -> WebhookDispatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            free = self._free_slots()
            claimed = []
            if free:
                try:
                    claimed = self._deliveries.claim_due(free, self._lease_s)
                except Exception:  # Redis away: the leases keep every delivery safe until it is back
                    log.exception("could not claim webhook deliveries")
            for job_id, event in claimed:
                self._pool.submit(self._run, job_id, event)  # runs on one of the slots taken above
            for _ in range(free - len(claimed)):
                self._slots.release()
            if not claimed:
                self._stop.wait(self._poll_interval_s)

    def _free_slots(self) -> int:
        """Take every free slot now; the loop gives back the ones it does not use."""
        taken = 0
        while taken < self._concurrency and self._slots.acquire(blocking=False):
            taken += 1
        return taken

    def _run(self, job_id: str, event: WebhookEvent) -> None:
        # The delivery's lines name its job, or its bulk run for a bulk event (deliveries are kept under either id).
        owner = {"bulk_id" if event.value.startswith("bulk.") else "job_id": job_id}
        try:
            with log_context.bound(**owner):
                self._sender.deliver(job_id, event)
        except Exception:  # a bug or an outage: the lease brings the delivery back later
            with log_context.bound(**owner):
                log.exception("webhook delivery of %s for job %s failed", event, job_id)
        finally:
            self._slots.release()
