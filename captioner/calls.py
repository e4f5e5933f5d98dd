"""Each call of the native API written once, without I/O, for both clients (captioner/client.py).

A call is a generator: it yields the I/O it needs (`Send` a request, `Sleep`, `Read` a file) and is sent back what
that gave. `Client` does those steps blocking and `AsyncClient` awaits them, so the requests, the answers' parsing,
the error mapping, the retries and the polling are the same code for both, and each client is a thin loop.
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import httpx2
from pydantic import BaseModel

from captioner.errors import APIConnectionError, APIError, connection_error, error_of
from common.bulk_schemas import BulkJob
from common.schemas import Job, JobList, JobStatus
from common.usage import UsageReport

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
# An image as the caller has it: a file's path, its bytes, or an http(s) URL the service fetches.
Image: TypeAlias = str | os.PathLike[str] | bytes

DEFAULT_TIMEOUT_S = 60.0
MAX_WAIT_PER_POLL_S = 30  # the service's longest long poll (?wait=N)
RETRIED_STATUSES = (429, 503)


@dataclass(frozen=True)
class Send:
    """Send this request; the call is sent back the `httpx2.Response`."""

    request: httpx2.Request
    base_url: str
    timeout_s: float

    def failed(self, exc: httpx2.TransportError) -> APIConnectionError:
        """What the call raises when the request got no answer."""
        return connection_error(exc, self.base_url, self.timeout_s)


@dataclass(frozen=True)
class Sleep:
    """Wait this long (before a retry); the call is sent back None."""

    seconds: float


@dataclass(frozen=True)
class Read:
    """Read this file; the call is sent back its bytes."""

    path: Path


Step: TypeAlias = Send | Sleep | Read
Call: TypeAlias = Generator[Step, Any, T]


@dataclass(frozen=True)
class Calls:
    """The calls for one client: its address, key, timeout and retries."""

    base_url: str
    api_key: str | None = field(repr=False)  # a secret: kept out of logs
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = 3
    max_retry_wait_s: float = 30.0

    @classmethod
    def configured(cls, base_url: str | None, api_key: str | None, timeout_s: float, max_retries: int,
                   max_retry_wait_s: float) -> Calls:
        """With CAPTIONER_API_URL and CAPTIONER_API_KEY where the caller gave no address or key."""
        url = (base_url or os.environ.get("CAPTIONER_API_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("CAPTIONER_API_KEY")
        return cls(url, key, timeout_s, max_retries, max_retry_wait_s)

    # Jobs

    def caption(self, image: Image, prompt: str | None, timeout_s: float, options: Mapping[str, Any]) -> Call[str]:
        job = yield from self.submit([image], prompt, None, None, options)
        job = yield from self.wait(job.id, timeout_s)
        return caption_of(job)

    def submit(self, images: Sequence[Image], prompt: str | None, webhook: Mapping[str, Any] | None,
               idempotency_key: str | None, options: Mapping[str, Any]) -> Call[Job]:
        encoded = []
        for image in images:
            encoded.append((yield from image_string(image)))
        body: dict[str, Any] = {"images": encoded}
        if prompt is not None:
            body["prompt"] = prompt
        if options:
            body["options"] = dict(options)
        if webhook is not None:
            body["webhook"] = dict(webhook)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return (yield from self._model(Job, "POST", "/v1/jobs", json=body, headers=headers))

    def get(self, job_id: str) -> Call[Job]:
        return (yield from self._model(Job, "GET", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout_s: float) -> Call[Job]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            # Whole seconds, at least one: rounded down to ?wait=0, the last second before the deadline was a
            # tight loop of requests (the service answers wait=0 at once).
            job = yield from self._model(Job, "GET", f"/v1/jobs/{job_id}",
                                         params={"wait": max(1, min(MAX_WAIT_PER_POLL_S, math.ceil(left)))})
            if job.status.is_terminal():
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout_s:g} s")

    def cancel(self, job_id: str) -> Call[Job]:
        return (yield from self._model(Job, "POST", f"/v1/jobs/{job_id}/cancel"))

    def delete(self, job_id: str) -> Call[None]:
        yield from self._send("DELETE", f"/v1/jobs/{job_id}")

    def jobs_page(self, page_size: int, cursor: str | None) -> Call[tuple[list[Job], str | None]]:
        """One page of the caller's jobs, newest first, and the cursor of the next (None after the last)."""
        params: dict[str, Any] = {"limit": page_size} | ({"cursor": cursor} if cursor else {})
        page = yield from self._model(JobList, "GET", "/v1/jobs", params=params)
        return page.data, page.next_cursor if page.has_more else None

    # Bulk runs and usage

    def bulk(self, bucket: str, prefix: str, include: Sequence[str] | None, max_objects: int | None,
             request: Mapping[str, Any]) -> Call[BulkJob]:
        source: dict[str, Any] = {"bucket": bucket, "prefix": prefix}
        if include:
            source["include"] = list(include)
        if max_objects:
            source["max_objects"] = max_objects
        return (yield from self._model(BulkJob, "POST", "/v1/bulk", json={"source": source} | dict(request)))

    def bulk_status(self, bulk_id: str) -> Call[BulkJob]:
        return (yield from self._model(BulkJob, "GET", f"/v1/bulk/{bulk_id}"))

    def usage(self, start: date | None, end: date | None) -> Call[UsageReport]:
        params = {k: v.isoformat() for k, v in (("start", start), ("end", end)) if v is not None}
        return (yield from self._model(UsageReport, "GET", "/v1/usage", params=params))

    # HTTP

    def _model(self, model: type[M], method: str, path: str, **request: Any) -> Call[M]:
        response = yield from self._send(method, path, **request)
        return model.model_validate_json(response.content)

    def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
              headers: Mapping[str, str] | None = None) -> Call[httpx2.Response]:
        """Send, retrying a 429 or 503 after its Retry-After; raise the error the answer names."""
        # A long poll holds the connection for its ?wait= seconds before it answers. Waiting for one of the pool's
        # connections has no limit: the requests that hold them all have theirs.
        timeout_s = self.timeout_s + float((params or {}).get("wait", 0))
        key = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = httpx2.Request(
            method, f"{self.base_url}{path}", params=params, json=json, headers=key | dict(headers or {}),
            extensions={"timeout": httpx2.Timeout(timeout_s, pool=None).as_dict()},
        )
        attempt = 0
        while True:
            response: httpx2.Response = yield Send(request, self.base_url, timeout_s)
            if response.is_success:
                return response
            error = error_of(response)
            delay = self.retry_delay(error, attempt)
            if delay is None:
                raise error
            yield Sleep(delay)
            attempt += 1

    def retry_delay(self, error: APIError, attempt: int) -> float | None:
        """How long to wait before sending again after this error on this attempt (0 the first); None: raise it."""
        if error.status not in RETRIED_STATUSES or attempt >= self.max_retries:
            return None
        return min(self.max_retry_wait_s, error.retry_after_s if error.retry_after_s is not None else 1.0)


def caption_of(job: Job) -> str:
    """The caption of a one-image job that has ended; APIError when it has none."""
    if job.status is not JobStatus.SUCCEEDED or not job.results:
        error = job.error
        raise APIError(200, error.code if error else job.status.value,
                       error.message if error else f"The job ended {job.status.value}.")
    result = job.results[0]
    if result.caption is None:
        code, message = (result.error.code, result.error.message) if result.error else ("failed", "No caption.")
        raise APIError(200, code, message)
    return result.caption


def image_string(image: Image) -> Call[str]:
    """How the JSON body carries an image: an http(s) URL or data: URI as it is, a file or bytes as base64."""
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    data: bytes = image if isinstance(image, bytes) else (yield Read(Path(image)))
    return base64.b64encode(data).decode()
