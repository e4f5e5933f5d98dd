"""A batch's input file, line by line, as OpenAI's Batch API defines it: each line a JSON object with a
`custom_id` (unique in the file), `method` POST, the batch's `url` (its endpoint) and a `body` that the synchronous
endpoint would take (common/openai_requests.py). Any bad line fails the whole batch at validation, with an error
naming the line, as OpenAI's does. "Bad" is what the synchronous endpoint would refuse with a 400 before looking at
the image (an unsupported parameter, a prompt too long, an image string that is no URL or data: URI); an image that
cannot be fetched or decoded fails its line alone, at captioning, into the batch's error file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from common.errors import CaptionerError, InvalidParameter
from common.openai_requests import CaptionAsk, ChatCompletionRequest, ResponseRequest, parse_request, resolve
from common.settings import Settings

ENDPOINTS: dict[str, type[ChatCompletionRequest] | type[ResponseRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/responses": ResponseRequest,
}
MAX_CUSTOM_ID_CHARS = 512
# Validation stops collecting after this many bad lines: the first few say what to fix.
MAX_ERRORS = 100


class BatchLineError(BaseModel):
    """One bad line, as OpenAI's batch `errors.data` lists them (`line` counts from 1; None: the file as a whole)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch, checked as its synchronous endpoint checks one."""

    line: int  # from 1
    custom_id: str
    request: ChatCompletionRequest | ResponseRequest
    asked: CaptionAsk


class InputValidator:
    """A file's lines checked one at a time, as the worker streams the file from S3: every line a request (the
    count), or the bad lines named, up to MAX_ERRORS."""

    def __init__(self, endpoint: str, settings: Settings) -> None:
        self._endpoint = endpoint
        self._settings = settings
        self._seen: set[str] = set()
        self.requests = 0
        self.errors: list[BatchLineError] = []

    @property
    def full(self) -> bool:
        """Enough bad lines to say what to fix: reading on would only add more of them."""
        return len(self.errors) >= MAX_ERRORS

    def check(self, raw: bytes, number: int) -> bool:
        """True for a line that is a good request; False for a blank one or a bad one (recorded in `errors`)."""
        if not raw.strip():
            return False
        try:
            parse_line(raw, number, self._endpoint, self._settings, self._seen)
        except BatchLineFailed as exc:
            self.errors.append(exc.error)
            return False
        self.requests += 1
        return True

    def finish(self) -> list[BatchLineError]:
        """The errors that fail the file: its bad lines, or that it holds no request at all."""
        if not self.requests and not self.errors:
            self.errors.append(BatchLineError(code="empty_file", message="The input file holds no requests.", line=1))
        return self.errors


class BatchLineFailed(CaptionerError):
    """A line that is not a request the batch's endpoint would take."""

    code = "invalid_request"

    def __init__(self, error: BatchLineError) -> None:
        super().__init__(error.message)
        self.error = error


def parse_line(raw: bytes, number: int, endpoint: str, settings: Settings, seen: set[str] | None = None) -> BatchLine:
    """The request on line `number`, or BatchLineFailed naming what is wrong with it; `seen`, when given, holds the
    custom ids of the lines before, for each to be unique."""
    try:
        return _parse_line(raw, number, endpoint, settings, seen)
    except CaptionerError as exc:
        raise BatchLineFailed(BatchLineError(code=exc.code, message=f"Line {number}: {exc.message}",
                                             param=getattr(exc, "param", None), line=number)) from exc


class _LineError(CaptionerError):
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code or self.code


def _parse_line(raw: bytes, number: int, endpoint: str, settings: Settings, seen: set[str] | None) -> BatchLine:
    try:
        parsed: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _LineError(f"not a JSON object ({exc.__class__.__name__}).") from exc
    if not isinstance(parsed, dict):
        raise _LineError("not a JSON object.")
    custom_id = parsed.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _LineError(f"custom_id must be a string of 1-{MAX_CUSTOM_ID_CHARS} characters.", "custom_id")
    if seen is not None:
        if custom_id in seen:
            raise _LineError(f"custom_id {custom_id!r} is used by an earlier line; each must be unique.", "custom_id")
        seen.add(custom_id)
    if parsed.get("method") != "POST":
        raise _LineError("method must be POST.", "method")
    if parsed.get("url") != endpoint:
        raise _LineError(f"url must be the batch's endpoint, {endpoint}.", "url")
    body = parsed.get("body")
    if not isinstance(body, dict):
        raise _LineError("body must be a JSON object: the request the endpoint would take.", "body")
    extra = set(parsed) - {"custom_id", "method", "url", "body"}
    if extra:
        raise _LineError(f"unknown fields: {', '.join(sorted(extra))}.")
    try:
        request = parse_request(body, ENDPOINTS[endpoint])
        served = settings.served_model_id
        if request.model != served:
            raise _LineError(f"body.model {request.model!r} is not served here; use {served!r}.", "body.model")
        asked = resolve(request.ask(), settings)
    except InvalidParameter as exc:  # named within the body, as the line holds it
        raise _LineError(f"body.{exc.param}: {exc.message}", f"body.{exc.param}", exc.code) from exc
    return BatchLine(number, custom_id, request, asked)
