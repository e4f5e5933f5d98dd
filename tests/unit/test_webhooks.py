"""Webhook deliveries: the schedule, the decisions, events created with job transitions, signed sends."""

from __future__ import annotations

import base64
import itertools
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook

from common.jobstore import JobStore
from common.outbound import OutboundPolicy
from common.schemas import (
    DeliveryState,
    GenerationOptions,
    ImageResult,
    JobStatus,
    WebhookEvent,
    WebhookSubscription,
)
from common.settings import Settings
from common.tenants import TenantStore
from common.webhooks import DeliveryStore, RetrySchedule
from worker.jobs.webhooks import WebhookSender, next_step, parse_retry_after

SECRET = "whsec_" + base64.b64encode(b"unit-test-secret").decode()


def test_the_default_schedule_spans_about_a_day_in_ten_attempts() -> None:
    schedule = RetrySchedule.from_settings(Settings())
    delays = [schedule.delay_after(n, random.Random(n)) for n in range(1, 11)]
    assert delays[-1] is None  # the tenth attempt was the last
    waits = [d for d in delays if d is not None]
    assert len(waits) == 9 and all(b > a for a, b in itertools.pairwise(waits[:7]))  # then capped
    assert 16 * 3600 < sum(waits) < 30 * 3600


def test_delays_are_jittered_within_a_fifth_and_capped() -> None:
    schedule = RetrySchedule(max_attempts=50, first_delay_s=10, max_delay_s=100)
    samples = {schedule.delay_after(1, random.Random(seed)) for seed in range(50)}
    assert len(samples) > 40 and all(8 <= s <= 12 for s in samples if s is not None)
    assert all(80 <= (schedule.delay_after(30) or 0) <= 120 for _ in range(20))


@pytest.mark.parametrize(
    ("status", "retry_after", "attempts", "state", "min_delay"),
    [
        (200, None, 1, DeliveryState.DELIVERED, None),
        (204, None, 3, DeliveryState.DELIVERED, None),
        (410, None, 1, DeliveryState.DEAD, None),
        (500, None, 1, DeliveryState.PENDING, 0.8),
        (None, None, 1, DeliveryState.PENDING, 0.8),  # network error
        (302, None, 1, DeliveryState.PENDING, 0.8),  # redirects are failures, not followed
        (429, 30.0, 1, DeliveryState.PENDING, 30.0),
        (500, None, 4, DeliveryState.DEAD, None),  # budget spent
    ],
)
def test_next_step(
    status: int | None, retry_after: float | None, attempts: int, state: DeliveryState, min_delay: float | None
) -> None:
    schedule = RetrySchedule(max_attempts=4, first_delay_s=1, max_delay_s=10)
    got_state, delay = next_step(status, retry_after, attempts, schedule)
    assert got_state == state
    if min_delay is None:
        assert delay is None
    else:
        assert delay is not None and delay >= min_delay


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Sun, 29 Nov 2026 12:01:30 GMT", now) == 90
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    assert parse_retry_after("99999999", now) == 24 * 3600


@pytest.fixture
def stores(settings: Settings) -> tuple[JobStore, DeliveryStore]:
    return JobStore.from_url(settings.redis_url, 600), DeliveryStore.from_url(settings.redis_url, 600)


def new_job(jobs: JobStore, events: list[WebhookEvent] | None, images: int = 1) -> str:
    job_id = uuid.uuid4().hex
    webhook = None
    if events is not None:
        webhook = WebhookSubscription(url="http://receiver.example/hook", events=events)
    jobs.create(job_id, images, None, GenerationOptions(), webhook, tenant="tests")
    return job_id


def events_of(deliveries: DeliveryStore, job_id: str) -> list[str]:
    return [d.event.value for d in deliveries.list_for_job(job_id)]


def test_transitions_create_exactly_the_subscribed_deliveries(stores: tuple[JobStore, DeliveryStore]) -> None:
    jobs, deliveries = stores
    job_id = new_job(jobs, [WebhookEvent.STARTED, WebhookEvent.SUCCEEDED])
    jobs.mark_running(job_id)
    jobs.mark_running(job_id)  # a redelivered task: no second event
    jobs.record_result(job_id, ImageResult(index=0, caption="x"))
    jobs.record_result(job_id, ImageResult(index=0, caption="y"))
    listed = deliveries.list_for_job(job_id)
    assert [d.event for d in listed] == [WebhookEvent.STARTED, WebhookEvent.SUCCEEDED]
    assert [d.id for d in listed] == [f"msg_{job_id}_job.started", f"msg_{job_id}_job.succeeded"]
    assert all(d.state == DeliveryState.PENDING and d.url == "http://receiver.example/hook" for d in listed)


