"""The OpenAPI 3.1 document, assembled from a table of routes (api/openapi/routes.py) and the JSON Schema of the
pydantic models the API validates requests and builds answers with.

Why our own module rather than a Flask extension: flask-openapi3 and spectree describe the routes they own (their
own app and blueprint classes, or a decorator that validates the request and answers its own errors), so adopting
one means rewriting every view and the error codes and messages the tests pin; apispec documents marshmallow
schemas, and its pydantic support is a third-party plugin. Pydantic's own JSON Schema is dialect 2020-12, which
OpenAPI 3.1 takes as it is, so the models need no translation: this module only places them under
`components/schemas` and writes the paths around them. A test holds the table equal to the app's url_map, so a new
route cannot be left out (tests/unit/test_openapi.py).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.openai_compat.errors import openai_shaped
from common.openai_objects import OpenAIErrorResponse
from common.schemas import ErrorResponse

JsonSchema = dict[str, Any]
# pydantic's map from (model, mode) to the model's $ref.
Refs = dict[Any, JsonSchema]
_REF_TEMPLATE = "#/components/schemas/{model}"
# Flask's rule arguments, <name> or <converter:name>, which OpenAPI writes {name}.
_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@dataclass(frozen=True)
class Json:
    """An application/json body: a request validated with `model`, or an answer built with it."""

    model: type[BaseModel]
    example: Any = None


@dataclass(frozen=True)
class Form:
    """A multipart/form-data body whose text fields are `model`'s fields: `json_fields` hold JSON text of their
    field's schema, `files` are file parts (name: description), repeatable where `repeated`."""

    model: type[BaseModel]
    files: dict[str, str]
    json_fields: tuple[str, ...] = ()
    repeated: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Raw:
    """A body that is not JSON: a file's bytes, a page, or server-sent events whose `data:` each hold an `events`
    object as JSON, the last `[DONE]`."""

    media_type: str
    description: str
    events: type[BaseModel] | None = None


Body = Json | Form | Raw


@dataclass(frozen=True)
class Answer:
    status: int
    description: str
    bodies: tuple[Body, ...] = ()
    headers: tuple[str, ...] = ()  # names in HEADERS


@dataclass(frozen=True)
class Route:
    """One operation: `rule` as Flask writes it (tests compare it with app.url_map), what it takes and what it
    answers. Errors are listed by status; their body is the native shape, or OpenAI's on the paths that answer in
    it (api/openai_compat/errors.py). The operation's description is its view's docstring."""

    rule: str
    method: Literal["GET", "POST", "DELETE"]
    summary: str
    tag: str
    answers: tuple[Answer, ...]
    errors: tuple[int, ...] = ()
    body: tuple[Body, ...] = ()
    query: type[BaseModel] | None = None  # each field a query parameter
    headers: tuple[str, ...] = ()  # request headers, names in HEADERS


@dataclass(frozen=True)
class Header:
    description: str
    schema: JsonSchema = field(default_factory=lambda: {"type": "string"})


# Headers taken or given by several operations, described once.
HEADERS = {
    "Idempotency-Key": Header("A key of your choosing (a UUID, say): a repeat with the same key and body answers the "
                              "first request's job again instead of making another.",
                              {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}),
    "Location": Header("Where the created record is read."),
    "Idempotent-Replayed": Header("true when this answer repeats an earlier request's (same Idempotency-Key)."),
    "Retry-After": Header("Seconds to wait before trying again.", {"type": "integer"}),
    "WWW-Authenticate": Header("The scheme expected: Bearer."),
}

# What each error status means here, and the headers it comes with.
ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("The request is malformed, or a value in it is refused (the error's code says which).", ()),
    401: ("No API key, or one that is malformed, unknown or revoked, or one sent in the URL.", ("WWW-Authenticate",)),
    403: ("The key is valid but may not do this.", ()),
    404: ("Not found: no such record for this caller (another tenant's answers the same).", ()),
    409: ("The record's state does not allow this now.", ("Retry-After",)),
    413: ("The body, or a file in it, is larger than the service takes.", ()),
    415: ("The body's content type is not one this operation takes.", ()),
    422: ("A value is out of bounds or a field is unknown.", ()),
    429: ("Rate limited, or the key's images in flight are at its cap.", ("Retry-After",)),
    503: ("Redis, S3 or the queue is unavailable for now, or the service's backlog is full.", ("Retry-After",)),
    504: ("The caption took longer than the service waits for a synchronous answer (the job was canceled).", ()),
}
# Statuses any /v1 operation may answer: the key is checked and rate limited before the view runs.
EDGE_ERRORS = (401, 429, 503)

SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "cap_…",
    "description": "An API key: `Authorization: Bearer cap_…` (`captioner keys create`; docs/security.md).",
}


def openapi_path(rule: str) -> str:
    """/v1/jobs/<job_id> -> /v1/jobs/{job_id}"""
    return _ARGUMENT.sub(r"{\1}", rule)


def build_document(app: Flask, routes: list[Route], info: dict[str, Any], tags: list[dict[str, str]],
                   path_parameters: dict[str, str]) -> dict[str, Any]:
    """The whole document. `path_parameters` describes each path argument by name."""
    refs, schemas = _components(routes)
    endpoints = {(rule.rule, method): rule.endpoint
                 for rule in app.url_map.iter_rules() for method in rule.methods or ()}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        endpoint = endpoints[(route.rule, route.method)]
        view = app.view_functions[endpoint]
        operation = _operation(route, refs, schemas, path_parameters)
        operation["operationId"] = endpoint  # unique in the app: blueprint.view
        if view.__doc__:
            operation["description"] = " ".join(view.__doc__.split())
        paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": info,
        "tags": tags,
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": _referenced(schemas, paths),
            "headers": {name: {"description": h.description, "schema": h.schema} for name, h in HEADERS.items()},
            "securitySchemes": {"bearerAuth": SECURITY_SCHEME},
        },
    }


