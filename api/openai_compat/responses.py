"""POST /v1/responses (the Responses API, not streamed): one `input_image` in, its caption out as `output_text` in a
response object. The same captioning as chat completions (api/openai_compat/captioning.py), the same refusals of
what BLIP cannot honour, each naming its parameter."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field

from api.openai_compat.captioning import Captioned, caption, check_model, parse_body, refuse
from common.errors import InvalidImageInput, InvalidRequest

blueprint = Blueprint("openai_responses", __name__, url_prefix="/v1/responses")


class InputText(BaseModel):
    type: Literal["input_text"]
    text: str


class InputImage(BaseModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class InputMessage(BaseModel):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Annotated[InputText | InputImage, Field(discriminator="type")]]


class ResponseRequest(BaseModel):
    """The parameters accepted; any other is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[InputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: str | None = None
    include: list[str] | None = None
    # Ours, sent from the SDK through extra_body: the caption's start, whatever the input's text says.
    caption_prefix: str | None = None


@blueprint.post("")
def create_response() -> Response:
    body = parse_body(request, ResponseRequest)
    model_id = check_model(body.model)
    refuse([
        ("stream", body.stream, "responses are not streamed here; use chat completions with stream=true"),
        ("temperature", bool(body.temperature), "decoding is deterministic: temperature 0 or none"),
        ("top_p", body.top_p not in (None, 1), "decoding is deterministic: top_p 1 or none"),
        ("tools", bool(body.tools), "BLIP calls no tools"),
        ("tool_choice", body.tool_choice not in (None, "none"), "BLIP calls no tools"),
        ("text", body.text not in (None, {"format": {"type": "text"}}), "the answer is plain text"),
        ("reasoning", body.reasoning is not None, "BLIP does not reason"),
        ("previous_response_id", body.previous_response_id is not None, "BLIP holds no conversation"),
        ("include", bool(body.include), "nothing more can be included"),
    ])
    image, text = _the_image_and_text(body.input)
    captioned = caption(image, text, body.caption_prefix, body.max_output_tokens, "max_output_tokens")
    return Response(json.dumps(_response(captioned, model_id, body)), mimetype="application/json")


def _the_image_and_text(given: str | list[InputMessage]) -> tuple[str, str]:
    """The user message's one image and its text; system and developer messages (and `instructions`) are
    instructions, which BLIP cannot follow, and do not change the caption."""
    if isinstance(given, str):
        raise InvalidImageInput("input: send a user message holding one input_image; a text alone has no image.")
    users = [m for m in given if m.role == "user"]
    if len(users) != 1 or any(m.role == "assistant" for m in given):
        raise InvalidRequest("input: send one user message holding one image (BLIP captions one image; it holds no "
                             "conversation).")
    parts = users[0].content if isinstance(users[0].content, list) else [
        InputText(type="input_text", text=users[0].content)]
    images = [p for p in parts if isinstance(p, InputImage)]
    if len(images) != 1:
        raise InvalidImageInput(f"input: the user message must hold exactly one input_image, not {len(images)}.")
    if images[0].image_url is None:
        raise InvalidImageInput("input: give the image as image_url (a URL or a data: URI); file_id is not "
                                "supported yet.")
    return images[0].image_url, " ".join(p.text for p in parts if isinstance(p, InputText))


def _response(captioned: Captioned, model_id: str, body: ResponseRequest) -> dict[str, Any]:
    return {
        "id": f"resp_{captioned.job_id}",
        "object": "response",
        "created_at": captioned.created,
        "status": "incomplete" if captioned.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if captioned.truncated else None,
        "error": None,
        "model": model_id,
        "output": [{
            "type": "message",
            "id": f"msg_{captioned.job_id}",
            "status": "incomplete" if captioned.truncated else "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": captioned.caption, "annotations": []}],
        }],
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": "none",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "user": body.user,
        "usage": {
            "input_tokens": captioned.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": captioned.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": captioned.prompt_tokens + captioned.completion_tokens,
        },
    }
