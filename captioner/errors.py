"""The Python client's exceptions, and which one an error answer raises (the service's statuses, docs/http-api.md).

Both clients raise these (captioner/client.py re-exports them); the code that picks one is `error_of`, here only.
"""

from __future__ import annotations

import httpx2


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


def error_of(response: httpx2.Response) -> APIError:
    """The error a non-2xx answer raises: the service's code and message, or the body's start from anything else (a
    proxy's HTML page, say)."""
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason_phrase
    try:
        retry_after: float | None = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        retry_after = None
    return _ERRORS_BY_STATUS.get(response.status_code, APIError)(response.status_code, code, message, retry_after)


def connection_error(exc: httpx2.TransportError, base_url: str, timeout_s: float) -> APIConnectionError:
    """What a request that got no answer raises."""
    if isinstance(exc, httpx2.TimeoutException):
        return APIConnectionError(f"{base_url} did not answer within {timeout_s:g} s")
    return APIConnectionError(f"could not reach {base_url}: {exc}")
