"""The Python clients' own behaviour against stand-in servers: retries after Retry-After, typed errors, timeouts,
files, long polls and pages, and webhook verification against the Standard Webhooks library's signatures. Each
behaviour is checked on both `Client` and `AsyncClient`: they share their calls (captioner/calls.py), and these tests
hold them to it. Their calls against the real service are tested in tests/integration/test_end_to_end.py and
tests/integration/test_async_client.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from captioner.client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    Client,
    RateLimitError,
    ServiceUnavailableError,
    WebhookVerificationError,
    verify_webhook,
)
from cli.processes import free_ports

ID = "0" * 32
JOB = {"id": ID, "status": "succeeded", "created_at": "2026-12-06T12:00:00Z", "options": {}, "num_images": 1,
       "results": [{"index": 0, "caption": "a red circle on a white background"}]}
KINDS = ["Client", "AsyncClient"]


def error(code: str) -> str:
    return json.dumps({"error": {"code": code, "message": "try again"}})


def call(kind: str, url: str, name: str, *args: Any, client: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """`name(*args, **kwargs)` on a Client, or awaited on an AsyncClient in an event loop of its own; `jobs` as a
    list."""
    if kind == "Client":
        with Client(url, "cap_key", **(client or {})) as sync:
            answer = getattr(sync, name)(*args, **kwargs)
            return list(answer) if name == "jobs" else answer

    async def run() -> Any:
        async with AsyncClient(url, "cap_key", **(client or {})) as aio:
            if name == "jobs":
                return [job async for job in aio.jobs(*args, **kwargs)]
            return await getattr(aio, name)(*args, **kwargs)

    return asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
def test_a_503_is_sent_again_after_its_retry_after_then_answers(httpserver: HTTPServer, kind: str) -> None:
    httpserver.expect_ordered_request("/v1/jobs/" + ID).respond_with_data(
        error("service_unavailable"), status=503, headers={"Retry-After": "1"}, content_type="application/json")
    httpserver.expect_ordered_request("/v1/jobs/" + ID).respond_with_json(JOB)
    started = time.monotonic()
    job = call(kind, httpserver.url_for(""), "get", ID)
    assert job.results[0].caption == "a red circle on a white background"
    assert time.monotonic() - started >= 1.0  # it waited as told
    assert len(httpserver.log) == 2 and httpserver.log[0][0].headers["Authorization"] == "Bearer cap_key"


@pytest.mark.parametrize("kind", KINDS)
def test_past_its_retries_the_error_is_raised_with_its_code_and_retry_after(httpserver: HTTPServer, kind: str) -> None:
    httpserver.expect_request("/v1/jobs").respond_with_data(
        error("rate_limited"), status=429, headers={"Retry-After": "0"}, content_type="application/json")
    with pytest.raises(RateLimitError) as limited:
        call(kind, httpserver.url_for(""), "submit", [b"png"], client={"max_retries": 2})
    assert (limited.value.status, limited.value.code, limited.value.retry_after_s) == (429, "rate_limited", 0.0)
    assert len(httpserver.log) == 3
    httpserver.clear()
    httpserver.expect_request("/v1/jobs").respond_with_data("<html>bad gateway</html>", status=503)
    with pytest.raises(ServiceUnavailableError) as down:
        call(kind, httpserver.url_for(""), "submit", [b"png"], client={"max_retries": 0})
    assert down.value.code == "http_error" and "bad gateway" in down.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_service_is_a_connection_error(kind: str) -> None:
    (closed,) = free_ports(1)
    with pytest.raises(APIConnectionError, match="could not reach"):
        call(kind, f"http://127.0.0.1:{closed}", "get", ID)


@pytest.mark.parametrize("kind", KINDS)
def test_a_service_slower_than_the_timeout_is_a_connection_error(httpserver: HTTPServer, kind: str) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.3)
        return Response(json.dumps(JOB), content_type="application/json")

    httpserver.expect_request("/v1/jobs/" + ID).respond_with_handler(slow)
    with pytest.raises(APIConnectionError, match=r"did not answer within 0\.1 s"):
        call(kind, httpserver.url_for(""), "get", ID, client={"timeout_s": 0.1})
    deadline = time.monotonic() + 5
    while not httpserver.log and time.monotonic() < deadline:  # the next test's log starts empty
        time.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_a_wait_long_polls_to_its_deadline_without_a_burst_of_requests(httpserver: HTTPServer, kind: str) -> None:
    def running(request: Request) -> Response:
        time.sleep(min(int(request.args["wait"]), 1))  # the service holds a long poll up to its wait (here 1 s)
        return Response(json.dumps(JOB | {"status": "running", "results": []}), content_type="application/json")

    httpserver.expect_request("/v1/jobs/" + ID).respond_with_handler(running)
    with pytest.raises(TimeoutError):
        call(kind, httpserver.url_for(""), "wait", ID, 1.5)
    waits = [int(request.args["wait"]) for request, _ in httpserver.log]
    assert len(waits) <= 3 and min(waits) >= 1, waits  # no ?wait=0 polls in the last second


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_is_sent_as_base64_a_caption_long_polls_and_jobs_come_a_page_at_a_time(
    httpserver: HTTPServer, kind: str, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG not really")
    sent = {"images": [base64.b64encode(photo.read_bytes()).decode()], "prompt": "a picture of",
            "options": {"max_new_tokens": 20}}
    httpserver.expect_request("/v1/jobs", method="POST", json=sent).respond_with_json(
        JOB | {"status": "queued"}, status=202)
    httpserver.expect_oneshot_request("/v1/jobs/" + ID, query_string={"wait": "30"}).respond_with_json(
        JOB | {"status": "running", "results": []})
    httpserver.expect_oneshot_request("/v1/jobs/" + ID, query_string={"wait": "30"}).respond_with_json(JOB)
    caption = call(kind, httpserver.url_for(""), "caption", photo, "a picture of", max_new_tokens=20)
    assert caption == "a red circle on a white background"
    assert len(httpserver.log) == 3  # submitted, then two long polls

    httpserver.clear()
    failed = JOB | {"results": [{"index": 0, "error": {"code": "invalid_image", "message": "not an image"}}]}
    httpserver.expect_request("/v1/jobs", method="POST").respond_with_json(JOB | {"status": "queued"}, status=202)
    httpserver.expect_request("/v1/jobs/" + ID).respond_with_json(failed)
    with pytest.raises(APIError) as refused:
        call(kind, httpserver.url_for(""), "caption", b"not an image")
    assert refused.value.code == "invalid_image"

    pages = [("", {"limit": "2"}, "c2"), ("1", {"limit": "2", "cursor": "c2"}, None)]
    for digit, query, next_cursor in pages:
        page = [JOB | {"id": digit * 32 or ID}] * 2
        httpserver.expect_request("/v1/jobs", method="GET", query_string=query).respond_with_json(
            {"data": page, "has_more": next_cursor is not None, "next_cursor": next_cursor})
    assert [job.id for job in call(kind, httpserver.url_for(""), "jobs", page_size=2)] == [ID, ID, "1" * 32, "1" * 32]


def test_the_async_client_s_waits_leave_the_event_loop_free(httpserver: HTTPServer) -> None:
    """While one call waits out a Retry-After, the loop's other tasks run: the wait is awaited, not slept."""
    httpserver.expect_ordered_request("/v1/jobs/" + ID).respond_with_data(
        error("service_unavailable"), status=503, headers={"Retry-After": "1"}, content_type="application/json")
    httpserver.expect_ordered_request("/v1/jobs/" + ID).respond_with_json(JOB)
    ticks: list[float] = []

    async def tick() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.1)

    async def main() -> None:
        async with AsyncClient(httpserver.url_for(""), "cap_key") as client:
            job, _ = await asyncio.gather(client.get(ID), tick())
        assert job.status.value == "succeeded"

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started >= 1.0 and len(ticks) == 5 and ticks[-1] - started < 0.9


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
