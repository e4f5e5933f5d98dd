"""Prometheus metrics on the real stack: jobs (one failed, one canceled, one with a webhook) and a small bulk run go
through gunicorn's two processes and a worker, and /metrics on the API and on the worker's port say exactly what
was done. The stack has a Redis database of its own, so no other module's leftover work can reach its worker."""

from __future__ import annotations

import io
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from captioner.client import Client
from cli.processes import free_ports
from common.schemas import Job, JobStatus
from common.storage import ObjectStorage
from tests.conftest import settings_for
from tests.fixtures.shapes import random_scene, render
from tests.integration.conftest import TENANT, Stack, running_stack

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-for-tests"
BAD = b"not an image"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    (port,) = free_ports(1)
    settings = settings_for(
        services, redis_url=services.redis_url.rsplit("/", 1)[0] + "/7", batch_size=16, batch_wait_ms=50,
        metrics_port=port, metrics_token=TOKEN,
    )
    with running_stack(settings, tmp_path_factory.mktemp("metrics")) as stack:
        yield stack


def png(rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    render(random_scene(rng), (96, 96), rng).save(buffer, format="PNG")
    return buffer.getvalue()


def scrape(url: str) -> Samples:
    response = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry these labels (every other label summed over)."""
    return sum(v for (n, have), v in samples.items() if n == name and set(labels.items()) <= have)


def api_metrics(stack: Stack) -> Samples:
    return scrape(f"{stack.url}/metrics")


def worker_metrics(stack: Stack) -> Samples:
    return scrape(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics")


def until(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        time.sleep(0.1)


def test_metrics_match_what_the_stack_did(stack: Stack, httpserver: HTTPServer) -> None:
    rng = random.Random(20)

    def slowly(request: Request) -> Response:  # an image URL that keeps its job running while it is canceled
        time.sleep(1.5)
        return Response(png(rng), content_type="image/png")

    httpserver.expect_request("/slow.png").respond_with_handler(slowly)
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    storage = ObjectStorage.from_settings(stack.settings)
    storage.ensure_bucket()
    for name, data in (("a.png", png(rng)), ("b.png", png(rng)), ("c.png", png(rng)), ("bad.png", BAD)):
        storage.put(f"metrics-bulk/{name}", data, "image/png")

    with Client(stack.url, stack.key.key) as client:
        slow = client.submit([httpserver.url_for("/slow.png")])
        until("running", lambda: client.get(slow.id).status is JobStatus.RUNNING)
        # Its one image is the only one not yet ended: the backlog, read from Redis as /metrics is scraped.
        assert value(api_metrics(stack), "captioner_backlog_images", lane="interactive") == 1
        assert client.cancel(slow.id).status is JobStatus.CANCELED
        submitted = [
            client.submit([png(rng), png(rng)]),
            client.submit([png(rng), BAD]),
            client.submit([BAD]),
            client.submit([png(rng)], webhook={"url": httpserver.url_for("/hook")}),
        ]
        jobs: list[Job] = [client.wait(job.id) for job in [slow, *submitted]]
        run = client.bulk(stack.settings.s3_bucket, "metrics-bulk/")
        until("the bulk run ended", lambda: client.bulk_status(run.id).status not in ("queued", "running"),
              timeout_s=120)
        bulk = client.bulk_status(run.id).progress
    until("the webhook delivered", lambda: value(worker_metrics(stack), "captioner_webhook_deliveries_total",
                                                 outcome="delivered") == 1)
    api, worker = api_metrics(stack), worker_metrics(stack)

    statuses = Counter(job.status.value for job in jobs)
    assert statuses == {"canceled": 1, "succeeded": 3, "failed": 1}
    for status, count in statuses.items():  # canceled by the API's processes, the rest by the worker
        assert value(api, "captioner_jobs_total", status=status) + value(
            worker, "captioner_jobs_total", status=status) == count, status
    captioned = sum(r.caption is not None for job in jobs for r in job.results)
    failed = sum(r.error is not None for job in jobs for r in job.results)
    assert (captioned, failed, bulk.captioned, bulk.failed) == (4, 2, 3, 1)
    for lane, ok, bad in (("interactive", captioned, failed), ("bulk", bulk.captioned, bulk.failed)):
        assert value(worker, "captioner_images_total", lane=lane, status="succeeded") == ok, lane
        assert value(worker, "captioner_images_total", lane=lane, status="failed") == bad, lane
        assert value(worker, "captioner_tenant_images_total", tenant=TENANT, lane=lane) == ok + bad, lane

    # Every model call is in the histograms, as the worker's log tells them.
    log = stack.worker.log_path.read_text(errors="replace")
    batches = [int(size) for size in re.findall(r"captioned a batch of (\d+)", log)]
    assert value(worker, "captioner_batch_size_count") == len(batches) == value(worker, "captioner_model_seconds_count")
    assert value(worker, "captioner_batch_size_sum") == sum(batches) >= captioned + bulk.captioned
    assert value(worker, "captioner_batch_size_bucket", le="+Inf") == len(batches)
    assert value(worker, "captioner_model_seconds_sum") > 0
    assert value(worker, "captioner_queue_wait_seconds_count") == sum(job.started_at is not None for job in jobs)
    assert value(worker, "captioner_worker_ready") == 1

    # Requests by route, added up over gunicorn's two processes; never a raw path.
    assert value(api, "captioner_http_requests_total", route="/v1/jobs", method="POST", status="202") == 5
    assert value(api, "captioner_http_requests_total", route="/v1/jobs/<job_id>/cancel", status="200") == 1
    assert value(api, "captioner_http_requests_total", route="/v1/jobs/<job_id>", method="GET") >= 5
    assert value(api, "captioner_http_requests_total", route="/v1/bulk", method="POST") == 1
    for route in ("/v1/jobs", "/v1/jobs/<job_id>"):
        assert value(api, "captioner_http_request_duration_seconds_count", route=route) == value(
            api, "captioner_http_requests_total", route=route)
    routes = {dict(labels).get("route", "") for _, labels in api}
    assert not any(re.search(r"[0-9a-f]{32}", route) for route in routes), routes
    # Nothing is left waiting; the API holds no worker metrics, nor the worker the API's.
    for lane in ("interactive", "bulk"):
        assert (("captioner_backlog_images", frozenset({("lane", lane)})) in api
                and value(api, "captioner_backlog_images", lane=lane) == 0), lane
    assert not any(name.startswith(("captioner_batch_", "captioner_worker_")) for name, _ in api)
    # Added up from gunicorn's processes' files: that mode has no process_* or python_* metrics, one process would.
    assert not any(name.startswith(("python_", "process_")) for name, _ in api)
    assert not any(name.startswith(("captioner_http_", "captioner_backlog_")) for name, _ in worker)


def test_metrics_need_the_token_when_one_is_set(stack: Stack, tmp_path: Path) -> None:
    for url in (f"{stack.url}/metrics", f"http://127.0.0.1:{stack.settings.metrics_port}/metrics"):
        assert requests.get(url, timeout=10).status_code == 401, url
        assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401, url
