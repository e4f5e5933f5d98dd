"""The answers of the OpenAI-compatible endpoints, built from one captioned image: a chat completion (and its
stream of chunks) and a response object, as plain dicts, so that a batch's output lines hold exactly the objects the
synchronous endpoints answer. Each is built through its model in common/openai_objects.py, which /openapi.json
documents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from common.openai_objects import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    IncompleteDetails,
    InputTokensDetails,
    OpenAIErrorBody,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ResponseObject,
    ResponseUsage,
    TextConfig,
    TextFormat,
)
from common.openai_requests import ResponseRequest

# Native codes that OpenAI names otherwise.
_CODES = {"unauthorized": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}


@dataclass(frozen=True)
class Captioned:
    job_id: str
    created: int  # Unix seconds
    caption: str
    prompt_tokens: int  # the image's positions in the vision encoder, and the prompt's tokens
    completion_tokens: int
    truncated: bool  # the caption used all of its new tokens


def usage_of(captioned: Captioned) -> dict[str, Any]:
    return _usage(captioned).model_dump()


def _usage(captioned: Captioned) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=captioned.prompt_tokens, completion_tokens=captioned.completion_tokens,
                           total_tokens=captioned.prompt_tokens + captioned.completion_tokens)


def chat_completion(captioned: Captioned, model_id: str) -> dict[str, Any]:
    return ChatCompletion(
        id=f"chatcmpl-{captioned.job_id}",
        object="chat.completion",
        created=captioned.created,
        model=model_id,
        choices=[ChatCompletionChoice(
            index=0,
            message=ChatCompletionMessage(role="assistant", content=captioned.caption, refusal=None),
            logprobs=None,
            finish_reason="length" if captioned.truncated else "stop",
        )],
        usage=_usage(captioned),
        system_fingerprint=None,
    ).model_dump(mode="json")


def completion_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """The completion as server-sent `chat.completion.chunk` events, as OpenAI streams one: the role, the content,
    the finish reason, with include_usage a last chunk with the usage and no choices, then [DONE]."""
    choice = completion["choices"][0]
    base = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint")}
    deltas = [(ChunkDelta(role="assistant", content="", refusal=None), None),
              (ChunkDelta(content=choice["message"]["content"]), None),
              (ChunkDelta(), choice["finish_reason"])]
    # Only what is set is sent: a delta holds only what it adds, and `usage` is there only with include_usage.
    for delta, finish in deltas:
        chunk = ChatCompletionChunk(
            **base, object="chat.completion.chunk",
            choices=[ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish)],
            **({"usage": None} if include_usage else {}),
        )
        yield f"data: {json.dumps(chunk.model_dump(mode='json', exclude_unset=True))}\n\n"
    if include_usage:
        last = ChatCompletionChunk(**base, object="chat.completion.chunk", choices=[],
                                   usage=CompletionUsage.model_validate(completion["usage"]))
        yield f"data: {json.dumps(last.model_dump(mode='json', exclude_unset=True))}\n\n"
    yield "data: [DONE]\n\n"


def response_object(captioned: Captioned, model_id: str, body: ResponseRequest) -> dict[str, Any]:
    status: Literal["completed", "incomplete"] = "incomplete" if captioned.truncated else "completed"
    return ResponseObject(
        id=f"resp_{captioned.job_id}",
        object="response",
        created_at=captioned.created,
        status=status,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if captioned.truncated else None,
        error=None,
        model=model_id,
        output=[OutputMessage(
            type="message", id=f"msg_{captioned.job_id}", status=status, role="assistant",
            content=[OutputText(type="output_text", text=captioned.caption, annotations=[])],
        )],
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {},
        parallel_tool_calls=False,
        previous_response_id=None,
        temperature=body.temperature,
        top_p=body.top_p,
        tool_choice="none",
        tools=[],
        text=TextConfig(format=TextFormat(type="text")),
        user=body.user,
        usage=ResponseUsage(
            input_tokens=captioned.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
            output_tokens=captioned.completion_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            total_tokens=captioned.prompt_tokens + captioned.completion_tokens,
        ),
    ).model_dump(mode="json")


def openai_error(code: str, message: str, status: int, param: str | None) -> dict[str, str | None]:
    """An error in OpenAI's shape (the value of the body's "error"), with OpenAI's code where it has one for the
    same thing and the type OpenAI gives its status."""
    if status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return OpenAIErrorBody(message=message, type=kind, param=param, code=_CODES.get(code, code)).model_dump()
