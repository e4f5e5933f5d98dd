"""POST /v1/chat/completions: one image in, its caption out as a chat completion (or a stream of chunks).

The image is captioned as a native job (api/openai_compat/captioning.py). What BLIP cannot honour is refused
with a `400` that names the parameter, never ignored: sampling (a positive temperature, top_p below 1), more
than one choice, tools, a response format other than text, log probabilities, audio.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from flask import Blueprint, Response, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field

from api.openai_compat.captioning import Captioned, caption, check_model, parse_body, refuse, usage_of
from common.errors import InvalidImageInput, InvalidRequest

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
    body = parse_body(request, ChatCompletionRequest)
    model_id = check_model(body.model)
    _refuse_what_blip_cannot_do(body)
    image, text = _the_image_and_text(body.messages)
    max_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    captioned = caption(image, text, body.caption_prefix, body.max_completion_tokens or body.max_tokens, max_param)
    completion = _completion(captioned, model_id)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return Response(stream_with_context(_chunks(completion, include_usage)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})
    return Response(json.dumps(completion), mimetype="application/json")


def _refuse_what_blip_cannot_do(body: ChatCompletionRequest) -> None:
    """Each parameter that would change the answer's meaning, at a value BLIP cannot honour."""
    refuse([
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
    ])


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


def _completion(captioned: Captioned, model_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{captioned.job_id}",
        "object": "chat.completion",
        "created": captioned.created,
        "model": model_id,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": captioned.caption, "refusal": None},
            "logprobs": None,
            "finish_reason": "length" if captioned.truncated else "stop",
        }],
        "usage": usage_of(captioned),
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
