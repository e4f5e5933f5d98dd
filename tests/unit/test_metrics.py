"""Metrics on real Redis: a job, an image and a chunk counted once however often they are recorded, the backlog read
from Redis, the API's /metrics by route and behind its token, the worker's server. tests/integration/test_metrics.py
checks them against a whole stack's work."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client import REGISTRY

from api import gunicorn_hooks
from api.gunicorn_hooks import fresh_metrics_dir
from cli.processes import free_ports
from common.bulk_schemas import BulkRequest, ChunkFiles, ObjectRef
from common.bulk_scripts import LEASES_KEY, READY_KEY
from common.bulkstore import BulkStore
from common.jobstore import JobStore
from common.metrics import OTHER_TENANT, _TenantLabels
from common.schemas import ErrorBody, GenerationOptions, ImageResult, JobStatus
from common.settings import Settings
from tests.conftest import api_client
from worker.metrics import serve

TOKEN = "a-token-of-sixteen-or-more"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts() -> dict[str, float]:
    """The stores' counters for the tests' tenant, as they stand."""
    found = {f"jobs {s}": sample("captioner_jobs_total", status=s) for s in ("succeeded", "failed", "canceled")}
    for lane in ("interactive", "bulk"):
        for status in ("succeeded", "failed"):
            found[f"{lane} {status}"] = sample("captioner_images_total", lane=lane, status=status)
            found[f"tests {lane} {status}"] = sample("captioner_tenant_images_total", tenant="tests", lane=lane,
                                                     status=status)
    return found


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {name: value - before[name] for name, value in counts().items() if value != before[name]}


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.redis_url, ttl_seconds=600)


def new_job(store: JobStore, images: int) -> str:
    job_id = uuid.uuid4().hex
    store.create(job_id, images, None, GenerationOptions(), tenant="tests")
    return job_id


def test_a_job_its_images_and_its_wait_are_counted_once_however_often_they_are_recorded(jobs: JobStore) -> None:
    job_id = new_job(jobs, 2)
    before = counts()
    status, waited_s = jobs.start(job_id)
    assert status is JobStatus.RUNNING and waited_s is not None and 0 <= waited_s < 5
    assert jobs.start(job_id) == (JobStatus.RUNNING, None)  # a redelivered task did not start it
    bad = ImageResult(index=1, error=ErrorBody(code="invalid_image", message="bad"))
    for _ in range(2):  # a task run twice
        jobs.record_result(job_id, ImageResult(index=0, caption="a red circle"))
        jobs.record_result(job_id, bad)
    assert jobs.finish(job_id, JobStatus.CANCELED) is JobStatus.SUCCEEDED  # too late: not a second end
    assert counted_since(before) == {"jobs succeeded": 1, "interactive succeeded": 1, "interactive failed": 1,
                                     "tests interactive succeeded": 1, "tests interactive failed": 1}


def test_a_job_canceled_twice_ends_once(jobs: JobStore) -> None:
    job_id = new_job(jobs, 1)
    before = counts()
    assert jobs.cancel(job_id, tenant="tests").status is JobStatus.CANCELED
    assert jobs.cancel(job_id, tenant="tests").status is JobStatus.CANCELED
    assert counted_since(before) == {"jobs canceled": 1}


def test_tenants_past_the_bound_count_as_other() -> None:
    label = _TenantLabels(2)
    assert [label(t) for t in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER_TENANT, "a", OTHER_TENANT, "b"]


@pytest.fixture
def bulk(settings: Settings) -> Iterator[BulkStore]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete(READY_KEY, LEASES_KEY)  # the backlog is read from every live job's items: only this test's
    yield BulkStore(client, ttl_seconds=600, lease_s=30, window=8)
    client.delete(READY_KEY, LEASES_KEY)


def chunk_done(index: int, captioned: int, failed: int) -> ChunkFiles:
    return ChunkFiles(index=index, first_key="a", last_key="b", results_key="r", errors_key=None,
                      captioned=captioned, failed=failed, skipped=0)


def test_the_bulk_backlog_is_the_images_of_chunks_not_done_of_live_jobs(bulk: BulkStore) -> None:
    assert bulk.backlog_images() == 0
    bulk_id = uuid.uuid4().hex
    bulk.create(bulk_id, BulkRequest.model_validate({"source": {"bucket": "photos"}}), tenant="tests")
    assert bulk.backlog_images() == 0  # queued, nothing listed yet
    assert bulk.add_chunk(bulk_id, 0, [ObjectRef(key=k, etag="e", size=1) for k in "abc"]) == 1
    assert bulk.add_chunk(bulk_id, 1, [ObjectRef(key=k, etag="e", size=1) for k in "de"]) == 1
    assert bulk.backlog_images() == 5
    before = counts()
    assert bulk.complete_chunk(bulk_id, chunk_done(0, 2, 1), 3)
    assert not bulk.complete_chunk(bulk_id, chunk_done(0, 2, 1), 3)  # the chunk ran twice: counted once
    assert bulk.backlog_images() == 2
    assert counted_since(before) == {"bulk succeeded": 2, "bulk failed": 1, "tests bulk succeeded": 2,
                                     "tests bulk failed": 1}
    bulk.cancel(bulk_id, tenant="tests")
    assert bulk.backlog_images() == 0  # its chunk's images will not be captioned


def test_the_api_counts_requests_by_route_and_serves_the_backlog(settings: Settings) -> None:
    client = api_client(settings)
    job_id = uuid.uuid4().hex
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'captioner_http_requests_total{method="GET",route="/v1/jobs/<job_id>",status="404"}' in text
    assert 'captioner_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert 'captioner_http_request_duration_seconds_count{route="/v1/jobs/<job_id>"}' in text
    assert job_id not in text and "/no/such/path" not in text
    assert 'captioner_backlog_images{lane="interactive"}' in text and 'captioner_backlog_images{lane="bulk"}' in text


def test_with_a_token_the_api_s_metrics_need_it(make_settings: Callable[..., Settings]) -> None:
    client = api_client(make_settings(metrics_token=TOKEN))
    refused = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_worker_serves_its_metrics_behind_its_token() -> None:
    (port,) = free_ports(1)
    server = serve(port, TOKEN, host="127.0.0.1")
    assert server is not None
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert requests.get(url, timeout=5).status_code == 401
        answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert answer.status_code == 200 and "captioner_worker_ready" in answer.text
        assert serve(port, None, host="127.0.0.1") is None  # taken: logged, and the worker goes on without
        assert serve(0, None) is None
    finally:
        server.shutdown()
        server.server_close()


def test_each_start_of_the_api_counts_from_an_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = tmp_path / "volume"  # an operator's PROMETHEUS_MULTIPROC_DIR
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(volume))
    first, second = Path(fresh_metrics_dir()), Path(fresh_metrics_dir())
    assert first != second and first.parent == second.parent == volume and not any(first.iterdir())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(first))  # as `captioner api` hands it to gunicorn
    gunicorn_hooks.on_exit(None)
    assert not first.exists() and second.exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(volume))
    gunicorn_hooks.on_exit(None)
    assert volume.exists()  # only a directory made for one start is removed
