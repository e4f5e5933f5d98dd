"""A batch's input file validated line by line: good files come down to one request per line, and any bad line
fails the file with errors naming it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.batch_input import MAX_ERRORS, validate_input

CHAT = "/v1/chat/completions"
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def chat_line(custom_id: str, **body: Any) -> dict[str, Any]:
    request = {"model": "tiny_blip", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": IMAGE}}]}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request}


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def test_a_good_file_is_one_ask_per_line() -> None:
    responses_line = {"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": {
        "model": "tiny_blip", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]}}
    checked = validate_input(jsonl(chat_line("a"), chat_line("b", max_tokens=5), b""), CHAT, "tiny_blip")
    assert checked.errors == []
    assert [(line.line, line.custom_id, line.ask.max_new) for line in checked.lines] == [(1, "a", None), (2, "b", 5)]
    assert checked.lines[0].ask.image == IMAGE
    assert validate_input(jsonl(responses_line), "/v1/responses", "tiny_blip").errors == []


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
])
def test_a_bad_line_fails_the_file_naming_it(bad: Any, param: str | None) -> None:
    checked = validate_input(jsonl(chat_line("a"), bad), CHAT, "tiny_blip")
    assert checked.lines == []
    (error,) = checked.errors
    assert error.line == 2 and error.message.startswith("Line 2:") and error.param == param


def test_an_empty_file_and_many_bad_lines() -> None:
    assert validate_input(b"\n\n", CHAT, "tiny_blip").errors[0].code == "empty_file"
    many = validate_input(jsonl(*[b"{" for _ in range(MAX_ERRORS + 50)]), CHAT, "tiny_blip")
    assert len(many.errors) == MAX_ERRORS
