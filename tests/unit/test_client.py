"""The Python client's own behaviour against stand-in servers: retries after Retry-After, typed errors, timeouts,
and webhook verification against the Standard Webhooks library's signatures. Its calls against the real service
are tested in tests/integration/test_end_to_end.py."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook

from captioner.client import (
    APIConnectionError,
    Client,
    RateLimitError,
    ServiceUnavailableError,
    WebhookVerificationError,
    verify_webhook,
)
from cli.processes import free_ports

JOB = {"id": "0" * 32, "status": "succeeded", "created_at": "2026-12-06T12:00:00Z", "options": {}, "num_images": 1,
       "results": [{"index": 0, "caption": "a red circle on a white background"}]}


def error(code: str) -> str:
    return json.dumps({"error": {"code": code, "message": "try again"}})


def test_a_503_is_sent_again_after_its_retry_after_then_answers(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/v1/jobs/" + "0" * 32).respond_with_data(
        error("service_unavailable"), status=503, headers={"Retry-After": "1"}, content_type="application/json")
    httpserver.expect_ordered_request("/v1/jobs/" + "0" * 32).respond_with_json(JOB)
    started = time.monotonic()
    job = Client(httpserver.url_for(""), "cap_key").get("0" * 32)
    assert job.results[0].caption == "a red circle on a white background"
    assert time.monotonic() - started >= 1.0  # it waited as told
    assert len(httpserver.log) == 2 and httpserver.log[0][0].headers["Authorization"] == "Bearer cap_key"


def test_past_its_retries_the_error_is_raised_with_its_code_and_retry_after(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1/jobs").respond_with_data(
        error("rate_limited"), status=429, headers={"Retry-After": "0"}, content_type="application/json")
    with pytest.raises(RateLimitError) as limited:
        Client(httpserver.url_for(""), "k", max_retries=2).submit([b"png"])
    assert (limited.value.status, limited.value.code, limited.value.retry_after_s) == (429, "rate_limited", 0.0)
    assert len(httpserver.log) == 3
    httpserver.clear()
    httpserver.expect_request("/v1/jobs").respond_with_data("<html>bad gateway</html>", status=503)
    with pytest.raises(ServiceUnavailableError) as down:
        Client(httpserver.url_for(""), "k", max_retries=0).submit([b"png"])
    assert down.value.code == "http_error" and "bad gateway" in down.value.message


def test_an_unreachable_service_is_a_connection_error() -> None:
    (closed,) = free_ports(1)
    with pytest.raises(APIConnectionError):
        Client(f"http://127.0.0.1:{closed}", "k").get("0" * 32)


def test_webhooks_signed_by_the_standard_library_verify_and_tampered_ones_do_not() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    body = json.dumps({"type": "job.succeeded", "data": {"id": "0" * 32}})
    now = datetime.now(UTC)
    signature = Webhook(secret).sign("msg_1", now, body)
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(now.timestamp())), "Webhook-Signature": signature}
    assert verify_webhook(body.encode(), headers, secret)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.encode() + b" ", headers, secret)
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.encode(), headers, other)
    old = datetime.fromtimestamp(now.timestamp() - 3600, UTC)
    stale = headers | {"Webhook-Timestamp": str(int(old.timestamp())),
                       "Webhook-Signature": Webhook(secret).sign("msg_1", old, body)}
    with pytest.raises(WebhookVerificationError, match="five minutes"):
        verify_webhook(body.encode(), stale, secret)
