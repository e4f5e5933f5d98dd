"""The OpenAI-style requests this service takes (chat completions, responses), validated with pydantic, and what
of them BLIP can honour: each one comes down to an `Ask` (one image, the message's text, and the caption's bounds)
or to an error naming the parameter. Plain of Flask: the API validates synchronous requests with it, and batches
(whose lines hold the same bodies) are validated with it too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.caption_prefix import caption_prefix
from common.errors import (
    InvalidImageInput,
    InvalidParameter,
    InvalidRequest,
    MissingParameter,
    UnsupportedParameter,
)
from common.image_strings import IncomingImage, parse_image_string
from common.prompts import check_prompt, model_text
from common.schemas import GenerationOptions
from common.settings import Settings

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Ask:
    """What one request asks of the model: caption this image (an http(s) URL or a data: URI), for this message
    text or this explicit prefix, in at most `max_new` new tokens (None: the default); `max_param` names the
    parameter that set it, for errors."""

    image: str
    text: str
    prefix: str | None
    max_new: int | None
    max_param: str


@dataclass(frozen=True)
class CaptionAsk:
    """An `Ask` checked as the native API checks a job: the image, BLIP's prompt (the explicit prefix, or the
    message's text where it reads as a caption's start), the options, and the prompt's tokens as usage counts them
    (the image's positions in the vision encoder, and the prompt's own)."""

    image: IncomingImage
    prompt: str | None
    options: GenerationOptions
    prompt_tokens: int


def resolve(ask: Ask, settings: Settings) -> CaptionAsk:
    """What the model is asked for `ask`, or the error a synchronous request would answer (a 400 naming what)."""
    prompt = (ask.prefix if ask.prefix is not None else caption_prefix(ask.text)) or None
    try:
        options = GenerationOptions(**({"max_new_tokens": ask.max_new} if ask.max_new else {}))
    except ValidationError as exc:
        raise InvalidParameter(ask.max_param, f"{ask.max_param}: {exc.errors()[0]['msg']}") from exc
    prompt_tokens = check_prompt(prompt, options.max_new_tokens, settings)
    image = parse_image_string(ask.image, "The image", settings)
    return CaptionAsk(image, prompt, options, model_text(settings.model).image_tokens + prompt_tokens)


def parse_request(raw: dict[str, Any], model: type[M]) -> M:
    """A request body as `model`; any parameter it does not name is refused by name (`extra="forbid"`)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        if error["type"] == "extra_forbidden" and param:
            raise UnsupportedParameter(param, f"{param} is not supported by this service.") from exc
        if error["type"] == "missing" and param:
            raise MissingParameter(param, f"{param} is required.") from exc
        raise InvalidParameter(param or "body", f"{param}: {error['msg']}") from exc


def refuse(refusals: list[tuple[str, bool, str]]) -> None:
    """(parameter, refused?, why): the first refused one is a 400 that names it."""
    for param, refused, why in refusals:
        if refused:
            raise UnsupportedParameter(param, f"{param}: {why}.")


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

    def ask(self) -> Ask:
        """What this request asks, or the error of the first thing in it BLIP cannot honour."""
        _refuse_what_blip_cannot_do(self)
        image, text = _chat_image_and_text(self.messages)
        max_param = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
        return Ask(image, text, self.caption_prefix, self.max_completion_tokens or self.max_tokens, max_param)


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


def _chat_image_and_text(messages: list[Message]) -> tuple[str, str]:
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

    def ask(self) -> Ask:
        """What this request asks, or the error of the first thing in it BLIP cannot honour."""
        refuse([
            ("stream", self.stream, "responses are not streamed here; use chat completions with stream=true"),
            ("temperature", bool(self.temperature), "decoding is deterministic: temperature 0 or none"),
            ("top_p", self.top_p not in (None, 1), "decoding is deterministic: top_p 1 or none"),
            ("tools", bool(self.tools), "BLIP calls no tools"),
            ("tool_choice", self.tool_choice not in (None, "none"), "BLIP calls no tools"),
            ("text", self.text not in (None, {"format": {"type": "text"}}), "the answer is plain text"),
            ("reasoning", self.reasoning is not None, "BLIP does not reason"),
            ("previous_response_id", self.previous_response_id is not None, "BLIP holds no conversation"),
            ("include", bool(self.include), "nothing more can be included"),
        ])
        image, text = _response_image_and_text(self.input)
        return Ask(image, text, self.caption_prefix, self.max_output_tokens, "max_output_tokens")


def _response_image_and_text(given: str | list[InputMessage]) -> tuple[str, str]:
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
