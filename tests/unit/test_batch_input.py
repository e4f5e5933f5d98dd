"""A batch's input file validated line by line: good files come down to one request per line, and any bad line
fails the file with errors naming it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.batch_input import MAX_ERRORS, BatchLineError, InputValidator, parse_line
from common.settings import Settings

CHAT = "/v1/chat/completions"
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def chat_line(custom_id: str, **body: Any) -> dict[str, Any]:
    request = {"model": "tiny_blip", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": IMAGE}}]}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request}


def validate(content: bytes, endpoint: str, settings: Settings) -> tuple[int, list[BatchLineError]]:
    """The file's good requests counted, and its errors, as the worker's validation streams it."""
    validator = InputValidator(endpoint, settings)
    for number, raw in enumerate(content.splitlines(), start=1):
        validator.check(raw, number)
        if validator.full:
            break
    return validator.requests, validator.finish()


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def test_a_good_file_is_one_request_per_line(settings: Settings) -> None:
    responses_line = {"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": {
        "model": "tiny_blip", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]}}
    assert validate(jsonl(chat_line("a"), chat_line("b", max_tokens=5), b""), CHAT, settings) == (2, [])
    assert validate(jsonl(responses_line), "/v1/responses", settings) == (1, [])


def test_a_line_is_asked_as_its_synchronous_request_would_be(settings: Settings) -> None:
    line = parse_line(json.dumps(chat_line("b", max_tokens=5, messages=[{"role": "user", "content": [
        {"type": "text", "text": "a photograph of"}, {"type": "image_url", "image_url": {"url": IMAGE}}]}])).encode(),
        7, CHAT, settings)
    assert (line.line, line.custom_id, line.asked.prompt, line.asked.options.max_new_tokens) == (
        7, "b", "a photograph of", 5)
    assert line.asked.prompt_tokens > 0


@pytest.mark.parametrize(("bad", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"method": "POST", "url": CHAT, "body": {}}, "custom_id"),
    ({**chat_line("x"), "method": "GET"}, "method"),
    ({**chat_line("x"), "url": "/v1/responses"}, "url"),
    ({**chat_line("x"), "body": "text"}, "body"),
    (chat_line("x", model="gpt-4o"), "body.model"),
    (chat_line("x", temperature=0.9), "body.temperature"),
    (chat_line("x", max_tokens=1000), "body.max_tokens"),
    (chat_line("x", tools=[{"type": "function"}]), "body.tools"),
    ({**chat_line("x"), "body": {"messages": []}}, "body.model"),
    (chat_line("x", messages=[{"role": "user", "content": "no image"}]), None),
    ({**chat_line("x"), "extra": 1}, None),
    (chat_line("a"), "custom_id"),  # a's second line
    (chat_line("x", caption_prefix="a dog\x00"), None),  # the prompt rules of the native API
    (chat_line("x", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]), None),
])
def test_a_bad_line_fails_the_file_naming_it(bad: Any, param: str | None, settings: Settings) -> None:
    _, errors = validate(jsonl(chat_line("a"), bad), CHAT, settings)
    (error,) = errors
    assert error.line == 2 and error.message.startswith("Line 2:") and error.param == param


def test_an_empty_file_and_many_bad_lines(settings: Settings) -> None:
    assert validate(b"\n\n", CHAT, settings)[1][0].code == "empty_file"
    _, many = validate(jsonl(*[b"{" for _ in range(MAX_ERRORS + 50)]), CHAT, settings)
    assert len(many) == MAX_ERRORS
