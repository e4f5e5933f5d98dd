"""The official `openai` SDK, unchanged, pointed at the local stack with `base_url` and a key: chat completions
(plain and streamed), responses, files, the models list, and errors raised as the SDK's own exceptions. Every
caption must equal what the native API says for the same image and options."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fixtures.shapes import random_scene
from tests.integration.conftest import Stack
from tests.integration.test_end_to_end import encode

pytestmark = pytest.mark.integration

MODEL = "tiny_blip"  # CAPTIONER_MODEL is tests/fixtures/tiny_blip: the served id is the directory's name


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key.key, max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    rng = random.Random(17)
    return [encode(random_scene(rng), (320, 240), fmt, rng) for fmt in ("PNG", "JPEG", "PNG")]


def data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def user_message(image: bytes, text: str | None = None) -> list[Any]:
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_uri(image)}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def native_caption(stack: Stack, image: bytes, **extra: Any) -> str:
    job = stack.wait(stack.submit(json={"images": [base64.b64encode(image).decode()], **extra})["id"])
    caption: str = job["results"][0]["caption"]
    return caption


def test_a_chat_completion_is_the_native_caption(sdk: openai.OpenAI, stack: Stack, images: list[bytes]) -> None:
    for image in images:
        completion = sdk.chat.completions.create(model=MODEL, messages=user_message(image))
        assert completion.object == "chat.completion" and completion.model == MODEL
        (choice,) = completion.choices
        assert choice.message.role == "assistant" and choice.finish_reason == "stop"
        assert choice.message.content == native_caption(stack, image)
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        # The request is a job of the caller's tenant, visible on the native API.
        job_id = completion.id.removeprefix("chatcmpl-")
        job = stack.http.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
        assert job["results"][0]["caption"] == choice.message.content


def test_a_question_gets_the_unconditional_caption_and_a_captions_start_is_continued(
    sdk: openai.OpenAI, stack: Stack, images: list[bytes]
) -> None:
    image = images[0]
    asked = sdk.chat.completions.create(model=MODEL, messages=user_message(image, "What is in this image?"))
    assert asked.choices[0].message.content == native_caption(stack, image)
    started = sdk.chat.completions.create(model=MODEL, messages=user_message(image, "a picture of"))
    assert started.choices[0].message.content == native_caption(stack, image, prompt="a picture of")
    explicit = sdk.chat.completions.create(model=MODEL, messages=user_message(image, "Describe it."),
                                           extra_body={"caption_prefix": "a picture of"})
    assert explicit.choices[0].message.content == started.choices[0].message.content


def test_max_tokens_bounds_the_caption_and_says_length(sdk: openai.OpenAI, stack: Stack, images: list[bytes]) -> None:
    completion = sdk.chat.completions.create(model=MODEL, messages=user_message(images[1]), max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.choices[0].message.content == native_caption(stack, images[1], options={"max_new_tokens": 3})


def test_a_streamed_completion_reads_as_the_sdk_expects(sdk: openai.OpenAI, images: list[bytes]) -> None:
    whole = sdk.chat.completions.create(model=MODEL, messages=user_message(images[2]))
    stream = sdk.chat.completions.create(model=MODEL, messages=user_message(images[2]), stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_a_response_is_the_native_caption(sdk: openai.OpenAI, stack: Stack, images: list[bytes]) -> None:
    image = images[1]
    content: list[Any] = [{"type": "input_text", "text": "Describe this image."},
                          {"type": "input_image", "image_url": data_uri(image)}]
    response = sdk.responses.create(model=MODEL, input=[{"role": "user", "content": content}],
                                    instructions="You are a helpful assistant.")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == native_caption(stack, image)
    assert response.usage is not None and response.usage.output_tokens > 0
    short = sdk.responses.create(model=MODEL, input=[{"role": "user", "content": content}], max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.output_text == native_caption(stack, image, options={"max_new_tokens": 2})
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input=[{"role": "user", "content": content}], temperature=1.0)
    assert refused.value.param == "temperature"


def test_files_through_the_sdk(sdk: openai.OpenAI, tmp_path: Any) -> None:
    lines = b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    path = tmp_path / "requests.jsonl"
    path.write_bytes(lines)
    with path.open("rb") as handle:
        made = sdk.files.create(file=handle, purpose="batch")
    assert made.filename == "requests.jsonl" and made.bytes == len(lines) and made.purpose == "batch"
    assert sdk.files.retrieve(made.id).id == made.id
    assert sdk.files.content(made.id).read() == lines
    assert made.id in [f.id for f in sdk.files.list()]
    assert sdk.files.delete(made.id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(made.id)


def test_the_models_list(sdk: openai.OpenAI) -> None:
    assert [model.id for model in sdk.models.list()] == [MODEL]
    assert sdk.models.retrieve(MODEL).id == MODEL


def test_errors_are_the_sdks_own_exceptions(sdk: openai.OpenAI, stack: Stack, images: list[bytes]) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(model="gpt-4o", messages=user_message(images[0]))
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=user_message(images[0]), temperature=0.8)
    assert refused.value.param == "temperature"
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="cap_" + "x" * 43, max_retries=0) as stranger, \
            pytest.raises(openai.AuthenticationError) as unauthorized:
        stranger.models.list()
    assert unauthorized.value.code == "invalid_api_key"
