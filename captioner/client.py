"""A typed Python client of the service's native API: `Client(base_url, api_key)`.

Answers are the service's own pydantic models (common/schemas.py, common/bulk_schemas.py, common/usage.py), errors
are exceptions carrying the service's error code, `429` and `503` are retried after their `Retry-After`, and every
request has a timeout. It needs requests and pydantic, never torch.

    from captioner.client import Client

    client = Client("http://127.0.0.1:8000", api_key="cap_...")
    print(client.caption("photo.jpg"))                       # a path, bytes, or an http(s) URL
    job = client.submit(["a.jpg", "b.png"], prompt="a picture of")
    print(client.wait(job.id).results)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import BaseModel

from common.bulk_schemas import BulkJob
from common.schemas import Job, JobList, JobStatus
from common.usage import UsageReport

M = TypeVar("M", bound=BaseModel)
# An image as the caller has it: a file's path, its bytes, or an http(s) URL the service fetches.
Image = str | os.PathLike[str] | bytes

DEFAULT_TIMEOUT_S = 60.0
MAX_WAIT_PER_POLL_S = 30  # the service's longest long poll (?wait=N)
# Standard Webhooks: a signature is good for five minutes either side of its timestamp.
WEBHOOK_TOLERANCE_S = 300


class APIError(Exception):
    """The service answered an error: `code` is its error code (docs/http-api.md), `status` the HTTP status."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


class BadRequestError(APIError):
    """400, 413, 415 or 422: the request itself is wrong; sending it again will not help."""


class AuthenticationError(APIError):
    """401: no key, or one that is not valid."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (a bucket it was not given, say)."""


class NotFoundError(APIError):
    """404: no such job (or not the caller's)."""


class ConflictError(APIError):
    """409: not now (deleting a job that has not ended, say)."""


class RateLimitError(APIError):
    """429: over the key's rate or in-flight limit, still after the client's retries."""


class ServiceUnavailableError(APIError):
    """503: the service is down or full, still after the client's retries."""


class APIConnectionError(Exception):
    """The service could not be reached, or did not answer in time."""


class WebhookVerificationError(Exception):
    """A webhook's signature or timestamp does not hold: do not trust its body."""


_ERRORS_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 413: BadRequestError, 415: BadRequestError, 422: BadRequestError,
    401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError, 409: ConflictError,
    429: RateLimitError, 503: ServiceUnavailableError,
}


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
        self.base_url = (base_url or os.environ.get("CAPTIONER_API_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self._http = requests.Session()
        key = api_key or os.environ.get("CAPTIONER_API_KEY")
        if key:
            self._http.headers["Authorization"] = f"Bearer {key}"

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
        job = self.wait(self.submit([image], prompt, **options).id, timeout_s=timeout_s)
        if job.status is not JobStatus.SUCCEEDED or not job.results:
            error = job.error
            raise APIError(200, error.code if error else job.status.value,
                           error.message if error else f"The job ended {job.status.value}.")
        result = job.results[0]
        if result.caption is None:
            code, message = (result.error.code, result.error.message) if result.error else ("failed", "No caption.")
            raise APIError(200, code, message)
        return result.caption

    def submit(
        self, images: Sequence[Image], prompt: str | None = None, *, webhook: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None, **options: Any,
    ) -> Job:
        """Queue a job of these images; answers at once with the job `queued`."""
        body: dict[str, Any] = {"images": [_image_string(image) for image in images]}
        if prompt is not None:
            body["prompt"] = prompt
        if options:
            body["options"] = options
        if webhook is not None:
            body["webhook"] = dict(webhook)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._model(Job, "POST", "/v1/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> Job:
        return self._model(Job, "GET", f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, timeout_s: float = 120.0) -> Job:
        """The job once it has ended, by long polling; TimeoutError if it has not after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            job = self._model(Job, "GET", f"/v1/jobs/{job_id}",
                              params={"wait": max(0, min(MAX_WAIT_PER_POLL_S, int(left)))})
            if job.status.is_terminal():
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout_s:g} s")

    def cancel(self, job_id: str) -> Job:
        return self._model(Job, "POST", f"/v1/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        """Delete an ended job: its record, results and images."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def jobs(self, page_size: int = 20) -> Iterator[Job]:
        """The caller's jobs, newest first, fetched a page at a time as the iteration goes."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size} | ({"cursor": cursor} if cursor else {})
            page = self._model(JobList, "GET", "/v1/jobs", params=params)
            yield from page.data
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    # Bulk runs and usage

    def bulk(self, bucket: str, prefix: str = "", *, include: Sequence[str] | None = None,
             max_objects: int | None = None, **request: Any) -> BulkJob:
        """Start a bulk run over s3://bucket/prefix (only keys matching `include`'s patterns, at most `max_objects`);
        `request` takes the rest of POST /v1/bulk's body (output, prompt, options, incremental, dry_run, webhook:
        docs/bulk.md)."""
        source: dict[str, Any] = {"bucket": bucket, "prefix": prefix}
        if include:
            source["include"] = list(include)
        if max_objects:
            source["max_objects"] = max_objects
        return self._model(BulkJob, "POST", "/v1/bulk", json={"source": source} | request)

    def bulk_status(self, bulk_id: str) -> BulkJob:
        return self._model(BulkJob, "GET", f"/v1/bulk/{bulk_id}")

    def usage(self, start: date | None = None, end: date | None = None) -> UsageReport:
        """What the caller's tenant used, per day, between `start` and `end` (both included; the last 30 days by
        default)."""
        params = {k: v.isoformat() for k, v in (("start", start), ("end", end)) if v is not None}
        return self._model(UsageReport, "GET", "/v1/usage", params=params)

    # HTTP

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send, retrying a 429 or 503 after its Retry-After; raise the error the answer names."""
        # A long poll holds the connection for its ?wait= seconds before it answers.
        timeout = self.timeout_s + float(kwargs.get("params", {}).get("wait", 0))
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, f"{self.base_url}{path}", timeout=timeout, **kwargs)
            except requests.Timeout as exc:
                raise APIConnectionError(f"{self.base_url} did not answer within {timeout:g} s") from exc
            except requests.ConnectionError as exc:
                raise APIConnectionError(f"could not reach {self.base_url}: {exc}") from exc
            if response.status_code < 400:
                return response
            error = _error_of(response)
            if error.status not in (429, 503) or attempt == self.max_retries:
                raise error
            time.sleep(min(self.max_retry_wait_s, error.retry_after_s if error.retry_after_s is not None else 1.0))
        raise AssertionError("not reached")


def _error_of(response: requests.Response) -> APIError:
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason
    try:
        retry_after: float | None = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        retry_after = None
    return _ERRORS_BY_STATUS.get(response.status_code, APIError)(response.status_code, code, message, retry_after)


def _image_string(image: Image) -> str:
    """How the JSON body carries an image: an http(s) URL as it is, a file or bytes as base64."""
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode()


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
