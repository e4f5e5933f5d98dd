"""Errors in OpenAI's shape on the OpenAI-compatible paths: `{"error": {"message", "type", "param", "code"}}`, with
OpenAI's codes where it has one for the same thing, so the SDK raises its own exception types."""

from __future__ import annotations

# The paths answered in OpenAI's shapes, now and as the rest of its surface comes (files, batches).
_PREFIXES = ("/v1/chat/", "/v1/models", "/v1/responses", "/v1/files", "/v1/batches")

# Native codes that OpenAI names otherwise.
_CODES = {"unauthorized": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}


def openai_shaped(path: str) -> bool:
    return path.startswith(_PREFIXES)


def openai_error(code: str, message: str, status: int, param: str | None) -> dict[str, str | None]:
    if status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"message": message, "type": kind, "param": param, "code": _CODES.get(code, code)}
