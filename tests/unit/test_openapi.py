"""/openapi.json and /docs through the real API on real Redis and S3 (no worker): every route described, the
document well formed, answers built by the code valid against it. tests/integration/test_openapi_conformance.py
drives the whole stack from it."""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
from typing import Any

import jsonschema_rs
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.openapi.document import openapi_path
from api.openapi.routes import routes
from common.openai_answers import Captioned, chat_completion, completion_chunks, openai_error, response_object
from common.openai_requests import ResponseRequest
from common.settings import Settings
from tests.conftest import api_client, key_for_tests

# Routes that are not API operations: Flask's static folder, Swagger UI's files and the page's, and the scrapers'
# /metrics (api/metrics.py).
NOT_OPERATIONS = {"static", "openapi.asset", "page.static", "metrics.scrape"}
CAPTIONED = Captioned(job_id="0" * 32, created=1_700_000_000, caption="a red circle", prompt_tokens=12,
                      completion_tokens=5, truncated=False)


@pytest.fixture
def app(settings: Settings) -> Flask:
    key_for_tests(settings)  # keys are on: the app refuses to start without one
    return create_app(settings)


@pytest.fixture
def document(app: Flask) -> dict[str, Any]:
    anonymous = app.test_client()  # no key: the description is public
    response = anonymous.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    found: dict[str, Any] = response.get_json()
    return found


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of `schema`, whose $refs point into the document's components."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "components": document["components"]}
    return jsonschema_rs.validator_for(root, validate_formats=True)


def response_schema(document: dict[str, Any], path: str, method: str, status: int,
                    media_type: str = "application/json") -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path][method]["responses"][str(status)]["content"][media_type]["schema"]
    return schema


def test_every_route_of_the_app_is_described_and_nothing_else(app: Flask, settings: Settings) -> None:
    served = {(rule.rule, method) for rule in app.url_map.iter_rules() if rule.endpoint not in NOT_OPERATIONS
              for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    described = [(route.rule, route.method) for route in routes(settings)]
    assert len(described) == len(set(described)), "a route is described twice"
    assert served - set(described) == set(), "routes of the app missing from api/openapi/routes.py"
    assert set(described) - served == set(), "routes described that the app does not serve"
    assert any(rule.startswith("/v1/") for rule, _ in served)


def test_the_document_is_openapi_3_1_of_this_version(document: dict[str, Any], app: Flask) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == importlib.metadata.version("captioner")
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    operations = [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]
    assert len({op["operationId"] for _, _, op in operations}) == len(operations)
    for path, _, op in operations:
        # Only /v1 asks for a key (api/auth.py), and every /v1 operation says what a refused key gets.
        assert (op.get("security") == []) == (not path.startswith("/v1"))
        if path.startswith("/v1"):
            assert {"401", "429"} <= set(op["responses"])
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path":
                assert "{" + parameter["name"] + "}" in path
    assert openapi_path("/v1/models/<path:model_id>") == "/v1/models/{model_id}"


def test_every_schema_is_valid_json_schema_and_every_ref_resolves(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    for name in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert name in document["components"]["schemas"], name
    for name in set(re.findall(r'"#/components/headers/([^"]+)"', text)):
        assert name in document["components"]["headers"], name
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
        validator(document, schema)  # compiles: its $refs resolve


def test_errors_are_described_in_each_paths_own_shape(document: dict[str, Any], client: FlaskClient) -> None:
    native = validator(document, response_schema(document, "/v1/jobs/{job_id}", "get", 404))
    openai = validator(document, response_schema(document, "/v1/models/{model_id}", "get", 404))
    job_missing = client.get("/v1/jobs/" + "0" * 32).get_json()
    model_missing = client.get("/v1/models/gpt-4o").get_json()
    assert native.is_valid(job_missing) and not openai.is_valid(job_missing)
    assert openai.is_valid(model_missing) and not native.is_valid(model_missing)
    assert openai.is_valid({"error": openai_error("rate_limited", "slow down", 429, None)})


def test_the_json_job_body_is_the_model_the_intake_validates_with(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSubmission"}
    submission = document["components"]["schemas"]["JobSubmission"]
    assert submission["additionalProperties"] is False and "images" in submission["required"]
    assert validator(document, body["application/json"]["schema"]).is_valid(body["application/json"]["example"])
    form = body["multipart/form-data"]["schema"]
    assert form["properties"]["images"]["items"]["format"] == "binary"
    assert form["properties"]["options"]["contentSchema"] == {"$ref": "#/components/schemas/GenerationOptions"}


def test_openai_answers_match_their_description(document: dict[str, Any]) -> None:
    chat = response_schema(document, "/v1/chat/completions", "post", 200)
    assert validator(document, chat).is_valid(chat_completion(CAPTIONED, "tiny_blip"))
    stream = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    chunk = validator(document, stream["schema"]["properties"]["data"]["anyOf"][1]["contentSchema"])
    for include_usage in (False, True):
        events = list(completion_chunks(chat_completion(CAPTIONED, "tiny_blip"), include_usage))
        assert events[-1] == "data: [DONE]\n\n"
        chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
        assert all(chunk.is_valid(c) for c in chunks), chunks
        assert all(("usage" in c) == include_usage for c in chunks)
    answer = response_object(CAPTIONED, "tiny_blip", ResponseRequest(model="tiny_blip", input="x"))
    assert validator(document, response_schema(document, "/v1/responses", "post", 200)).is_valid(answer)
    # And the description can tell a wrong answer: a completion without its choices is refused.
    assert not validator(document, chat).is_valid({**chat_completion(CAPTIONED, "tiny_blip"), "choices": None})


def test_the_docs_page_and_its_files_are_served_by_the_api(app: Flask) -> None:
    anonymous = app.test_client()
    page = anonymous.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html and "SwaggerUIBundle" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page loads nothing from elsewhere"
    for asset in re.findall(r"""(?:src|href)="(/docs/[^"]+)\"""", html):
        found = anonymous.get(asset)
        assert found.status_code == 200 and len(found.data) > 100, asset
        found.close()
    bundle = anonymous.get("/docs/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.data
    bundle.close()
    assert anonymous.get("/docs/swagger-editor-bundle.js").status_code == 404  # only the page's own files


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return api_client(settings)


def test_a_batch_and_its_list_match_their_description(document: dict[str, Any], settings: Settings) -> None:
    client = api_client(settings)
    uploaded = client.post("/v1/files", data={"file": (io.BytesIO(b'{"custom_id": "a"}\n'), "in.jsonl"),
                                              "purpose": "batch"}, content_type="multipart/form-data").get_json()
    created = client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/responses",
                                               "completion_window": "24h"})
    assert validator(document, response_schema(document, "/v1/batches", "post", 200)).is_valid(created.get_json())
    cancelled = client.post(f"/v1/batches/{created.get_json()['id']}/cancel").get_json()
    assert validator(document, response_schema(document, "/v1/batches/{batch_id}/cancel", "post", 200)).is_valid(
        cancelled)
    listed = client.get("/v1/batches?limit=1").get_json()
    assert listed["data"] and validator(document, response_schema(document, "/v1/batches", "get", 200)).is_valid(
        listed)
