"""A typed Python client of the service's native API: `Client(base_url, api_key)`, and `AsyncClient` for asyncio code.

Answers are the service's own pydantic models (common/schemas.py, common/bulk_schemas.py, common/usage.py), errors
are exceptions carrying the service's error code (captioner/errors.py), `429` and `503` are retried after their
`Retry-After`, and every request has a timeout. It needs httpx2 and pydantic, never torch.

    from captioner.client import Client

    client = Client("http://127.0.0.1:8000", api_key="cap_...")
    print(client.caption("photo.jpg"))                       # a path, bytes, or an http(s) URL
    job = client.submit(["a.jpg", "b.png"], prompt="a picture of")
    print(client.wait(job.id).results)

Each call is written once, without I/O, in captioner/calls.py; the two classes here only do its steps, one blocking
and one awaiting, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import date
from typing import Any, TypeVar

import httpx2

from captioner.calls import DEFAULT_TIMEOUT_S, Call, Calls, Image, Read, Sleep, Step
from captioner.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    WebhookVerificationError,
)
from common.bulk_schemas import BulkJob
from common.schemas import Job
from common.usage import UsageReport

__all__ = [
    "APIConnectionError", "APIError", "AsyncClient", "AuthenticationError", "BadRequestError", "Client",
    "ConflictError", "Image", "NotFoundError", "PermissionDeniedError", "RateLimitError", "ServiceUnavailableError",
    "WebhookVerificationError", "verify_webhook",
]

T = TypeVar("T")
# Standard Webhooks: a signature is good for five minutes either side of its timestamp.
WEBHOOK_TOLERANCE_S = 300


class Client:
    """The service's native API (`/v1/jobs`, `/v1/bulk`, `/v1/usage`) for one key. Safe to share between threads."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        """`base_url` and `api_key` default to CAPTIONER_API_URL and CAPTIONER_API_KEY. A `429` or `503` is sent
        again up to `max_retries` times, after its Retry-After (at most `max_retry_wait_s`)."""
        self._calls = Calls.configured(base_url, api_key, timeout_s, max_retries, max_retry_wait_s)
        self.base_url = self._calls.base_url
        self._http = httpx2.Client()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Jobs

    def caption(self, image: Image, prompt: str | None = None, *, timeout_s: float = 120.0, **options: Any) -> str:
        """The caption of one image (a path, bytes or an http(s) URL), optionally continuing `prompt`; `options`
        are the generation options (max_new_tokens, num_beams, ...). Raises APIError when the image fails."""
        return self._run(self._calls.caption(image, prompt, timeout_s, options))

    def submit(
        self, images: Sequence[Image], prompt: str | None = None, *, webhook: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None, **options: Any,
    ) -> Job:
        """Queue a job of these images; answers at once with the job `queued`."""
        return self._run(self._calls.submit(images, prompt, webhook, idempotency_key, options))

    def get(self, job_id: str) -> Job:
        return self._run(self._calls.get(job_id))

    def wait(self, job_id: str, timeout_s: float = 120.0) -> Job:
        """The job once it has ended, by long polling; TimeoutError if it has not after `timeout_s`."""
        return self._run(self._calls.wait(job_id, timeout_s))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._calls.cancel(job_id))

    def delete(self, job_id: str) -> None:
        """Delete an ended job: its record, results and images."""
        self._run(self._calls.delete(job_id))

    def jobs(self, page_size: int = 20) -> Iterator[Job]:
        """The caller's jobs, newest first, fetched a page at a time as the iteration goes."""
        cursor: str | None = None
        while True:
            page, cursor = self._run(self._calls.jobs_page(page_size, cursor))
            yield from page
            if cursor is None:
                return

    # Bulk runs and usage

    def bulk(self, bucket: str, prefix: str = "", *, include: Sequence[str] | None = None,
             max_objects: int | None = None, **request: Any) -> BulkJob:
        """Start a bulk run over s3://bucket/prefix (only keys matching `include`'s patterns, at most `max_objects`);
        `request` takes the rest of POST /v1/bulk's body (output, prompt, options, incremental, dry_run, webhook:
        docs/bulk.md)."""
        return self._run(self._calls.bulk(bucket, prefix, include, max_objects, request))

    def bulk_status(self, bulk_id: str) -> BulkJob:
        return self._run(self._calls.bulk_status(bulk_id))

    def usage(self, start: date | None = None, end: date | None = None) -> UsageReport:
        """What the caller's tenant used, per day, between `start` and `end` (both included; the last 30 days by
        default)."""
        return self._run(self._calls.usage(start, end))

    # I/O

    def _run(self, call: Call[T]) -> T:
        """Do each step the call yields, blocking, and send it back what the step gave, until the call returns."""
        try:
            step = next(call)
            while True:
                step = call.send(self._do(step))
        except StopIteration as done:
            result: T = done.value
            return result

    def _do(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, Read):
            return step.path.read_bytes()
        try:
            return self._http.send(step.request)
        except httpx2.TransportError as exc:
            raise step.failed(exc) from exc


