"""Idempotency-Key on submissions, through the real API on real Redis and S3 (the semantics Stripe documents)."""

from __future__ import annotations

import base64
import io
import json
import threading
import uuid

import redis
from flask.testing import FlaskClient
from PIL import Image

from api import create_app
from common.idempotency import PENDING_TTL_S, IdempotencyStore
from common.settings import Settings
from common.storage import ObjectStorage
from common.tenants import KeyLimits, TenantStore
from tests.conftest import api_client


def png(color: tuple[int, int, int] = (0, 128, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def body(color: tuple[int, int, int] = (0, 128, 0)) -> dict[str, object]:
    return {"images": [base64.b64encode(png(color)).decode()], "options": {"max_new_tokens": 12}}


def tenant_client(settings: Settings, limits: KeyLimits | None = None) -> FlaskClient:
    made = TenantStore.from_url(settings.redis_url).create_key(f"t-{uuid.uuid4().hex[:10]}", limits=limits)
    return api_client(settings, made.key)


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def test_a_repeat_gets_the_original_job_and_status_and_makes_nothing(settings: Settings) -> None:
    client = tenant_client(settings)
    headers = key()
    first = client.post("/v1/jobs", json=body(), headers=headers)
    again = client.post("/v1/jobs", json=body(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.headers["Location"] == first.headers["Location"]
    assert len(client.get("/v1/jobs").get_json()["data"]) == 1


def test_the_same_content_as_json_or_multipart_is_the_same_request(settings: Settings) -> None:
    client = tenant_client(settings)
    headers = key()
    first = client.post("/v1/jobs", json=body(), headers=headers).get_json()
    form = {"images": [(io.BytesIO(png()), "a.png")], "options": json.dumps({"max_new_tokens": 12})}
    again = client.post("/v1/jobs", data=form, content_type="multipart/form-data", headers=headers)
    assert again.status_code == 202 and again.get_json()["id"] == first["id"]


def test_the_same_key_with_another_request_is_refused(settings: Settings) -> None:
    client = tenant_client(settings)
    headers = key()
    assert client.post("/v1/jobs", json=body(), headers=headers).status_code == 202
    other = client.post("/v1/jobs", json=body((255, 0, 0)), headers=headers)
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/jobs").get_json()["data"]) == 1


def test_tenants_keys_never_collide(settings: Settings) -> None:
    headers = key()
    mine = tenant_client(settings).post("/v1/jobs", json=body(), headers=headers).get_json()
    theirs = tenant_client(settings).post("/v1/jobs", json=body(), headers=headers)
    assert theirs.status_code == 202 and theirs.get_json()["id"] != mine["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_concurrent_requests_with_one_key_make_one_job(settings: Settings) -> None:
    made = TenantStore.from_url(settings.redis_url).create_key(f"t-{uuid.uuid4().hex[:10]}")
    app = create_app(settings)
    headers = {**key(), "Authorization": f"Bearer {made.key}"}
    answers: list[tuple[int, str]] = []
    start = threading.Barrier(6)

    def submit() -> None:
        client = app.test_client()
        start.wait()
        response = client.post("/v1/jobs", json=body(), headers=headers)
        answers.append((response.status_code, response.get_json()["id"]))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 6 and {status for status, _ in answers} == {202}
    assert len({job_id for _, job_id in answers}) == 1
    listed = app.test_client().get("/v1/jobs", headers={"Authorization": f"Bearer {made.key}"}).get_json()
    assert len(listed["data"]) == 1


def test_a_refused_first_request_frees_its_key_for_the_retry(settings: Settings) -> None:
    client = tenant_client(settings, KeyLimits(max_in_flight=1))
    holding = client.post("/v1/jobs", json=body()).get_json()
    headers = key()
    refused = client.post("/v1/jobs", json=body((0, 0, 255)), headers=headers)
    assert refused.status_code == 429
    client.post(f"/v1/jobs/{holding['id']}/cancel")
    retried = client.post("/v1/jobs", json=body((0, 0, 255)), headers=headers)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


def test_bulk_submissions_take_a_key_too(settings: Settings) -> None:
    ObjectStorage.from_settings(settings).ensure_bucket()
    client = tenant_client(settings, KeyLimits(bulk_buckets=("*",)))
    headers = key()
    request = {"source": {"bucket": settings.s3_bucket}, "dry_run": True}
    first = client.post("/v1/bulk", json=request, headers=headers)
    again = client.post("/v1/bulk", json=request, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/bulk", json={**request, "prompt": "a photo of"}, headers=headers)
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_a_malformed_key_is_refused_before_anything_is_made(settings: Settings) -> None:
    client = tenant_client(settings)
    for bad in ("", "x" * 256, "with space", "ünïcode"):
        response = client.post("/v1/jobs", json=body(), headers={"Idempotency-Key": bad})
        assert response.status_code == 400, bad
    assert client.get("/v1/jobs").get_json()["data"] == []


def test_a_key_whose_first_request_never_answered_is_freed_within_minutes(settings: Settings) -> None:
    """The first request's process died, or Redis went away before it could give its key up: the key is claimed
    for PENDING_TTL_S, not for the whole CAPTIONER_IDEMPOTENCY_TTL_SECONDS; an answered one keeps that."""
    store = IdempotencyStore.from_url(settings.redis_url, 24 * 3600)
    tenant, unanswered, answered = f"t-{uuid.uuid4().hex}", str(uuid.uuid4()), str(uuid.uuid4())
    assert store.begin(tenant, unanswered, "print") is None
    assert store.begin(tenant, answered, "print") is None
    store.complete(tenant, answered, "print", "job", 202)
    ttl = redis.Redis.from_url(settings.redis_url).ttl
    assert 0 < ttl(f"captioner:idempotency:{tenant}:{unanswered}") <= PENDING_TTL_S < 3600
    assert ttl(f"captioner:idempotency:{tenant}:{answered}") > 23 * 3600
