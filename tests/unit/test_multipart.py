"""api/multipart.read_form on bodies as real clients (requests) encode them."""

from __future__ import annotations

import io
from typing import Any

import pytest
import requests
from flask import Request
from werkzeug.test import EnvironBuilder

from api.multipart import read_form
from common.errors import InvalidRequest, PayloadTooLarge


def request_for(**kwargs: Any) -> Request:
    prepared = requests.Request("POST", "http://x/v1/jobs", **kwargs).prepare()
    body = prepared.body
    assert isinstance(body, bytes)
    return Request(EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_length=len(body),
                                  content_type=prepared.headers["Content-Type"]).get_environ())


def test_files_and_fields_come_back_by_name_in_order() -> None:
    files = [("images", ("a.png", b"\x89PNG first", "image/png; x=y")), ("images", ("b.jpg", b"\xff\xd8 second", None)),
             ("images", ("c", b"\r\n--almost a boundary\r\n", "image/jpeg"))]
    form = read_form(request_for(files=files, data={"prompt": "un café", "images": "https://e.com/x.jpg"}), 1024)
    assert [(f.data, f.content_type) for f in form.files["images"]] == [
        (b"\x89PNG first", "image/png"), (b"\xff\xd8 second", "application/octet-stream"),
        (b"\r\n--almost a boundary\r\n", "image/jpeg"),
    ]
    assert form.fields == {"prompt": ["un café"], "images": ["https://e.com/x.jpg"]}


def test_a_file_over_the_cap_is_refused_with_its_index() -> None:
    files = [("images", ("a.png", b"x" * 10, "image/png")), ("images", ("b.png", b"x" * 11, "image/png"))]
    with pytest.raises(PayloadTooLarge, match=r"images\[1\] is larger than 10 bytes"):
        read_form(request_for(files=files), 10)


def test_a_field_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="prompt"):
        read_form(request_for(data={"prompt": "caf\xe9".encode("latin-1")}, files={"images": ("a", b"1")}), 10)