def test_default_events_are_the_terminal_ones(stores: tuple[JobStore, DeliveryStore]) -> None:
    jobs, deliveries = stores
    canceled = new_job(jobs, list(WebhookSubscription(url="http://x").events))
    jobs.mark_running(canceled)
    jobs.finish(canceled, JobStatus.CANCELED)
    assert events_of(deliveries, canceled) == ["job.canceled"]
    unsubscribed = new_job(jobs, None)
    jobs.mark_running(unsubscribed)
    jobs.record_result(unsubscribed, ImageResult(index=0, caption="x"))
    assert events_of(deliveries, unsubscribed) == []


def test_claims_are_leased(stores: tuple[JobStore, DeliveryStore]) -> None:
    jobs, deliveries = stores
    job_id = new_job(jobs, [WebhookEvent.FAILED])
    jobs.finish(job_id, JobStatus.FAILED)
    claimed = deliveries.claim_due(100, lease_s=2)
    assert (job_id, WebhookEvent.FAILED) in claimed
    assert (job_id, WebhookEvent.FAILED) not in deliveries.claim_due(100, lease_s=2)
    time.sleep(2.1)  # the claimant died: the lease runs out and the delivery is due again
    assert (job_id, WebhookEvent.FAILED) in deliveries.claim_due(100, lease_s=2)


@pytest.fixture
def sender(stores: tuple[JobStore, DeliveryStore]) -> WebhookSender:
    jobs, deliveries = stores
    return WebhookSender(
        jobs, deliveries, secrets=lambda tenant: [SECRET] if tenant == "tests" else [],
        policy=OutboundPolicy(allow_private=True, allowed_ports=None),
        schedule=RetrySchedule(max_attempts=3, first_delay_s=0.01, max_delay_s=0.01), timeout_s=2,
        public_url="https://captioner.example",
    )


def test_each_attempt_is_signed_with_one_id_and_one_body(
    stores: tuple[JobStore, DeliveryStore], sender: WebhookSender, httpserver: HTTPServer
) -> None:
    jobs, deliveries = stores
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 1, None, GenerationOptions(),
                WebhookSubscription(url=httpserver.url_for("/hook"), events=[WebhookEvent.SUCCEEDED]), tenant="tests")
    jobs.record_result(job_id, ImageResult(index=0, caption="a red circle"))
    httpserver.expect_ordered_request("/hook").respond_with_data("no", status=500)
    httpserver.expect_ordered_request("/hook").respond_with_data("ok", status=200)
    sender.deliver(job_id, WebhookEvent.SUCCEEDED)
    sender.deliver(job_id, WebhookEvent.SUCCEEDED)
    sender.deliver(job_id, WebhookEvent.SUCCEEDED)  # already delivered: nothing is sent

    requests = [request for request, _ in httpserver.log]
    assert len(requests) == 2
    verifier = Webhook(SECRET)
    payloads = [verifier.verify(r.get_data(), dict(r.headers)) for r in requests]
    assert {r.headers["webhook-id"] for r in requests} == {f"msg_{job_id}_job.succeeded"}
    assert requests[0].get_data() == requests[1].get_data()
    assert payloads[0]["type"] == "job.succeeded"
    assert payloads[0]["data"]["results"] == [{"index": 0, "caption": "a red circle"}]
    assert payloads[0]["data"]["urls"]["get"] == f"https://captioner.example/v1/jobs/{job_id}"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another secret").decode()).verify(
            requests[0].get_data(), dict(requests[0].headers))

    (delivery,) = deliveries.list_for_job(job_id)
    assert delivery.state == DeliveryState.DELIVERED
    assert [a.status_code for a in delivery.attempts] == [500, 200]
    assert delivery.attempts[0].next_attempt_at is not None
    assert delivery.attempts[0].next_attempt_at - delivery.attempts[0].at < timedelta(seconds=1)
    assert json.loads(requests[0].get_data())["timestamp"].startswith(str(datetime.now(UTC).year))


def test_redeliver_reopens_a_finished_delivery(
    stores: tuple[JobStore, DeliveryStore], sender: WebhookSender, httpserver: HTTPServer
) -> None:
    jobs, deliveries = stores
    job_id = uuid.uuid4().hex
    jobs.create(job_id, 1, None, GenerationOptions(), WebhookSubscription(url=httpserver.url_for("/gone")),
                tenant="tests")
    jobs.finish(job_id, JobStatus.CANCELED)
    httpserver.expect_request("/gone").respond_with_data("", status=410)
    sender.deliver(job_id, WebhookEvent.CANCELED)
    assert deliveries.list_for_job(job_id)[0].state == DeliveryState.DEAD
    assert deliveries.redeliver(job_id, WebhookEvent.CANCELED)
    assert not deliveries.redeliver(job_id, WebhookEvent.SUCCEEDED)
    (delivery,) = deliveries.list_for_job(job_id)
    assert delivery.state == DeliveryState.PENDING and len(delivery.attempts) == 1
    assert (job_id, WebhookEvent.CANCELED) in deliveries.claim_due(100, lease_s=30)