class AsyncClient:
    """`Client` for asyncio code: the same calls, arguments, answers and errors, each awaited (`jobs` is an async
    iterator). Use it in the event loop it was made in, or `async with` it there."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        """As `Client`'s."""
        self._calls = Calls.configured(base_url, api_key, timeout_s, max_retries, max_retry_wait_s)
        self.base_url = self._calls.base_url
        self._http = httpx2.AsyncClient()

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Jobs

    async def caption(self, image: Image, prompt: str | None = None, *, timeout_s: float = 120.0,
                      **options: Any) -> str:
        """As `Client.caption`."""
        return await self._run(self._calls.caption(image, prompt, timeout_s, options))

    async def submit(
        self, images: Sequence[Image], prompt: str | None = None, *, webhook: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None, **options: Any,
    ) -> Job:
        return await self._run(self._calls.submit(images, prompt, webhook, idempotency_key, options))

    async def get(self, job_id: str) -> Job:
        return await self._run(self._calls.get(job_id))

    async def wait(self, job_id: str, timeout_s: float = 120.0) -> Job:
        return await self._run(self._calls.wait(job_id, timeout_s))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(self._calls.cancel(job_id))

    async def delete(self, job_id: str) -> None:
        await self._run(self._calls.delete(job_id))

    async def jobs(self, page_size: int = 20) -> AsyncIterator[Job]:
        """As `Client.jobs`: `async for job in client.jobs()`."""
        cursor: str | None = None
        while True:
            page, cursor = await self._run(self._calls.jobs_page(page_size, cursor))
            for job in page:
                yield job
            if cursor is None:
                return

    # Bulk runs and usage

    async def bulk(self, bucket: str, prefix: str = "", *, include: Sequence[str] | None = None,
                   max_objects: int | None = None, **request: Any) -> BulkJob:
        return await self._run(self._calls.bulk(bucket, prefix, include, max_objects, request))

    async def bulk_status(self, bulk_id: str) -> BulkJob:
        return await self._run(self._calls.bulk_status(bulk_id))

    async def usage(self, start: date | None = None, end: date | None = None) -> UsageReport:
        return await self._run(self._calls.usage(start, end))

    # I/O

    async def _run(self, call: Call[T]) -> T:
        """As `Client._run`, awaiting each step, so a retry's wait or a long poll never holds up the event loop."""
        try:
            step = next(call)
            while True:
                step = call.send(await self._do(step))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, Read):  # in a thread: a large file on a slow disk would stall every other task
            return await asyncio.to_thread(step.path.read_bytes)
        try:
            return await self._http.send(step.request)
        except httpx2.TransportError as exc:
            raise step.failed(exc) from exc


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The webhook's payload, once its Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`) holds under the tenant's `secret` (whsec_...) and its timestamp is within five minutes;
    else WebhookVerificationError. During a secret's rotation either signature it carries will do."""
    import json

    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        webhook_id, timestamp = lowered["webhook-id"], lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"].split()
        key = base64.b64decode(secret.removeprefix("whsec_"))
    except (KeyError, binascii.Error) as exc:
        raise WebhookVerificationError(f"missing header or bad secret: {exc}") from exc
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a number") from exc
    if abs(time.time() - sent_at) > WEBHOOK_TOLERANCE_S:
        raise WebhookVerificationError("webhook-timestamp is more than five minutes away")
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if not any(hmac.compare_digest(f"v1,{expected}", signature) for signature in signatures):
        raise WebhookVerificationError("no signature matches")
    payload: dict[str, Any] = json.loads(body)
    return payload
