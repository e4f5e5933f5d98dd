"""Retention and deletion through the real API on real Redis and S3 (no worker: the tests end jobs by canceling
them, and sweep as a worker's sweeper does): uploads leave S3 when their job ends, and DELETE leaves nothing."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable
from typing import cast

import pytest
import redis
from botocore.exceptions import ClientError
from flask.testing import FlaskClient
from PIL import Image

from common.retention import ENDED_UPLOADS_KEY, UploadJanitor
from common.settings import Settings
from common.storage import ObjectStorage
from common.webhooks import DUE_KEY
from tests.conftest import api_client
from tests.unit.test_tenancy import new_tenant


def noise_png_b64(side: int = 64) -> str:
    """A PNG too large for the Redis path at redis_upload_max_bytes=1024: random pixels do not compress."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def s3_settings(make_settings: Callable[..., Settings]) -> Settings:
    """Every upload over 1 KiB goes to S3."""
    return make_settings(redis_upload_max_bytes=1024)


def exists(storage: ObjectStorage, key: str) -> bool:
    try:
        storage.get(key, max_bytes=10**8)
    except ClientError:
        return False
    return True


def submit(client: FlaskClient, images: list[str], **extra: object) -> dict[str, str]:
    response = client.post("/v1/jobs", json={"images": images, **extra})
    assert response.status_code == 202, response.get_data(as_text=True)
    job: dict[str, str] = response.get_json()
    return job


def test_a_jobs_uploads_leave_s3_when_it_ends(s3_settings: Settings) -> None:
    client = api_client(s3_settings)
    storage = ObjectStorage.from_settings(s3_settings)
    janitor = UploadJanitor(redis.Redis.from_url(s3_settings.redis_url, decode_responses=True), storage)
    job = submit(client, [noise_png_b64(), noise_png_b64()])
    keys = [f"uploads/{job['id']}/0", f"uploads/{job['id']}/1"]
    assert all(exists(storage, key) for key in keys)

    janitor.sweep()
    assert all(exists(storage, key) for key in keys), "a running job's uploads must stay"

    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    while janitor.sweep():
        pass
    assert not any(exists(storage, key) for key in keys)
    assert not {*keys} & set(janitor_queue(s3_settings))


def janitor_queue(settings: Settings) -> list[str]:
    return cast(list[str], redis.Redis.from_url(settings.redis_url, decode_responses=True).zrange(
        ENDED_UPLOADS_KEY, 0, -1))


def test_delete_removes_an_ended_job_with_everything_kept_for_it(s3_settings: Settings) -> None:
    client = api_client(s3_settings)
    storage = ObjectStorage.from_settings(s3_settings)
    store = redis.Redis.from_url(s3_settings.redis_url, decode_responses=True)
    job = submit(client, [noise_png_b64()], webhook={"url": "http://127.0.0.1:9/hook"})
    job_id = job["id"]

    running = client.delete(f"/v1/jobs/{job_id}")
    assert running.status_code == 409
    assert running.get_json()["error"]["code"] == "job_not_ended"
    assert exists(storage, f"uploads/{job_id}/0")

    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert store.exists(f"captioner:webhook:{job_id}:job.canceled")  # the cancel emitted a delivery

    deleted = client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/webhooks").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert job_id not in [j["id"] for j in client.get("/v1/jobs").get_json()["data"]]
    assert not exists(storage, f"uploads/{job_id}/0"), "DELETE answers once the images are gone, not later"
    assert store.keys(f"captioner:job:{job_id}*") == []
    assert store.keys(f"captioner:webhook:{job_id}*") == []
    assert not [m for m in cast(list[str], store.zrange(DUE_KEY, 0, -1)) if m.startswith(job_id)]


def test_a_small_uploads_bytes_go_with_its_job(settings: Settings) -> None:
    client = api_client(settings)
    store = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    job_id = submit(client, [noise_png_b64(8)])["id"]
    assert store.exists(f"captioner:job:{job_id}:uploads")
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert not store.exists(f"captioner:job:{job_id}:uploads")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert store.keys(f"captioner:job:{job_id}*") == []


def test_another_tenants_job_cannot_be_deleted_and_answers_as_none(s3_settings: Settings) -> None:
    owner = api_client(s3_settings)
    job_id = submit(owner, [noise_png_b64(8)])["id"]
    owner.post(f"/v1/jobs/{job_id}/cancel")
    other, _ = new_tenant(s3_settings)

    theirs = other.delete(f"/v1/jobs/{job_id}")
    never = other.delete(f"/v1/jobs/{'0' * 32}")
    assert theirs.status_code == never.status_code == 404
    assert theirs.get_json()["error"]["code"] == "not_found"
    assert theirs.get_data().replace(job_id.encode(), b"") == never.get_data().replace(b"0" * 32, b"")
    assert owner.get(f"/v1/jobs/{job_id}").status_code == 200, "the owner's job must still be there"
    assert other.delete("/v1/jobs/not-an-id").status_code == 404


def test_an_idempotency_key_of_a_deleted_job_does_not_make_it_again(settings: Settings) -> None:
    client = api_client(settings)
    body = {"images": [noise_png_b64(8)]}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "delete-me"})
    job_id = first.get_json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "delete-me"})
    assert again.status_code == 404
    assert again.get_json()["error"]["code"] == "not_found"
