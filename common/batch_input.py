"""A batch's input file, line by line, as OpenAI's Batch API defines it: each line a JSON object with a
`custom_id` (unique in the file), `method` POST, the batch's `url` (its endpoint) and a `body` that the synchronous
endpoint would take (common/openai_requests.py). Any bad line fails the whole batch at validation, with an error
naming the line, as OpenAI's does; a valid file comes down to one `Ask` per line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from common.errors import CaptionerError, InvalidParameter
from common.openai_requests import Ask, ChatCompletionRequest, ResponseRequest, parse_request
from common.schemas import GenerationOptions

ENDPOINTS: dict[str, type[ChatCompletionRequest] | type[ResponseRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/responses": ResponseRequest,
}
MAX_CUSTOM_ID_CHARS = 512
# Validation stops collecting after this many bad lines: the first few say what to fix.
MAX_ERRORS = 100


class BatchLineError(BaseModel):
    """One bad line, as OpenAI's batch `errors.data` lists them (`line` counts from 1)."""

    code: str
    message: str
    param: str | None = None
    line: int


@dataclass(frozen=True)
class BatchLine:
    line: int  # from 1
    custom_id: str
    ask: Ask


@dataclass(frozen=True)
class ValidatedInput:
    lines: list[BatchLine]
    errors: list[BatchLineError]


def validate_input(content: bytes, endpoint: str, model_id: str) -> ValidatedInput:
    """Every line of the file checked: its requests, or (if any line is bad) the bad lines, up to MAX_ERRORS."""
    batch = _Batch(endpoint, model_id)
    lines: list[BatchLine] = []
    errors: list[BatchLineError] = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _validate_line(raw, number, batch)
        except CaptionerError as exc:
            errors.append(BatchLineError(code=exc.code, message=f"Line {number}: {exc.message}",
                                         param=getattr(exc, "param", None), line=number))
            if len(errors) >= MAX_ERRORS:
                break
            continue
        lines.append(line)
    if not lines and not errors:
        errors.append(BatchLineError(code="empty_file", message="The input file holds no requests.", line=1))
    return ValidatedInput(lines if not errors else [], errors)


class _LineError(CaptionerError):
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class _Batch:
    """What every line is checked against: the batch's endpoint and model, and the custom ids seen so far."""

    endpoint: str
    model_id: str
    seen: set[str] = field(default_factory=set)


def _validate_line(raw: bytes, number: int, batch: _Batch) -> BatchLine:
    try:
        parsed: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _LineError(f"not a JSON object ({exc.__class__.__name__}).") from exc
    if not isinstance(parsed, dict):
        raise _LineError("not a JSON object.")
    custom_id = parsed.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _LineError(f"custom_id must be a string of 1-{MAX_CUSTOM_ID_CHARS} characters.", "custom_id")
    if custom_id in batch.seen:
        raise _LineError(f"custom_id {custom_id!r} is used by an earlier line; each must be unique.", "custom_id")
    batch.seen.add(custom_id)
    if parsed.get("method") != "POST":
        raise _LineError("method must be POST.", "method")
    if parsed.get("url") != batch.endpoint:
        raise _LineError(f"url must be the batch's endpoint, {batch.endpoint}.", "url")
    body = parsed.get("body")
    if not isinstance(body, dict):
        raise _LineError("body must be a JSON object: the request the endpoint would take.", "body")
    try:
        request = parse_request(body, ENDPOINTS[batch.endpoint])
        ask = request.ask()
    except InvalidParameter as exc:  # named within the body, as the line holds it
        raise _LineError(f"body.{exc.param}: {exc.message}", f"body.{exc.param}") from exc
    if request.model != batch.model_id:
        raise _LineError(f"body.model {request.model!r} is not served here; use {batch.model_id!r}.", "body.model")
    if ask.max_new is not None:
        try:
            GenerationOptions(max_new_tokens=ask.max_new)
        except ValidationError as exc:
            raise _LineError(f"body.{ask.max_param}: {exc.errors()[0]['msg']}", f"body.{ask.max_param}") from exc
    extra = set(parsed) - {"custom_id", "method", "url", "body"}
    if extra:
        raise _LineError(f"unknown fields: {', '.join(sorted(extra))}.")
    return BatchLine(number, custom_id, ask)
