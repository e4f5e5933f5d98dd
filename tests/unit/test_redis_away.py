"""While Redis is away, every API path answers 503 with Retry-After in its own error shape (OpenAI's on the
OpenAI-compatible paths), promptly: never a 500, never a hang. Redis refusing connections (down) and Redis accepting
them but never answering (stopped, or a lost network) are both checked. tests/integration/test_redis_outage.py kills
a real one under load."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from common.settings import Settings
from common.storage import ObjectStorage
from tests.conftest import UNCHECKABLE_KEY
from tests.unit.test_openai_compat import BATCH_LINES, IMAGE, IMAGE_URL
from tests.unit.test_tenancy import png_b64

HEX = "0123456789abcdef" * 2
BUCKET = "redis-away"  # the service's own, which a bulk job may always read
# Paths whose answer needs no Redis: the process, its description, and (in the open mode) the served model.
WITHOUT_REDIS = {"/healthz", "/openapi.json", "/docs", "/docs/<filename>", "/static/<path:filename>", "/",
                 "/page/<path:filename>"}
OPENAI_PREFIXES = ("/v1/chat/", "/v1/responses", "/v1/files", "/v1/batches", "/v1/models")


@pytest.fixture(scope="module")
def refused_port() -> int:
    """A loopback port nothing listens on: connections are refused, as when Redis is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers, as a stopped Redis does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


def app_on(make_settings: Callable[..., Settings], port: int, **overrides: Any) -> Flask:
    return create_app(make_settings(redis_url=f"redis://127.0.0.1:{port}/0", **overrides))


def client_of(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {UNCHECKABLE_KEY}"
    return client


def concrete(rule: str) -> str:
    """A path matching the rule, with ids of the right form (a malformed id is refused before Redis is asked)."""
    for name, value in (("<job_id>", HEX), ("<bulk_id>", HEX), ("<batch_id>", f"batch_{HEX}"),
                        ("<file_id>", f"file-{HEX}"), ("<path:model_id>", "tiny_blip")):
        rule = rule.replace(name, value)
    return rule


def assert_unavailable(response: Any, path: str) -> None:
    assert response.status_code == 503, f"{path}: {response.status_code} {response.get_data(as_text=True)}"
    assert int(response.headers["Retry-After"]) > 0, path
    error = response.get_json()["error"]
    if path.startswith(OPENAI_PREFIXES):
        assert set(error) == {"message", "type", "param", "code"}, path
        assert error["type"] == "server_error" and error["code"] == "service_unavailable", path
    else:
        assert set(error) == {"code", "message"}, path
        assert error["code"] == "service_unavailable", path


def test_with_keys_every_v1_path_is_503_in_its_own_shape(
    make_settings: Callable[..., Settings], refused_port: int
) -> None:
    """Each request's key is looked up in Redis first: every /v1 path and method meets Redis there."""
    app = app_on(make_settings, refused_port)
    client = client_of(app)
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in WITHOUT_REDIS or not rule.rule.startswith("/v1"):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            path = concrete(rule.rule)
            assert_unavailable(client.open(path, method=method, json={}), path)
            checked += 1
    assert checked >= 26
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["redis"].startswith("unavailable")


def open_mode_requests() -> list[tuple[str, str, dict[str, Any]]]:
    """A valid request of each kind, so that it passes its checks and reaches Redis (the open mode asks for no
    key, so the view itself, or its limits, meet Redis)."""
    files = {"data": {"file": (io.BytesIO(BATCH_LINES), "requests.jsonl"), "purpose": "batch"},
             "content_type": "multipart/form-data"}
    image = {"json": {"images": [png_b64()]}}
    return [
        ("POST", "/v1/jobs", image),
        ("POST", "/v1/jobs", {"json": {"images": [png_b64()]}, "headers": {"Idempotency-Key": "k-1"}}),
        ("POST", "/v1/jobs", {"data": {"images": [(io.BytesIO(b"x" * 64), "a.png")]},
                              "content_type": "multipart/form-data"}),
        ("GET", "/v1/jobs", {}),
        ("GET", f"/v1/jobs/{HEX}", {}),
        ("GET", f"/v1/jobs/{HEX}?wait=5", {}),
        ("POST", f"/v1/jobs/{HEX}/cancel", {}),
        ("DELETE", f"/v1/jobs/{HEX}", {}),
        ("GET", f"/v1/jobs/{HEX}/webhooks", {}),
        ("POST", f"/v1/jobs/{HEX}/webhooks/redeliver", {}),
        ("POST", "/v1/bulk", {"json": {"source": {"bucket": BUCKET}, "dry_run": True}}),
        ("GET", "/v1/bulk", {}),
        ("GET", f"/v1/bulk/{HEX}", {}),
        ("POST", f"/v1/bulk/{HEX}/cancel", {}),
        ("GET", "/v1/usage", {}),
        ("POST", "/v1/chat/completions", {"json": {"model": "tiny_blip", "messages": [
            {"role": "user", "content": [IMAGE]}]}}),
        ("POST", "/v1/responses", {"json": {"model": "tiny_blip", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": IMAGE_URL}]}]}}),
        ("POST", "/v1/files", files),
        ("GET", "/v1/files", {}),
        ("GET", f"/v1/files/file-{HEX}", {}),
        ("GET", f"/v1/files/file-{HEX}/content", {}),
        ("DELETE", f"/v1/files/file-{HEX}", {}),
        ("POST", "/v1/batches", {"json": {"input_file_id": f"file-{HEX}", "endpoint": "/v1/chat/completions",
                                          "completion_window": "24h"}}),
        ("GET", "/v1/batches", {}),
        ("GET", f"/v1/batches/batch_{HEX}", {}),
        ("POST", f"/v1/batches/batch_{HEX}/cancel", {}),
    ]


@pytest.mark.parametrize(("method", "path", "kwargs"), open_mode_requests(),
                         ids=[f"{m} {p}" for m, p, _ in open_mode_requests()])
def test_in_the_open_mode_each_view_is_503_in_its_own_shape(
    make_settings: Callable[..., Settings], refused_port: int, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{refused_port}/0", auth="off", s3_bucket=BUCKET)
    ObjectStorage.from_settings(settings).ensure_bucket()  # a bulk job's bucket is checked before Redis is asked
    client = client_of(create_app(settings))
    started = time.monotonic()
    assert_unavailable(client.open(path, method=method, **kwargs), path.partition("?")[0])
    assert time.monotonic() - started < 5  # a refused connection fails at once; the long poll does not wait


def test_a_silent_redis_costs_a_request_one_timeout_not_a_hang(
    make_settings: Callable[..., Settings], silent_redis: int
) -> None:
    client = client_of(app_on(make_settings, silent_redis, redis_timeout_seconds=2))
    started = time.monotonic()
    assert_unavailable(client.post("/v1/chat/completions", json={}), "/v1/chat/completions")
    assert time.monotonic() - started < 4  # the key's lookup timed out, once
    started = time.monotonic()
    assert client.get("/readyz").status_code == 503
    assert time.monotonic() - started < 4


def test_metrics_are_served_without_the_backlog_while_redis_is_away(
    make_settings: Callable[..., Settings], refused_port: int
) -> None:
    """A scrape still gets the counts; the backlog has no samples rather than a 0 an autoscaler would act on."""
    client = client_of(app_on(make_settings, refused_port))
    started = time.monotonic()
    response = client.get("/metrics")
    assert response.status_code == 200 and time.monotonic() - started < 5
    text = response.get_data(as_text=True)
    assert "# TYPE captioner_backlog_images gauge" in text and "captioner_backlog_images{" not in text