def test_each_tenant_s_deliveries_are_signed_with_its_own_secret(
    stores: tuple[JobStore, DeliveryStore], httpserver: HTTPServer
) -> None:
    """One tenant cannot forge a delivery that another tenant's receiver accepts."""
    jobs, deliveries = stores
    secrets = {"tests": SECRET, "other": "whsec_" + base64.b64encode(b"the other tenant's secret").decode()}
    sender = WebhookSender(
        jobs, deliveries, secrets=lambda tenant: [secrets[tenant]] if tenant in secrets else [],
        policy=OutboundPolicy(allow_private=True, allowed_ports=None),
        schedule=RetrySchedule(max_attempts=3, first_delay_s=0.01, max_delay_s=0.01), timeout_s=2,
    )
    httpserver.expect_request("/hook").respond_with_data("ok")
    ids = {}
    for tenant in ("tests", "other", "nobody"):
        ids[tenant] = uuid.uuid4().hex
        jobs.create(ids[tenant], 1, None, GenerationOptions(),
                    WebhookSubscription(url=httpserver.url_for("/hook"), events=[WebhookEvent.SUCCEEDED]),
                    tenant=tenant)
        jobs.record_result(ids[tenant], ImageResult(index=0, caption="x"))
        sender.deliver(ids[tenant], WebhookEvent.SUCCEEDED)
    received = {r.headers["webhook-id"]: r for r, _ in httpserver.log}
    for tenant in ("tests", "other"):
        request = received[f"msg_{ids[tenant]}_job.succeeded"]
        Webhook(secrets[tenant]).verify(request.get_data(), dict(request.headers))
        (stranger,) = set(secrets) - {tenant}
        with pytest.raises(Exception, match="signature"):
            Webhook(secrets[stranger]).verify(request.get_data(), dict(request.headers))
    # A tenant without a secret gets nothing unsigned: its delivery is dead, saying why.
    assert f"msg_{ids['nobody']}_job.succeeded" not in received
    (dead,) = deliveries.list_for_job(ids["nobody"])
    assert dead.state == DeliveryState.DEAD and "no webhook secret" in (dead.attempts[0].error or "")


def test_after_a_rotation_deliveries_carry_both_signatures_until_the_overlap_ends(
    stores: tuple[JobStore, DeliveryStore], httpserver: HTTPServer, settings: Settings
) -> None:
    """Receivers holding the old secret or the new one both accept deliveries during the overlap; then only
    the new one does."""
    jobs, deliveries = stores
    tenants = TenantStore.from_url(settings.redis_url)
    tenant = f"rot-{uuid.uuid4().hex[:8]}"
    old = tenants.create_key("rotating", tenant).webhook_secret
    sender = WebhookSender(
        jobs, deliveries, secrets=tenants.signing_secrets,
        policy=OutboundPolicy(allow_private=True, allowed_ports=None),
        schedule=RetrySchedule(max_attempts=3, first_delay_s=0.01, max_delay_s=0.01), timeout_s=2,
    )
    httpserver.expect_request("/hook").respond_with_data("ok")

    def deliver() -> tuple[bytes, dict[str, str]]:
        job_id = uuid.uuid4().hex
        jobs.create(job_id, 1, None, GenerationOptions(),
                    WebhookSubscription(url=httpserver.url_for("/hook"), events=[WebhookEvent.SUCCEEDED]),
                    tenant=tenant)
        jobs.record_result(job_id, ImageResult(index=0, caption="x"))
        sender.deliver(job_id, WebhookEvent.SUCCEEDED)
        request = {r.headers["webhook-id"]: r for r, _ in httpserver.log}[f"msg_{job_id}_job.succeeded"]
        return request.get_data(), dict(request.headers)

    new, until = tenants.rotate_webhook_secret(tenant, overlap_s=1.0)
    assert new != old and new.startswith("whsec_") and tenants.webhook_secret(tenant) == new
    body, headers = deliver()
    assert len(headers["Webhook-Signature"].split()) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)

    time.sleep(max(0.0, until.timestamp() - time.time()) + 0.05)
    body, headers = deliver()
    assert len(headers["Webhook-Signature"].split()) == 1
    Webhook(new).verify(body, headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(body, headers)
