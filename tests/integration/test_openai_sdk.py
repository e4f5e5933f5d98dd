"""The official `openai` SDK, unchanged, pointed at the local stack with `base_url` and a key: chat completions
(plain and streamed), responses, files, batches, the models list, and errors raised as the SDK's own exceptions. Every
caption must equal what the native API says for the same image and options."""

from __future__ import annotations

import base64
import http.server
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.shapes import random_scene
from tests.integration.conftest import ROOT, Stack
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


def native_caption(stack: Stack, image: bytes, prompt: str | None = None, **options: Any) -> str:
    job = stack.wait(stack.client.submit([image], prompt, **options).id)
    caption = job.results[0].caption
    assert caption is not None, job
    return caption


def test_a_chat_completion_is_the_native_caption(sdk: openai.OpenAI, stack: Stack, images: list[bytes]) -> None:
    for image in images:
        completion = sdk.chat.completions.create(model=MODEL, messages=user_message(image))
        assert completion.object == "chat.completion" and completion.model == MODEL
        openai.types.chat.ChatCompletion.model_validate(completion.model_dump())  # every field the SDK requires
        (choice,) = completion.choices
        assert choice.message.role == "assistant" and choice.finish_reason == "stop"
        assert choice.message.content == native_caption(stack, image)
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        # The request is a job of the caller's tenant, visible on the native API.
        job_id = completion.id.removeprefix("chatcmpl-")
        assert stack.client.get(job_id).results[0].caption == choice.message.content


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
    assert completion.choices[0].message.content == native_caption(stack, images[1], max_new_tokens=3)


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
    # The SDK builds its objects without validating them; validated, every field it requires is there.
    openai.types.responses.Response.model_validate(response.model_dump())
    assert response.output_text == native_caption(stack, image)
    assert response.usage is not None and response.usage.output_tokens > 0
    short = sdk.responses.create(model=MODEL, input=[{"role": "user", "content": content}], max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.output_text == native_caption(stack, image, max_new_tokens=2)
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


# The Batch API: an input file of requests, run on the bulk lane, answered in output and error files.

BROKEN_IMAGE = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()


def batch_line(custom_id: str, image_url: str, text: str | None = None, **body: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_url}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}}


def upload_batch(sdk: openai.OpenAI, lines: list[dict[str, Any]], tmp_path: Path,
                 endpoint: str = "/v1/chat/completions") -> Any:
    path = tmp_path / f"batch-{random.randrange(10**9)}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with path.open("rb") as handle:
        uploaded = sdk.files.create(file=handle, purpose="batch")
    return sdk.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                              completion_window="24h", metadata={"suite": "sdk"})


def wait_batch(sdk: openai.OpenAI, batch_id: str, timeout_s: float = 240) -> Any:
    deadline = time.monotonic() + timeout_s
    while (batch := sdk.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.2)
    return batch


def file_lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def answered_once(sdk: openai.OpenAI, batch: Any, custom_ids: list[str]) -> tuple[list[Any], list[Any]]:
    """The batch's output and error lines, having checked that each request is in exactly one of them, once."""
    output, errors = file_lines(sdk, batch.output_file_id), file_lines(sdk, batch.error_file_id)
    seen = [line["custom_id"] for line in output + errors]
    assert sorted(seen) == sorted(custom_ids), "a request is missing from the files, or in them twice"
    return output, errors


