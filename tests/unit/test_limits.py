"""Limits through the real API on real Redis and S3: a key's request rate, a key's images in flight, and the
service's backlog; each refusal says when to come back and leaves nothing behind."""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from collections.abc import Callable

import redis
from flask.testing import FlaskClient
from PIL import Image

from common.admission import Admission
from common.settings import Settings
from common.storage import ObjectStorage
from common.tenants import KeyLimits, TenantStore
from tests.conftest import api_client


def image_b64(large: bool = False) -> str:
    """A PNG; `large` pads it past the Redis upload limit, so that accepting it would put it in S3."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buffer, format="PNG")
    data = buffer.getvalue() + (os.urandom(4096) if large else b"")
    return base64.b64encode(data).decode()


def client_with(settings: Settings, limits: KeyLimits) -> FlaskClient:
    made = TenantStore.from_url(settings.redis_url).create_key(f"t-{uuid.uuid4().hex[:10]}", limits=limits)
    return api_client(settings, made.key)


def test_a_key_past_its_rate_gets_429_with_when_to_retry(settings: Settings) -> None:
    limited = client_with(settings, KeyLimits(rate_limit="3/minute"))
    other = client_with(settings, KeyLimits(rate_limit="3/minute"))
    answers = [limited.get("/v1/jobs") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    refused = limited.post("/v1/jobs", json={"images": [image_b64()]})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert "3 per 1 minute" in refused.get_json()["error"]["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == "3" and refused.headers["RateLimit-Remaining"] == "0"
    assert time.time() < int(refused.headers["RateLimit-Reset"]) <= time.time() + 61
    assert len(limited.get("/v1/jobs").get_data()) > 0
    assert other.get("/v1/jobs").status_code == 200  # a budget per key
    assert limited.get("/healthz").status_code == 200  # only /v1 is limited
    assert limited.get("/v1/jobs").status_code == 429  # reading counts too


def test_a_key_past_its_images_in_flight_gets_429_and_nothing_is_stored(
    make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_upload_max_bytes=1024)
    ObjectStorage.from_settings(settings).ensure_bucket()
    client = client_with(settings, KeyLimits(max_in_flight=3))
    first = client.post("/v1/jobs", json={"images": [image_b64(), image_b64()]})
    assert first.status_code == 202
    refused = client.post("/v1/jobs", json={"images": [image_b64(large=True), image_b64(large=True)]})
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_in_flight"
    assert int(refused.headers["Retry-After"]) > 0
    uploads = list(ObjectStorage.from_settings(settings).list_objects("uploads/"))
    assert uploads == []  # the refused job's large images were never stored
    assert len(client.get("/v1/jobs").get_json()["data"]) == 1  # nor the job
    assert client.post("/v1/jobs", json={"images": [image_b64()]}).status_code == 202  # 3 of 3
    client.post(f"/v1/jobs/{first.get_json()['id']}/cancel")  # its end frees its 2 images
    assert client.post("/v1/jobs", json={"images": [image_b64(), image_b64()]}).status_code == 202


def test_past_the_backlog_new_work_gets_503_with_when_to_retry(
    make_settings: Callable[..., Settings], settings: Settings
) -> None:
    alone = settings.redis_url.rsplit("/", 1)[0] + "/8"  # a database of its own: the backlog is service-wide
    redis.Redis.from_url(alone).flushdb()
    small = make_settings(redis_url=alone, max_backlog_images=3)
    client = client_with(small, KeyLimits())
    assert client.post("/v1/jobs", json={"images": [image_b64(), image_b64()]}).status_code == 202
    refused = client.post("/v1/jobs", json={"images": [image_b64(), image_b64()]})
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "backlog_full"
    assert int(refused.headers["Retry-After"]) > 0
    assert Admission.from_url(alone).backlog() == 2  # the refused job was never counted
    assert client.post("/v1/jobs", json={"images": [image_b64()]}).status_code == 202


def test_a_job_that_vanished_without_ending_stops_holding_its_key_s_slots(settings: Settings) -> None:
    admission = Admission.from_url(settings.redis_url)
    owner = f"key_{uuid.uuid4().hex[:16]}"
    assert admission.admit(owner, "lost-job", 2, cap=2, max_backlog=None) == "ok"
    assert admission.admit(owner, "next-job", 1, cap=2, max_backlog=None) == "in_flight"
    # Admitted long ago, and its record is gone (expired): past the grace, the next check forgets it.
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.hset(f"captioner:inflight:{owner}", "lost-job", "2|1000.0")
    assert admission.admit(owner, "next-job", 1, cap=2, max_backlog=None) == "ok"
    assert admission.in_flight(owner) == 1
