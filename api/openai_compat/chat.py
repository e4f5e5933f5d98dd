"""POST /v1/chat/completions: one image in, its caption out as a chat completion (or a stream of chunks).

The request becomes a native job of the caller's tenant (api/jobs.py: the same admission, limits, queue, batching
and usage), and waits for it up to CAPTIONER_SYNC_TIMEOUT_SECONDS. What BLIP cannot honour is refused with a `400`
that names the parameter, never ignored: sampling (a positive temperature, top_p below 1), more than one choice,
tools, a response format other than text, log probabilities, audio.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from flask import Blueprint, Response, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import caller
from api.intake import ParsedJob, json_object, parse_image_string
from api.jobs import submit_job
from api.openai_compat.prefix import caption_prefix
from api.prompts import check_prompt, model_text
from api.services import services
from common.errors import (
    CaptionTimedOut,
    InvalidImageInput,
    InvalidParameter,
    InvalidRequest,
    MissingParameter,
    ModelNotFound,
    UnsupportedMediaType,
    UnsupportedParameter,
)
from common.schemas import GenerationOptions, Job, JobRequest, JobStatus

blueprint = Blueprint("openai_chat", __name__, url_prefix="/v1/chat")


class ImageUrl(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The parameters accepted; any other is refused by name (`extra="forbid"`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    logprobs: bool | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    # Ours, sent from the SDK through extra_body: the caption's start, whatever the message's text says.
    caption_prefix: str | None = None


@blueprint.post("/completions")
def create_chat_completion() -> Response:
    svc = services()
    body = _parse(json_object(request) if request.mimetype == "application/json" else _wrong_type())
    model_id = svc.settings.served_model_id
    if body.model != model_id:
        raise ModelNotFound(f"The model {body.model!r} does not exist here; this service serves {model_id!r}.")
    _refuse_what_blip_cannot_do(body)
    image, text = _the_image_and_text(body.messages)
    prompt = body.caption_prefix if body.caption_prefix is not None else caption_prefix(text)
    prompt = prompt or None
    max_new = body.max_completion_tokens or body.max_tokens
    try:
        options = GenerationOptions(**({"max_new_tokens": max_new} if max_new else {}))
    except ValidationError as exc:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise InvalidParameter(param, f"{param}: {exc.errors()[0]['msg']}") from exc
    check_prompt(prompt, options.max_new_tokens, svc.settings)
    parsed = ParsedJob([parse_image_string(image, 0, svc.settings)], JobRequest(prompt=prompt, options=options))
    job = submit_job(svc, caller(), parsed, svc.settings.sync_timeout_seconds)
    if not job.status.is_terminal():
        svc.jobs.finish(job.id, JobStatus.CANCELED)
        raise CaptionTimedOut(f"The caption took longer than {svc.settings.sync_timeout_seconds:g} s; the job was "
                              "canceled. Try again, or use the Batch API for work that can wait.")
    completion = _completion(job, model_id, prompt, options)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return Response(stream_with_context(_chunks(completion, include_usage)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})
    return Response(json.dumps(completion), mimetype="application/json")


def _wrong_type() -> dict[str, Any]:
    raise UnsupportedMediaType("Send the chat completion request as application/json.")


def _parse(raw: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        if error["type"] == "extra_forbidden" and param:
            raise UnsupportedParameter(param, f"{param} is not supported by this service.") from exc
        if error["type"] == "missing" and param:
            raise MissingParameter(param, f"{param} is required.") from exc
        raise InvalidParameter(param or "body", f"{param}: {error['msg']}") from exc


def _refuse_what_blip_cannot_do(body: ChatCompletionRequest) -> None:
    """Each parameter that would change the answer's meaning, at a value BLIP cannot honour."""
    refusals: list[tuple[str, bool, str]] = [
        ("n", body.n not in (None, 1), "only one choice is generated (n=1)"),
        ("temperature", bool(body.temperature), "decoding is deterministic: temperature 0 or none"),
        ("top_p", body.top_p not in (None, 1), "decoding is deterministic: top_p 1 or none"),
        ("logprobs", bool(body.logprobs), "log probabilities are not returned"),
        ("tools", bool(body.tools), "BLIP calls no tools"),
        ("tool_choice", body.tool_choice not in (None, "none"), "BLIP calls no tools"),
        ("response_format", body.response_format not in (None, {"type": "text"}), "the answer is plain text"),
        ("modalities", body.modalities not in (None, ["text"]), "the answer is text"),
        ("audio", body.audio is not None, "the answer is text"),
        ("frequency_penalty", bool(body.frequency_penalty), "not supported; use 0 or none"),
        ("presence_penalty", bool(body.presence_penalty), "not supported; use 0 or none"),
    ]
    for param, refused, why in refusals:
        if refused:
            raise UnsupportedParameter(param, f"{param}: {why}.")


def _the_image_and_text(messages: list[Message]) -> tuple[str, str]:
    """The user message's one image (its URL) and its text. System and developer messages are instructions, which
    BLIP cannot follow: they are accepted and do not change the caption (docs/openai.md)."""
    users = [m for m in messages if m.role == "user"]
    others = [m.role for m in messages if m.role not in ("user", "system", "developer")]
    if len(users) != 1 or others:
        raise InvalidRequest("messages: send one user message holding one image (BLIP captions one image; it "
                             "holds no conversation).")
    content = users[0].content
    parts = content if isinstance(content, list) else [ContentPart(type="text", text=content or "")]
    images = [p.image_url.url for p in parts if p.type == "image_url" and p.image_url is not None]
    if len(images) != 1:
        raise InvalidImageInput(f"messages: the user message must hold exactly one image_url part, not "
                                f"{len(images)}.")
    return images[0], " ".join(p.text or "" for p in parts if p.type == "text")


def _completion(job: Job, model_id: str, prompt: str | None, options: GenerationOptions) -> dict[str, Any]:
    result = job.results[0] if job.results else None
    if result is None or result.caption is None:
        error = result.error if result is not None else job.error
        message = error.message if error is not None else f"The job ended {job.status.value}."
        raise InvalidImageInput(f"messages: the image could not be captioned: {message}")
    completion_tokens = result.new_tokens or 0
    prompt_tokens = model_text(services().settings.model).image_tokens + (
        model_text(services().settings.model).count(prompt) or 0 if prompt else 0)
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": model_id,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.caption, "refusal": None},
            "logprobs": None,
            "finish_reason": "length" if completion_tokens >= options.max_new_tokens else "stop",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": None,
    }


def _chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """The completion as server-sent `chat.completion.chunk` events, as OpenAI streams one: the role, the content,
    the finish reason, with include_usage a last chunk with the usage and no choices, then [DONE]."""
    choice = completion["choices"][0]
    base = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    deltas = [({"role": "assistant", "content": "", "refusal": None}, None),
              ({"content": choice["message"]["content"]}, None),
              ({}, choice["finish_reason"])]
    for delta, finish in deltas:
        chunk = base | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            chunk["usage"] = None
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        yield f"data: {json.dumps(base | {'choices': [], 'usage': completion['usage']})}\n\n"
    yield "data: [DONE]\n\n"
