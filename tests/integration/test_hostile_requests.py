"""Bad requests and hostile files against the real service, a table of them: each answered with its expected status
and error code, never a 5xx, and a hostile file failing alone with its own per-image error; after all of them, a
normal job still gets the right caption.

Two tables on one stack: REFUSALS (requests refused at the edge, with their status and code) and the hostile files
of tests/fixtures/hostile_files.py (accepted, then each image's own result). To add a row, add a `Refusal`; an
endpoint that takes a job or bulk id goes in THEIR_IDS, which makes its "another tenant's id" row.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from captioner.client import Client
from common.tenants import TenantStore
from tests.conftest import GENEROUS
from tests.fixtures.hostile_files import CORPUS
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import Stack
from tests.integration.test_end_to_end import caption_alone

pytestmark = pytest.mark.integration


def png() -> bytes:
    buffer = io.BytesIO()
    render(Scene("circle", "red", "blue"), (64, 64), random.Random(0)).save(buffer, format="PNG")
    return buffer.getvalue()


B64 = base64.b64encode(png()).decode()


@dataclass
class World:
    """What the rows send requests as: the stack's key, another tenant's ids, a revoked key, a used idempotency key."""

    stack: Stack
    their_job: str
    their_bulk: str
    revoked_key: str
    used_idempotency_key: str
    bare: requests.Session = field(default_factory=requests.Session)  # sends no key

    def url(self, path: str) -> str:
        return self.stack.url + path

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.stack.http.post(self.url(path), **{"timeout": 60, **kwargs})

    def job(self, body: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        """POST /v1/jobs with `body` as JSON (any JSON, not only objects)."""
        return self.post("/v1/jobs", data=json.dumps(body), headers={"Content-Type": "application/json",
                                                                     **(headers or {})}, **kwargs)

    def raw(self, data: bytes | str, content_type: str | None, path: str = "/v1/jobs") -> requests.Response:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        return self.post(path, data=data, headers=headers)

    def claiming_length(self, length: int) -> requests.Response:
        """A submission whose Content-Length claims `length` bytes (requests would correct the header)."""
        connection = http.client.HTTPConnection(self.stack.url.removeprefix("http://"), timeout=30)
        try:
            connection.request("POST", "/v1/jobs", body=b"{}", headers={
                "Authorization": f"Bearer {self.stack.key.key}", "Content-Type": "application/json",
                "Content-Length": str(length)})
            answer = connection.getresponse()
            response = requests.Response()
            response.status_code, response._content = answer.status, answer.read()
            return response
        finally:
            connection.close()

    def as_key(self, key: str | None, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return self.bare.request(method, self.url(path), headers=headers, timeout=30, **kwargs)


@dataclass(frozen=True)
class Refusal:
    name: str
    send: Callable[[World], requests.Response]
    status: int
    code: str


def bulk(body: Any) -> Callable[[World], requests.Response]:
    return lambda w: w.post("/v1/bulk", json=body)


def job(body: Any, **kwargs: Any) -> Callable[[World], requests.Response]:
    return lambda w: w.job(body, **kwargs)


def nested(depth: int) -> str:
    return '{"images": ' + "[" * depth + "]" * depth + "}"


REFUSALS = [
    # The body itself.
    Refusal("malformed json", lambda w: w.raw("{'images': [", "application/json"), 400, "invalid_request"),
    Refusal("deeply nested json", lambda w: w.raw(nested(100_000), "application/json"), 400, "invalid_request"),
    Refusal("json that is not an object", job([B64]), 400, "invalid_request"),
    Refusal("text/plain", lambda w: w.raw(json.dumps({"images": [B64]}), "text/plain"), 415,
            "unsupported_media_type"),
    Refusal("a form, urlencoded", lambda w: w.raw("images=abc", "application/x-www-form-urlencoded"), 415,
            "unsupported_media_type"),
    Refusal("no content type", lambda w: w.raw(b"{}", None), 415, "unsupported_media_type"),
    Refusal("image/png as the body", lambda w: w.raw(png(), "image/png"), 415, "unsupported_media_type"),
    Refusal("multipart without a boundary", lambda w: w.raw(b"--x--", "multipart/form-data"), 400,
            "invalid_request"),
    Refusal("multipart cut short", lambda w: w.raw(b'--x\r\nContent-Disposition: form-data; name="images"\r\n\r\nab',
                                                   "multipart/form-data; boundary=x"), 400, "invalid_request"),
    Refusal("multipart with an unknown field", lambda w: w.post("/v1/jobs", files={"images": ("a.png", png())},
                                                                data={"colour": "red"}), 400, "invalid_request"),
    Refusal("multipart options that are not json", lambda w: w.post("/v1/jobs", files={"images": ("a.png", png())},
                                                                    data={"options": "{num_beams: 2"}),
            400, "invalid_request"),
    Refusal("a body over its cap", lambda w: w.claiming_length(10**12), 413, "payload_too_large"),
    # Images.
    Refusal("no images", job({"images": []}), 400, "invalid_request"),
    Refusal("images not a list", job({"images": B64}), 400, "invalid_request"),
    Refusal("an image that is a number", job({"images": [7]}), 400, "invalid_request"),
    Refusal("too many images", job({"images": [B64] * 17}), 400, "too_many_images"),
    Refusal("bad base64", job({"images": ["not base64 at all!"]}), 400, "invalid_image"),
    Refusal("base64 of nothing", job({"images": ["===="]}), 400, "invalid_image"),
    Refusal("a data: uri of text/html", job({"images": ["data:text/html;base64,PHNjcmlwdD4="]}), 400,
            "invalid_image"),
    Refusal("a data: uri without base64", job({"images": ["data:image/png,rawbytes"]}), 400, "invalid_image"),
    Refusal("a file: url", job({"images": ["file:///etc/passwd"]}), 400, "unsafe_url"),
    Refusal("an ftp: url", job({"images": ["ftp://example.com/a.png"]}), 400, "unsafe_url"),
    Refusal("a gopher: url", job({"images": ["gopher://127.0.0.1:6379/_FLUSHALL"]}), 400, "unsafe_url"),
    Refusal("a url with credentials", job({"images": ["https://user:pw@example.com/a.png"]}), 400, "invalid_image"),
    Refusal("a url without a host", job({"images": ["https:///a.png"]}), 400, "invalid_image"),
    Refusal("a url of 3000 characters", job({"images": ["https://example.com/" + "a" * 3000]}), 400,
            "invalid_image"),
    # Options and prompts.
    Refusal("num_beams out of range", job({"images": [B64], "options": {"num_beams": 9}}), 422, "validation_error"),
    Refusal("max_new_tokens of 0", job({"images": [B64], "options": {"max_new_tokens": 0}}), 422, "validation_error"),
    Refusal("max_new_tokens as text", job({"images": [B64], "options": {"max_new_tokens": "ten"}}), 422,
            "validation_error"),
    Refusal("repetition_penalty as a list", job({"images": [B64], "options": {"repetition_penalty": [2]}}), 422,
            "validation_error"),
    Refusal("an unknown option", job({"images": [B64], "options": {"temperature": 0.7}}), 422, "validation_error"),
    Refusal("options that are not an object", job({"images": [B64], "options": 5}), 422, "validation_error"),
    Refusal("min_new_tokens above max", job({"images": [B64], "options": {"min_new_tokens": 9, "max_new_tokens": 3}}),
            422, "validation_error"),
    Refusal("an unknown field", job({"images": [B64], "colour": "red"}), 422, "validation_error"),
    Refusal("a prompt with nul", job({"images": [B64], "prompt": "a picture\u0000 of"}), 422, "validation_error"),
    Refusal("a prompt with an escape sequence", job({"images": [B64], "prompt": "a \u001b[31mred"}), 422,
            "validation_error"),
    Refusal("a prompt with a newline", job({"images": [B64], "prompt": "a picture\nof"}), 422, "validation_error"),
    Refusal("a blank prompt", job({"images": [B64], "prompt": "  "}), 422, "validation_error"),
    Refusal("a prompt of 301 characters", job({"images": [B64], "prompt": "a" * 301}), 422, "validation_error"),
    # The tiny model has 64 text positions: 40 tokens of prompt leave no room for the default 30 new ones.
    Refusal("a prompt too long in tokens", job({"images": [B64], "prompt": "a " * 40}), 422, "validation_error"),
    Refusal("a prompt that is a number", job({"images": [B64], "prompt": 7}), 422, "validation_error"),
    Refusal("a webhook to a gopher: url", job({"images": [B64], "webhook": {"url": "gopher://x.example/"}}), 400,
            "unsafe_url"),
    Refusal("a wait that is not a number", job({"images": [B64]}, params={"wait": "soon"}), 400, "invalid_request"),
    Refusal("a wait too long", job({"images": [B64]}, params={"wait": 31}), 400, "invalid_request"),
    # Bulk requests.
    Refusal("bulk: malformed json", lambda w: w.raw("{", "application/json", "/v1/bulk"), 400, "invalid_request"),
    Refusal("bulk: deeply nested json", lambda w: w.raw(nested(100_000), "application/json", "/v1/bulk"), 400,
            "invalid_request"),
    Refusal("bulk: text/plain", lambda w: w.raw("{}", "text/plain", "/v1/bulk"), 415, "unsupported_media_type"),
    Refusal("bulk: a bad bucket name", bulk({"source": {"bucket": "Not_A_Bucket"}}), 422, "validation_error"),
    Refusal("bulk: a prompt with nul", bulk({"source": {"bucket": "photos"}, "prompt": "a\0b"}), 422,
            "validation_error"),
    # Keys.
    Refusal("no key", lambda w: w.as_key(None, "GET", "/v1/jobs"), 401, "unauthorized"),
    Refusal("an unknown key", lambda w: w.as_key("cap_" + "A" * 43, "GET", "/v1/jobs"), 401, "unauthorized"),
    Refusal("a revoked key", lambda w: w.as_key(w.revoked_key, "GET", "/v1/jobs"), 401, "unauthorized"),
    Refusal("a revoked key submitting", lambda w: w.as_key(w.revoked_key, "POST", "/v1/jobs", json={"images": [B64]}),
            401, "unauthorized"),
    Refusal("a key in the query string", lambda w: w.bare.get(w.url("/v1/jobs"), params={
        "api_key": w.stack.key.key}, timeout=30), 401, "unauthorized"),
    Refusal("a key in the query string beside a good header", lambda w: w.stack.http.get(
        w.url("/v1/jobs"), params={"key": w.stack.key.key}, timeout=30), 401, "unauthorized"),
    Refusal("basic auth", lambda w: w.bare.get(w.url("/v1/jobs"), auth=("user", "pw"), timeout=30), 401,
            "unauthorized"),
    # Idempotency.
    Refusal("a reused idempotency key with a new body", lambda w: w.job(
        {"images": [B64], "prompt": "a photo of"}, headers={"Idempotency-Key": w.used_idempotency_key}), 422,
        "idempotency_key_reused"),
    Refusal("an idempotency key of control characters", job({"images": [B64]}, headers={"Idempotency-Key": "a\tb"}),
            400, "invalid_request"),
    # Usage.
    Refusal("usage: a start that is not a date", lambda w: w.stack.http.get(w.url("/v1/usage"), params={
        "start": "yesterday"}, timeout=30), 400, "invalid_request"),
    Refusal("usage: an end before its start", lambda w: w.stack.http.get(w.url("/v1/usage"), params={
        "start": "2026-12-02", "end": "2026-12-01"}, timeout=30), 422, "validation_error"),
    Refusal("usage: no key", lambda w: w.as_key(None, "GET", "/v1/usage"), 401, "unauthorized"),
    # Routes.
    Refusal("an unknown path", lambda w: w.stack.http.get(w.url("/v1/nothing-here"), timeout=30), 404, "not_found"),
    Refusal("a method a route does not take", lambda w: w.stack.http.put(w.url("/v1/jobs"), timeout=30), 405,
            "method_not_allowed"),
    Refusal("a job id that is no id", lambda w: w.stack.http.get(w.url("/v1/jobs/..%2f..%2fetc"), timeout=30), 404,
            "not_found"),
]

# Every endpoint that takes a job's or a bulk job's id: another tenant's id must answer 404 not_found on each.
THEIR_IDS: list[tuple[str, str]] = [
    ("GET", "/v1/jobs/{job}"),
    ("GET", "/v1/jobs/{job}?wait=1"),
    ("POST", "/v1/jobs/{job}/cancel"),
    ("GET", "/v1/jobs/{job}/webhooks"),
    ("POST", "/v1/jobs/{job}/webhooks/redeliver"),
    ("DELETE", "/v1/jobs/{job}"),
    ("GET", "/v1/bulk/{bulk}"),
    ("POST", "/v1/bulk/{bulk}/cancel"),
    ("GET", "/v1/bulk/{bulk}/webhooks"),
]


def their_id(method: str, template: str) -> Callable[[World], requests.Response]:
    return lambda w: w.stack.http.request(method, w.url(template.format(job=w.their_job, bulk=w.their_bulk)),
                                          timeout=30)


REFUSALS += [Refusal(f"another tenant's id: {method} {template}", their_id(method, template), 404, "not_found")
             for method, template in THEIR_IDS]


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    tenants = TenantStore.from_url(stack.settings.redis_url)
    other = tenants.create_key(f"other-{uuid.uuid4().hex[:8]}", limits=GENEROUS)
    with Client(stack.url, other.key) as theirs:
        their_job = theirs.submit([png()]).id
        their_bulk = theirs.bulk(stack.settings.s3_bucket, dry_run=True).id
    revoked = tenants.create_key(f"revoked-{uuid.uuid4().hex[:8]}", limits=GENEROUS)
    tenants.revoke(revoked.record.key_id)
    used = uuid.uuid4().hex
    stack.client.submit([png()], idempotency_key=used)
    yield World(stack, their_job, their_bulk, revoked.key, used)


@pytest.mark.parametrize("row", REFUSALS, ids=[row.name for row in REFUSALS])
def test_each_bad_request_gets_its_status_and_code(world: World, row: Refusal) -> None:
    response = row.send(world)
    assert (response.status_code, response.json()["error"]["code"]) == (row.status, row.code), response.text


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_hostile_file_fails_alone_with_its_own_error(world: World, name: str) -> None:
    """Uploaded beside a good image: the good one is captioned as it would be alone, the hostile one gets its own
    per-image error (or, if it is an odd but valid image, its caption)."""
    file = CORPUS[name]
    good = png()
    files = [("images", ("good.png", good, "image/png")), ("images", ("hostile.bin", file.data, "image/png"))]
    response = world.post("/v1/jobs", params={"wait": 30}, files=files)
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "succeeded", done
    good_result, hostile = done["results"]
    assert good_result["caption"] == caption_alone(good, None, {})
    if file.outcome == "rgb":
        assert hostile.get("caption") == caption_alone(file.data, None, {}), hostile
    else:
        assert hostile["error"]["code"] == file.outcome and "caption" not in hostile, hostile


def test_after_all_of_them_a_normal_job_gets_the_right_caption(world: World) -> None:
    scene = Scene("triangle", "yellow", "black")
    buffer = io.BytesIO()
    render(scene, (320, 240), random.Random(3)).save(buffer, format="JPEG")
    assert world.stack.client.caption(buffer.getvalue()) == scene.caption
    assert world.stack.worker.alive() and world.stack.api.alive()
    log = world.stack.api.log_path.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
