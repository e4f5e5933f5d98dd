"""The objects the OpenAI-compatible endpoints answer, as pydantic models: the answers are built through them
(common/openai_answers.py, api/openai_compat/), and /openapi.json documents them from their JSON Schema, so the
two cannot drift. Field for field what OpenAI's API reference gives, for the parts this service fills in."""

from __future__ import annotations

from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from common.listing import Page

ItemT = TypeVar("ItemT", bound=BaseModel)


class OpenAIObject(BaseModel):
    """A field the model does not name is an error, not silently dropped: a field added where an answer is built
    must be added here, where /openapi.json reads it."""

    model_config = ConfigDict(extra="forbid")


class OpenAIErrorBody(OpenAIObject):
    message: str
    type: str = Field(description="invalid_request_error, requests (429) or server_error (5xx), as OpenAI types "
                                  "its statuses.")
    param: str | None = Field(description="The request parameter at fault, where one is.")
    code: str | None


class OpenAIErrorResponse(OpenAIObject):
    """What a refused request to an OpenAI-compatible endpoint answers, so that the SDK raises its own exceptions."""

    error: OpenAIErrorBody


class CompletionUsage(OpenAIObject):
    """Prompt tokens are the image's positions in the vision encoder plus the prompt's tokens (docs/openai.md)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(OpenAIObject):
    role: Literal["assistant"]
    content: str
    refusal: str | None


class ChatCompletionChoice(OpenAIObject):
    index: int
    message: ChatCompletionMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(OpenAIObject):
    """The `chat.completion` object: the caption as the assistant message's content."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    system_fingerprint: str | None


class ChunkDelta(OpenAIObject):
    """What a chunk adds to the message; the first names the role, the next the content, the last nothing."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(OpenAIObject):
    index: int
    delta: ChunkDelta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(OpenAIObject):
    """One server-sent event of a streamed completion (each `data:` line but the last, `[DONE]`). With
    stream_options.include_usage every chunk has `usage` (null), and a last one holds it with no choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class OutputText(OpenAIObject):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class OutputMessage(OpenAIObject):
    type: Literal["message"]
    id: str
    status: Literal["completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputText]


class IncompleteDetails(OpenAIObject):
    reason: Literal["max_output_tokens"]


class InputTokensDetails(OpenAIObject):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(OpenAIObject):
    reasoning_tokens: int


class ResponseUsage(OpenAIObject):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class TextFormat(OpenAIObject):
    type: Literal["text"]


class TextConfig(OpenAIObject):
    format: TextFormat


class ResponseObject(OpenAIObject):
    """The `response` object of the Responses API: the caption as the output message's `output_text`."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete"]
    incomplete_details: IncompleteDetails | None
    error: None
    model: str
    output: list[OutputMessage]
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    previous_response_id: None
    temperature: float | None
    top_p: float | None
    tool_choice: Literal["none"]
    tools: list[Any]
    text: TextConfig
    user: str | None
    usage: ResponseUsage


class ModelObject(OpenAIObject):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(OpenAIObject):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class OpenAIList(OpenAIObject, Generic[ItemT]):
    """A page of a list in OpenAI's shape: ?after= the page's `last_id` gives the next page."""

    object: Literal["list"] = "list"
    data: list[ItemT]
    has_more: bool
    first_id: str | None
    last_id: str | None

    @classmethod
    def of(cls, found: Page[ItemT], ids: list[str]) -> Self:
        """The list answering a store's page; `ids`: its records' ids, in order."""
        return cls(data=found.data, has_more=found.next_cursor is not None, first_id=ids[0] if ids else None,
                   last_id=ids[-1] if ids else None)