def _components(routes: list[Route]) -> tuple[Refs, JsonSchema]:
    """Every model the routes name, in one pass, so each is defined once under components/schemas; requests in
    pydantic's validation mode, answers in its serialization mode (where they differ, pydantic names them apart)."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorResponse, "serialization"): None, (OpenAIErrorResponse, "serialization"): None}
    for route in routes:
        for body in route.body:
            if isinstance(body, Json | Form):
                wanted[(body.model, "validation")] = None
        if route.query is not None:
            wanted[(route.query, "validation")] = None
        for answer in route.answers:
            for body in answer.bodies:
                model = body.model if isinstance(body, Json) else body.events if isinstance(body, Raw) else None
                if model is not None:
                    wanted[(model, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=_REF_TEMPLATE)
    schemas: JsonSchema = top.get("$defs", {})
    return refs, schemas


def _operation(route: Route, refs: Refs, schemas: JsonSchema,
               path_parameters: dict[str, str]) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True, "description": path_parameters[name],
                   "schema": {"type": "string"}} for name in _ARGUMENT.findall(route.rule)]
    if route.query is not None:
        parameters += _query_parameters(route.query, refs, schemas)
    parameters += [{"name": name, "in": "header", "required": False, "description": HEADERS[name].description,
                    "schema": HEADERS[name].schema} for name in route.headers]
    operation: dict[str, Any] = {"tags": [route.tag], "summary": route.summary}
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        operation["requestBody"] = {"required": True, "content": _content(route.body, refs, schemas, "validation")}
    responses: dict[str, Any] = {}
    for answer in route.answers:
        responses[str(answer.status)] = _response(answer.description, answer.headers,
                                                  _content(answer.bodies, refs, schemas, "serialization"))
    error_model = OpenAIErrorResponse if openai_shaped(route.rule) else ErrorResponse
    statuses = sorted(set(route.errors) | (set(EDGE_ERRORS) if route.rule.startswith("/v1") else set()))
    for status in statuses:
        description, headers = ERRORS[status]
        content = {"application/json": {"schema": refs[(error_model, "serialization")]}}
        responses[str(status)] = _response(description, headers, content)
    operation["responses"] = responses
    if not route.rule.startswith("/v1"):
        operation["security"] = []  # only /v1 asks for a key (api/auth.py)
    return operation


def _response(description: str, headers: tuple[str, ...], content: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    if content:
        response["content"] = content
    return response


def _content(bodies: tuple[Body, ...], refs: Refs,
             schemas: JsonSchema, mode: JsonSchemaMode) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for body in bodies:
        if isinstance(body, Json):
            media: dict[str, Any] = {"schema": refs[(body.model, mode)]}
            if body.example is not None:
                media["example"] = body.example
            content["application/json"] = media
        elif isinstance(body, Form):
            content["multipart/form-data"] = _form(body, refs[(body.model, mode)], schemas)
        elif body.events is not None:
            content[body.media_type] = {"schema": _event(body.description, refs[(body.events, mode)])}
        else:
            schema: JsonSchema = {"type": "string", "description": body.description}
            if body.media_type == "application/octet-stream":
                schema["format"] = "binary"
            content[body.media_type] = {"schema": schema}
    return content


def _event(description: str, data: JsonSchema) -> JsonSchema:
    """One server-sent event, as OpenAPI 3.1 describes an event stream's items (3.2 names it `itemSchema`): its
    fields, `data` holding JSON of `data`'s schema, or the closing `[DONE]`."""
    return {
        "type": "object",
        "description": description,
        "required": ["data"],
        "properties": {
            "data": {"anyOf": [{"const": "[DONE]"},
                               {"type": "string", "contentMediaType": "application/json", "contentSchema": data}]},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


def _form(form: Form, ref: JsonSchema, schemas: JsonSchema) -> dict[str, Any]:
    """The model's fields as form fields (JSON ones as text holding their schema's JSON), and the file parts."""
    model_schema = schemas[ref["$ref"].rsplit("/", 1)[-1]]
    properties: dict[str, Any] = {}
    for name, description in form.files.items():
        part = {"type": "string", "format": "binary"}
        properties[name] = ({"type": "array", "items": part, "minItems": 1} if name in form.repeated else part) | {
            "description": description}
    encoding: dict[str, Any] = {}
    for name, schema in model_schema["properties"].items():
        if name in form.json_fields:
            properties[name] = {"type": "string", "contentMediaType": "application/json",
                                "contentSchema": _without_null(copy.deepcopy(schema))}
            encoding[name] = {"contentType": "application/json"}
        else:
            properties[name] = _without_null(copy.deepcopy(schema))
    required = list(form.required) + [r for r in model_schema.get("required", []) if r not in form.required]
    schema_out: JsonSchema = {"type": "object", "properties": properties, "required": required}
    if model_schema.get("additionalProperties") is False:
        schema_out["additionalProperties"] = False
    media: dict[str, Any] = {"schema": schema_out}
    if encoding:
        media["encoding"] = encoding
    return media


def _query_parameters(model: type[BaseModel], refs: Refs,
                      schemas: JsonSchema) -> list[dict[str, Any]]:
    """Each field of the query model as a parameter; an absent parameter is the field's null, so null is dropped
    from its schema (a query string cannot send one)."""
    model_schema = schemas[refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]]
    required = set(model_schema.get("required", []))
    parameters = []
    for name, field_schema in model_schema["properties"].items():
        schema = _without_null(copy.deepcopy(field_schema))
        schema.pop("title", None)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        parameters.append(parameter)
    return parameters


def _without_null(schema: JsonSchema) -> JsonSchema:
    """`X | None` (anyOf with null) as X: a form field or query parameter is absent rather than null."""
    options = schema.get("anyOf")
    if options is not None:
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) == 1:
            rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
            only: JsonSchema = kept[0]
            return only | rest  # beside a $ref too: OpenAPI 3.1's JSON Schema allows it
        schema["anyOf"] = kept
    if schema.get("default") is None:
        schema.pop("default", None)
    return schema


def _referenced(schemas: JsonSchema, paths: dict[str, Any]) -> JsonSchema:
    """The schemas the paths use, directly or through others: query and form models were only read for their
    fields, and stay out."""
    kept: set[str] = set()
    todo = [paths]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[-1]
                if name not in kept:
                    kept.add(name)
                    todo.append(schemas[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return {name: schema for name, schema in schemas.items() if name in kept}