def test_a_batch_of_200_requests_answers_each_as_the_native_api(
    sdk: openai.OpenAI, stack: Stack, tmp_path: Path
) -> None:
    rng = random.Random(29)
    pictures = [encode(random_scene(rng), (160, 120), "PNG", rng) for _ in range(5)]
    asks: list[tuple[int, str | None, int | None]] = [
        (i % 5, "a picture of" if i % 2 else None, 4 if i % 3 == 0 else None) for i in range(198)]
    lines = [batch_line(f"req-{i}", data_uri(pictures[p]), text, **({"max_tokens": m} if m else {}))
             for i, (p, text, m) in enumerate(asks)]
    lines += [batch_line("broken-1", BROKEN_IMAGE), batch_line("broken-2", BROKEN_IMAGE, "a picture of")]
    created = upload_batch(sdk, lines, tmp_path)
    assert created.status == "validating" and created.endpoint == "/v1/chat/completions"
    batch = wait_batch(sdk, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (200, 198, 2)
    assert batch.metadata == {"suite": "sdk"} and batch.completed_at is not None and batch.in_progress_at is not None
    output, errors = answered_once(sdk, batch, [line["custom_id"] for line in lines])
    native = {ask: native_caption(stack, pictures[ask[0]], ask[1] or None,
                                  **({"max_new_tokens": ask[2]} if ask[2] else {}))
              for ask in set(asks)}
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        expected = native[asks[int(line["custom_id"].removeprefix("req-"))]]
        assert completion.choices[0].message.content == expected, line["custom_id"]
        assert completion.model == MODEL and completion.usage is not None
    assert {e["custom_id"] for e in errors} == {"broken-1", "broken-2"}
    assert all(e["response"]["status_code"] == 400 and e["response"]["body"]["error"]["code"] == "invalid_image"
               for e in errors)
    assert batch.usage is not None and batch.usage.output_tokens == sum(
        o["response"]["body"]["usage"]["completion_tokens"] for o in output)
    assert created.id in [b.id for b in sdk.batches.list()]
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(batch.id)


def test_a_batch_of_responses(sdk: openai.OpenAI, stack: Stack, images: list[bytes], tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": {
        "model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": data_uri(image)}]}],
    }} for i, image in enumerate(images)]
    batch = wait_batch(sdk, upload_batch(sdk, lines, tmp_path, "/v1/responses").id)
    output, _ = answered_once(sdk, batch, [line["custom_id"] for line in lines])
    assert len(output) == len(images)
    for line in output:
        response = openai.types.responses.Response.model_validate(line["response"]["body"])
        assert response.output_text == native_caption(stack, images[int(line["custom_id"][1:])])


def test_the_docs_batch_example_runs_as_written(stack: Stack, images: list[bytes], tmp_path: Path) -> None:
    """docs/openai.md's batch example, as written but for the address, the served model and the poll's pause."""
    docs = (ROOT / "docs" / "openai.md").read_text()
    (example,) = re.findall(r"### Batches\n.*?```python\n(.*?)```", docs, flags=re.DOTALL)
    script = example.replace("localhost:8000", stack.url.removeprefix("http://")).replace(
        "Salesforce/blip-image-captioning-base", MODEL).replace("time.sleep(5)", "time.sleep(0.2)")
    (tmp_path / "cat.jpg").write_bytes(images[1])
    (tmp_path / "dog.jpg").write_bytes(images[0])
    printed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, check=True, env={**os.environ, "CAPTIONER_API_KEY": stack.key.key}).stdout
    assert printed.splitlines() == [f"cat.jpg {native_caption(stack, images[1])}",
                                    f"dog.jpg {native_caption(stack, images[0])}"]


def test_a_batch_with_a_bad_line_fails_validation_naming_it(sdk: openai.OpenAI, images: list[bytes],
                                                            tmp_path: Path) -> None:
    lines = [batch_line("a", data_uri(images[0])), batch_line("b", data_uri(images[0]), temperature=0.7)]
    batch = wait_batch(sdk, upload_batch(sdk, lines, tmp_path).id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    (error,) = batch.errors.data
    assert (error.line, error.param, error.code) == (2, "body.temperature", "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.param == "input_file_id"
    with pytest.raises(openai.BadRequestError) as wrong_endpoint:
        sdk.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")
    assert wrong_endpoint.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_" + "0" * 24)


class SlowImages(http.server.BaseHTTPRequestHandler):
    """Serves one PNG, each after a pause: a batch of its URLs is still running when the test cancels it."""

    image = b""

    def do_GET(self) -> None:
        time.sleep(1.0)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cancelled_batch_keeps_what_it_finished_and_lists_the_rest(
    sdk: openai.OpenAI, images: list[bytes], tmp_path: Path
) -> None:
    SlowImages.image = images[0]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowImages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/photo.png"
        lines = [batch_line(f"slow-{i}", url) for i in range(40)]
        created = upload_batch(sdk, lines, tmp_path)
        deadline = time.monotonic() + 60
        while sdk.batches.retrieve(created.id).status == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelling = sdk.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        batch = wait_batch(sdk, created.id)
    finally:
        server.shutdown()
        thread.join()
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    output, errors = answered_once(sdk, batch, [line["custom_id"] for line in lines])
    assert all(line["response"]["status_code"] == 200 for line in output)
    cancelled = [e for e in errors if e["error"] is not None]
    assert cancelled and all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in cancelled)
    assert sdk.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing
