"""Turns a POST /v1/jobs request (JSON or multipart) into validated images, prompt and options.

Everything a user can get wrong is caught here and raised as a CaptionerError with a message that names
the offending image; nothing here touches Redis, S3 or the queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from api.multipart import FilePart, read_form
from common.errors import (
    InvalidImageInput,
    InvalidRequest,
    TooManyImages,
    UnsupportedMediaType,
    ValidationFailed,
)
from common.image_strings import IncomingImage, UploadedImage, parse_image_string
from common.prompts import check_prompt
from common.schemas import JobRequest, JobSubmission
from common.settings import Settings


@dataclass(frozen=True)
class ParsedJob:
    images: list[IncomingImage]
    request: JobRequest


def parse_job_request(request: Request, settings: Settings) -> ParsedJob:
    """Parse either accepted form of POST /v1/jobs."""
    if request.mimetype == "application/json":
        return _parse_json(request, settings)
    if request.mimetype == "multipart/form-data":
        return _parse_multipart(request, settings)
    raise UnsupportedMediaType(
        "Send application/json with an 'images' list, or multipart/form-data with 'images' file parts."
    )


def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest: for malformed JSON and, alike, for JSON nested too deeply for
    Python's parser, which raises RecursionError rather than ValueError (a 500 before this)."""
    try:
        body = request.get_json(silent=True)
    except RecursionError as exc:
        raise InvalidRequest("The body is JSON nested too deeply.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The body is not a JSON object.")
    return body


def _parse_json(request: Request, settings: Settings) -> ParsedJob:
    """The body as a JobSubmission (the model /openapi.json describes it with). Its images are judged first, as
    they always were: their form (400), their count, each image; then the other fields (422)."""
    body = json_object(request)
    try:
        submission: JobSubmission | None = JobSubmission.model_validate(body)
        problems: list[ErrorDetails] = []
    except ValidationError as exc:
        submission, problems = None, exc.errors()
    raw_images = body.get("images")
    if not isinstance(raw_images, list) or not all(isinstance(i, str) for i in raw_images):
        raise InvalidRequest("'images' must be a list of strings: URLs, data: URIs or base64.")
    _check_count(len(raw_images), settings)
    images = [parse_image_string(s, f"images[{i}]", settings) for i, s in enumerate(raw_images)]
    if submission is None:
        others = [p for p in problems if p["loc"][:1] != ("images",)]
        raise ValidationFailed(describe(others or problems))
    request_fields = submission.job_request()
    check_prompt(request_fields.prompt, request_fields.options.max_new_tokens, settings)
    return ParsedJob(images, request_fields)


def _parse_multipart(request: Request, settings: Settings) -> ParsedJob:
    form = read_form(request, settings.max_image_bytes)
    files, strings = form.files.get("images", []), form.fields.get("images", [])
    _check_count(len(files) + len(strings), settings)
    images: list[IncomingImage] = [_file_image(f, i) for i, f in enumerate(files)]
    images += [parse_image_string(s, f"images[{len(files) + i}]", settings) for i, s in enumerate(strings)]
    fields: dict[str, Any] = {}
    if "prompt" in form.fields:
        fields["prompt"] = form.fields["prompt"][0]
    for name in ("options", "webhook"):
        if name in form.fields:
            try:
                fields[name] = json.loads(form.fields[name][0])
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"The '{name}' field is not valid JSON: {exc.msg}.") from exc
    unknown = (set(form.fields) | set(form.files)) - {"prompt", "options", "webhook", "images"}
    if unknown:
        raise InvalidRequest(f"Unknown form fields: {', '.join(sorted(unknown))}.")
    return ParsedJob(images, _validate_request(fields, settings))


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise InvalidRequest("Send at least one image.")
    if count > settings.max_images_per_job:
        raise TooManyImages(f"{count} images sent; a job takes at most {settings.max_images_per_job}.")


def _validate_request(fields: dict[str, Any], settings: Settings) -> JobRequest:
    try:
        parsed = JobRequest.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed(describe(exc.errors())) from exc
    check_prompt(parsed.prompt, parsed.options.max_new_tokens, settings)
    return parsed


def describe(problems: list[ErrorDetails]) -> str:
    """One readable line per problem (a ValidationError's errors()): 'options.num_beams: Input should be less than
    or equal to 8'."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in problems)


def _file_image(part: FilePart, index: int) -> UploadedImage:
    if not part.data:  # read_form has refused any file over the size cap already
        raise InvalidImageInput(f"images[{index}] is an empty file.")
    return UploadedImage(part.data, part.content_type)


