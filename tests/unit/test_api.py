"""The HTTP API through Flask's test client, on real Redis, real S3 and the real Celery broker queue."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests
from flask.testing import FlaskClient
from PIL import Image

from cli.processes import free_ports
from common.fairqueue import FairQueue
from common.jobstore import JobStore
from common.queue import INTERACTIVE_QUEUE
from common.settings import Settings
from common.storage import ObjectStorage
from tests.conftest import TEST_TENANT, api_client


def png_bytes(color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return api_client(settings)


def queued_task(settings: Settings, job_id: str) -> dict[str, Any]:
    """The caption task for job_id as it waits for its turn (common/fairqueue.py), and a turn sent for it."""
    broker = redis.Redis.from_url(settings.redis_url)
    turns = [json.loads(raw)["headers"]["task"] for raw in broker.lrange(INTERACTIVE_QUEUE, 0, -1)]
    assert "captioner.caption_job" in turns
    for task in FairQueue.from_url(settings.redis_url, 60).waiting(TEST_TENANT):
        if task.job_id == job_id:
            assert task.tenant == TEST_TENANT
            return task.model_dump(mode="json")
    raise AssertionError(f"no queued task for job {job_id}")


def assert_error(response: Any, status: int, code: str, fragment: str = "") -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]


def test_json_job_stores_images_and_queues_references_not_bytes(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_upload_max_bytes=1024)
    client = api_client(settings)
    small, large = png_bytes(), os.urandom(4096)
    assert len(small) <= 1024 < len(large)
    body = {
        "images": [base64.b64encode(small).decode(), f"data:image/png;base64,{base64.b64encode(large).decode()}",
                   "https://images.example.com/cat.jpg"],
        "prompt": "a picture of",
        "options": {"max_new_tokens": 12, "num_beams": 2},
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["num_images"] == 3 and job["prompt"] == "a picture of"
    assert job["options"]["num_beams"] == 2 and job["urls"]["get"].endswith(f"/v1/jobs/{job['id']}")

    small_ref, large_ref, url_ref = queued_task(settings, job["id"])["images"]
    # A small upload stays with the job record; a large one goes to S3; a URL travels as it is.
    assert small_ref == {"index": 0, "key": None, "url": None, "stored_with_job": True}
    assert JobStore.from_url(settings.redis_url, 60).upload(job["id"], 0) == small
    assert large_ref["key"] and not large_ref["stored_with_job"] and large_ref["url"] is None
    assert ObjectStorage.from_settings(settings).get(large_ref["key"], 10_000) == large
    assert JobStore.from_url(settings.redis_url, 60).upload(job["id"], 1) is None
    assert url_ref == {"index": 2, "key": None, "url": "https://images.example.com/cat.jpg", "stored_with_job": False}
    task = queued_task(settings, job["id"])
    assert task["options"]["max_new_tokens"] == 12 and task["prompt"] == "a picture of"


def test_with_no_room_in_redis_every_upload_goes_to_s3(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_upload_max_bytes=0)
    job = api_client(settings).post("/v1/jobs", json={"images": [
        base64.b64encode(png_bytes()).decode()]}).get_json()
    (ref,) = queued_task(settings, job["id"])["images"]
    assert ObjectStorage.from_settings(settings).get(ref["key"], 10_000) == png_bytes()


def test_multipart_job_with_files_prompt_and_options(client: FlaskClient, settings: Settings) -> None:
    files = [(io.BytesIO(png_bytes((0, 0, 255))), "a.png"), (io.BytesIO(png_bytes()), "b.png")]
    response = client.post(
        "/v1/jobs",
        data={"images": files, "prompt": "a photo of", "options": json.dumps({"max_new_tokens": 8})},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    assert job["num_images"] == 2 and job["prompt"] == "a photo of"
    assert [ref["index"] for ref in queued_task(settings, job["id"])["images"]] == [0, 1]


def test_get_and_cancel(client: FlaskClient) -> None:
    job = client.post("/v1/jobs", json={"images": [base64.b64encode(png_bytes()).decode()]}).get_json()
    fetched = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert fetched["id"] == job["id"] and fetched["status"] == "queued"
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel").get_json()
    assert canceled["status"] == "canceled" and canceled["completed_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.get_json()["completed_at"] == canceled["completed_at"]


B64 = base64.b64encode(b"anything").decode()


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({}, 400, "invalid_request", "images"),
        ({"images": []}, 400, "invalid_request", "at least one"),
        ({"images": "x"}, 400, "invalid_request", "list of strings"),
        ({"images": [1]}, 400, "invalid_request", "list of strings"),
        ({"images": [B64, "not base64!!"]}, 400, "invalid_image", "images[1]"),
        ({"images": ["data:image/png,rawbytes"]}, 400, "invalid_image", "base64"),
        ({"images": ["https://user:pw@example.com/a.jpg"]}, 400, "invalid_image", "credentials"),
        ({"images": ["https:///nohost"]}, 400, "invalid_image", "host"),
        ({"images": ["data:text/html;base64,PGI+"]}, 400, "invalid_image", "data: URI of text/html"),
        ({"images": ["file:///etc/passwd"]}, 400, "unsafe_url", "file: URL"),
        ({"images": ["FTP://example.com/a.png"]}, 400, "unsafe_url", "ftp: URL"),
        ({"images": ["gopher://example.com:70/_x"]}, 400, "unsafe_url", "gopher: URL"),
        ({"images": [B64] * 17}, 400, "too_many_images", "at most 16"),
        ({"images": [B64], "options": {"num_beams": 99}}, 422, "validation_error", "options.num_beams"),
        ({"images": [B64], "options": {"temperature": 1}}, 422, "validation_error", "temperature"),
        ({"images": [B64], "options": {"min_new_tokens": 9, "max_new_tokens": 3}}, 422,
         "validation_error", "min_new_tokens"),
        ({"images": [B64], "prompt": "   "}, 422, "validation_error", "blank"),
        ({"images": [B64], "prompt": "a" * 301}, 422, "validation_error", "300 characters"),
        ({"images": [B64], "prompt": 7}, 422, "validation_error", "prompt"),
        ({"images": [B64], "colour": "red"}, 422, "validation_error", "colour"),
    ],
)
def test_bad_json_requests_get_clear_4xx(
    client: FlaskClient, body: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    assert_error(client.post("/v1/jobs", json=body), status, code, fragment)


def test_unreadable_json_is_400(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data="{not json", content_type="application/json")
    assert_error(response, 400, "invalid_request", "JSON")
    # Python's parser raises RecursionError, not ValueError, on JSON this deep.
    for path in ("/v1/jobs", "/v1/bulk"):
        response = client.post(path, data="[" * 100_000, content_type="application/json")
        assert_error(response, 400, "invalid_request", "nested too deeply")


def test_other_content_types_are_415(client: FlaskClient) -> None:
    assert_error(client.post("/v1/jobs", data="x", content_type="text/plain"), 415, "unsupported_media_type")


def test_multipart_errors(client: FlaskClient) -> None:
    def post(**fields: Any) -> Any:
        return client.post("/v1/jobs", data=fields, content_type="multipart/form-data")

    assert_error(post(prompt="x"), 400, "invalid_request", "at least one")
    image = (io.BytesIO(png_bytes()), "a.png")
    assert_error(post(images=[image], options="{oops"), 400, "invalid_request", "options")
    image = (io.BytesIO(png_bytes()), "a.png")
    assert_error(post(images=[image], extra="1"), 400, "invalid_request", "extra")
    image = (io.BytesIO(png_bytes()), "a.png")
    assert_error(post(images=[image], other=(io.BytesIO(b"x"), "o.png")), 400, "invalid_request", "other")
    # An empty file part as real clients send it (Werkzeug's test client leaves out the line break before the
    # closing boundary, which python-multipart rightly refuses).
    empty = requests.Request("POST", "http://x/", files={"images": ("empty.png", b"", "image/png")}).prepare()
    response = client.post("/v1/jobs", data=empty.body, content_type=empty.headers["Content-Type"])
    assert_error(response, 400, "invalid_image", "empty")
    assert_error(client.post("/v1/jobs", data=b"--x\r\nno headers", content_type="multipart/form-data; boundary=x"),
                 400, "invalid_request", "multipart")
    truncated = requests.Request("POST", "http://x/", files={"images": ("a.png", png_bytes(), "image/png")}).prepare()
    assert isinstance(truncated.body, bytes)
    response = client.post("/v1/jobs", data=truncated.body[:-20], content_type=truncated.headers["Content-Type"])
    assert_error(response, 400, "invalid_request", "closing boundary")
    no_boundary = client.post("/v1/jobs", input_stream=io.BytesIO(b"abc"), content_type="multipart/form-data",
                              content_length=3)
    assert_error(no_boundary, 400, "invalid_request", "boundary")


def test_oversized_images_and_bodies_are_413(make_settings: Callable[..., Settings]) -> None:
    client = api_client(make_settings(max_image_bytes=2048, max_images_per_job=2))
    big = base64.b64encode(b"x" * 4096).decode()
    assert_error(client.post("/v1/jobs", json={"images": [big]}), 413, "payload_too_large")
    huge = "A" * 200_000  # beyond max_request_bytes (about 72 KiB here): refused before parsing
    assert_error(client.post("/v1/jobs", json={"images": [huge]}), 413, "payload_too_large")
    file = (io.BytesIO(b"x" * 4096), "big.png")
    response = client.post("/v1/jobs", data={"images": [file]}, content_type="multipart/form-data")
    assert_error(response, 413, "payload_too_large", "images[0] is larger than 2048 bytes")
    response = client.post("/v1/jobs", data={"prompt": "a" * 200_000}, content_type="multipart/form-data")
    assert_error(response, 413, "payload_too_large")  # the whole body is over the cap: refused unread


@pytest.mark.parametrize("path", ["/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/not-an-id"])
def test_unknown_jobs_are_404(client: FlaskClient, path: str) -> None:
    assert_error(client.get(path), 404, "not_found")
    assert_error(client.post(f"{path}/cancel"), 404, "not_found")


def test_unknown_routes_and_methods_answer_json(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.delete("/v1/jobs"), 405, "method_not_allowed")


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"redis": "ok", "s3": "ok"}


def test_readiness_fails_when_redis_is_down(make_settings: Callable[..., Settings]) -> None:
    client = api_client(make_settings(redis_url="redis://127.0.0.1:1/0"))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("unavailable")
    assert client.get("/healthz").status_code == 200


def test_submitting_while_redis_is_down_is_503(make_settings: Callable[..., Settings]) -> None:
    client = api_client(make_settings(redis_url="redis://127.0.0.1:1/0"))
    response = client.post("/v1/jobs", json={"images": [base64.b64encode(png_bytes()).decode()]})
    assert_error(response, 503, "service_unavailable")


SECRET = "whsec_" + base64.b64encode(b"api-test-secret").decode()


def test_while_s3_is_down_uploads_that_need_it_are_503_with_retry_after(make_settings: Callable[..., Settings]) -> None:
    """Every path that stores in S3 answers 503 with Retry-After, in its own error shape, never a 500; an image small
    enough for Redis is still accepted."""
    (closed,) = free_ports(1)
    settings = make_settings(s3_endpoint_url=f"http://127.0.0.1:{closed}", redis_upload_max_bytes=len(png_bytes()))
    client = api_client(settings)
    large = base64.b64encode(png_bytes() + os.urandom(64)).decode()
    refused = client.post("/v1/jobs", json={"images": [large]})
    assert_error(refused, 503, "service_unavailable")
    assert refused.headers["Retry-After"]
    file = client.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(b"{}\n"), "in.jsonl")})
    assert file.status_code == 503 and file.headers["Retry-After"], file.get_data(as_text=True)
    assert file.get_json()["error"]["code"] == "service_unavailable"  # OpenAI's shape: {"error": {"code", "type"...}}
    kept = client.post("/v1/jobs", json={"images": [base64.b64encode(png_bytes()).decode()]})
    assert kept.status_code == 202, kept.get_data(as_text=True)


def test_webhooks_of_the_open_mode_need_a_configured_secret(make_settings: Callable[..., Settings]) -> None:
    # With keys, each tenant has its own secret; the open mode's built-in tenant has CAPTIONER_WEBHOOK_SECRET's.
    client = api_client(make_settings(auth="off"))
    body = {"images": [B64], "webhook": {"url": "https://hooks.example.com/x"}}
    assert_error(client.post("/v1/jobs", json=body), 400, "invalid_request", "CAPTIONER_WEBHOOK_SECRET")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "http://2130706433/hook", "http://0x7f.1/hook", "http://[::1]/hook",
     "http://[::ffff:127.0.0.1]/hook", "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/",
     "http://100.64.0.1/", "ftp://hooks.example.com/", "http://user:pw@hooks.example.com/"],
)
def test_unsafe_webhook_urls_are_refused_at_submit(make_settings: Callable[..., Settings], url: str) -> None:
    settings = make_settings(webhook_secret=SECRET, allow_private_networks=False, outbound_allowed_ports="80,443")
    client = api_client(settings)
    response = client.post("/v1/jobs", json={"images": [B64], "webhook": {"url": url}})
    assert_error(response, 400, "unsafe_url")


def test_a_job_with_a_webhook_echoes_it_and_lists_its_deliveries(make_settings: Callable[..., Settings]) -> None:
    client = api_client(make_settings(webhook_secret=SECRET))
    webhook = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "job.started", "job.started"]}
    job = client.post("/v1/jobs", json={"images": [B64], "webhook": webhook}).get_json()
    assert job["webhook"] == {"url": "http://127.0.0.1:9/hook", "events": ["job.started", "job.succeeded"]}
    assert job["urls"]["webhooks"].endswith(f"/v1/jobs/{job['id']}/webhooks")
    assert client.get(f"/v1/jobs/{job['id']}/webhooks").get_json() == {"deliveries": []}
    assert_error(client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver"), 409, "conflict", "queued")
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel").get_json()
    assert canceled["status"] == "canceled"
    assert_error(client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver"), 409, "conflict", "job.canceled")
    bad = {"images": [B64], "webhook": {"url": "http://127.0.0.1:9/", "events": ["job.exploded"]}}
    assert_error(client.post("/v1/jobs", json=bad), 422, "validation_error", "webhook.events")


def test_multipart_takes_a_webhook_field(make_settings: Callable[..., Settings]) -> None:
    client = api_client(make_settings(webhook_secret=SECRET))
    data = {"images": [(io.BytesIO(png_bytes()), "a.png")],
            "webhook": json.dumps({"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]})}
    job = client.post("/v1/jobs", data=data, content_type="multipart/form-data").get_json()
    assert job["webhook"]["events"] == ["job.failed"]
