"""Property-based tests of the request parsers: whatever a client sends to POST /v1/jobs or POST /v1/bulk (any JSON,
any multipart body, any bytes, any headers), the answer is a success or a 4xx in the one error shape, never a 5xx.

The parsers run inside the real app (Flask's test client, real Redis and S3), so every layer a body passes through
before a job is stored is under test: auth, the body cap, idempotency, intake, bulk's schema and the prompt rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests.conftest import Services, api_client, settings_for

# Fast enough for every run of the suite, and each test still tries a few hundred bodies; the deadline is off
# because the first request of a client pays for its Redis and S3 connections.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as clients send it, and as they should not: control characters, lone surrogates, odd whitespace.
odd_text = st.text(st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["", " ", "\0", "a\0b", "\ud800", "a picture of\udfff", "\u202e", "\n", "😀", "x" * 400, "一张照片"]
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(odd_text, inner, max_size=4), max_leaves=12)
image_strings = st.one_of(
    odd_text,
    st.sampled_from(["iVBORw0KGgo=", "AAAA", "====", "data:image/png;base64,AAAA", "data:text/html,<b>",
                     "data:;base64,", "data:image/png;base64,@@@", "http://", "https://user:pw@x.example/a",
                     "http://[::1]:0/", "https://例え.jp/a.png", "ftp://x/a.png", "file:///etc/passwd",
                     "gopher://x:70/", "http://%00/", "http://a\ud800.example/"]),
    st.builds(lambda s: "http://" + s, odd_text),
    st.builds(lambda s: "data:" + s, odd_text),
)
options = st.dictionaries(st.sampled_from(["max_new_tokens", "min_new_tokens", "num_beams", "repetition_penalty",
                                           "temperature", ""]), json_values, max_size=4)
webhooks = st.one_of(json_values, st.fixed_dictionaries(
    {"url": st.one_of(image_strings, json_values)}, optional={"events": json_values}))
job_bodies = st.one_of(json_values, st.fixed_dictionaries(
    {"images": st.one_of(st.lists(image_strings, max_size=3), json_values)},
    optional={"prompt": st.one_of(odd_text, json_values), "options": st.one_of(options, json_values),
              "webhook": webhooks, "extra": json_values}))
bulk_bodies = st.one_of(json_values, st.fixed_dictionaries(
    {"source": st.one_of(json_values, st.fixed_dictionaries(
        {"bucket": st.one_of(odd_text, st.just("b" * 64), st.just("ab")),
         }, optional={"prefix": odd_text, "include": json_values, "max_objects": json_values}))},
    optional={"output": json_values, "prompt": odd_text, "options": st.one_of(options, json_values),
              "dry_run": json_values, "webhook": webhooks, "incremental": json_values}))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
content_types = st.one_of(header_text, st.sampled_from([
    "application/json", "application/json; charset=utf-16", "application/JSON", "text/plain",
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded", "application/json;;;", "image/png"]))


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[FlaskClient]:
    # A webhook secret, so that bodies with a webhook get as far as its URL's checks.
    yield api_client(settings_for(services, webhook_secret="whsec_" + "A" * 32, allow_private_networks=False,
                                  outbound_allowed_ports="80,443"))


def assert_clean(response: TestResponse) -> None:
    """Not a server error, and every refusal in the one error shape."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400 and response.request.method != "HEAD":  # HEAD answers carry no body
        error = response.get_json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


def dumps(body: Any) -> bytes:
    # Python's json writes lone surrogates as \\ud800 escapes and NaN as a bare word, as hostile clients may.
    return json.dumps(body).encode()


@FUZZ
@given(body=job_bodies, query=st.sampled_from(["", "?wait=0", "?wait=abc", "?wait=-1", "?wait=nan", "?wait=1e999"]))
def test_any_json_job_is_answered_cleanly(client: FlaskClient, body: Any, query: str) -> None:
    assert_clean(client.post("/v1/jobs" + query, data=dumps(body), content_type="application/json"))


@FUZZ
@given(body=bulk_bodies)
def test_any_json_bulk_job_is_answered_cleanly(client: FlaskClient, body: Any) -> None:
    assert_clean(client.post("/v1/bulk", data=dumps(body), content_type="application/json"))


@FUZZ
@given(data=st.binary(max_size=300) | st.sampled_from([b"[" * 100_000, b"{\"a\":" * 50_000, b"\xff\xfe{}",
                                                       b"{\"images\": [\"\\ud800\"]}", b"NaN", b"{}" * 3]),
       content_type=content_types, path=st.sampled_from(["/v1/jobs", "/v1/bulk"]))
def test_any_bytes_with_any_content_type_are_answered_cleanly(
    client: FlaskClient, data: bytes, content_type: str, path: str
) -> None:
    assert_clean(client.post(path, data=data, headers={"Content-Type": content_type}))


part_names = st.sampled_from(["images", "prompt", "options", "webhook", "other", "", "images[]"]) | odd_text
parts = st.lists(st.tuples(part_names, st.none() | header_text, st.none() | header_text, st.binary(max_size=64)),
                 max_size=5)


def multipart(boundary: str, items: list[tuple[str, str | None, str | None, bytes]], closed: bool) -> bytes:
    """A multipart body built by hand, so its parts may lack what werkzeug's builder would always write."""
    out = b""
    for name, filename, part_type, payload in items:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode("utf-8", "surrogatepass")
        if part_type is not None:
            out += f"Content-Type: {part_type}\r\n".encode("latin-1")
        out += b"\r\n" + payload + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if closed else b"")


@FUZZ
@given(items=parts, closed=st.booleans(), boundary=st.sampled_from(["b0undary", "x", "-" * 70]))
def test_any_multipart_body_is_answered_cleanly(
    client: FlaskClient, items: list[tuple[str, str | None, str | None, bytes]], closed: bool, boundary: str
) -> None:
    body = multipart(boundary, items, closed)
    assert_clean(client.post("/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}"))


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(["Authorization", "Idempotency-Key", "Content-Type", "Content-Length",
                                                "Transfer-Encoding", "X-Forwarded-For", "Accept"]),
                               header_text, max_size=4),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       path=st.sampled_from(["/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/cancel", "/v1/jobs/{id}/webhooks",
                             "/v1/jobs/{id}/webhooks/redeliver", "/v1/bulk", "/v1/bulk/{id}",
                             "/v1/bulk/{id}/cancel", "/v1/bulk/{id}/webhooks", "/v1", "/v1/", "/readyz"]),
       job_id=st.sampled_from(["0" * 32, "..", "%00", "a" * 5000]) | odd_text,
       query=st.sampled_from(["", "?wait=2e9", "?limit=0", "?limit=99999999999999999999", "?cursor=%ff",
                              "?key=cap_x", "?wait=0.01"]))
def test_any_headers_method_and_path_are_answered_cleanly(
    client: FlaskClient, headers: dict[str, str], method: str, path: str, *, job_id: str, query: str
) -> None:
    if "Content-Length" in headers and not headers["Content-Length"].isdigit():
        del headers["Content-Length"]  # werkzeug's test client cannot send one that is not a number
    url = path.replace("{id}", quote(job_id.encode("utf-8", "surrogatepass"), safe="")) + query
    assert_clean(client.open(url, method=method, headers=headers, data=b"{}"))
