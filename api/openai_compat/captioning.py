"""One image captioned for an OpenAI-style request: checked, made a native job of the caller's tenant (api/jobs.py:
the same admission, limits, queue, batching and usage), and waited for up to CAPTIONER_SYNC_TIMEOUT_SECONDS.
Chat completions and responses differ only in the shapes around it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

from api.auth import caller
from api.intake import ParsedJob, json_object, parse_image_string
from api.jobs import submit_job
from api.openai_compat.prefix import caption_prefix
from api.prompts import check_prompt, model_text
from api.services import services
from common.errors import (
    CaptionTimedOut,
    InvalidImageInput,
    InvalidParameter,
    MissingParameter,
    ModelNotFound,
    UnsupportedMediaType,
    UnsupportedParameter,
)
from common.schemas import GenerationOptions, JobRequest, JobStatus

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Captioned:
    job_id: str
    created: int  # Unix seconds
    caption: str
    prompt_tokens: int  # the image's positions in the vision encoder, and the prompt's tokens
    completion_tokens: int
    truncated: bool  # the caption used all of its new tokens


def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`; any parameter it does not name is refused by name (`extra="forbid"`)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the request as application/json.")
    try:
        return model.model_validate(json_object(request))
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        if error["type"] == "extra_forbidden" and param:
            raise UnsupportedParameter(param, f"{param} is not supported by this service.") from exc
        if error["type"] == "missing" and param:
            raise MissingParameter(param, f"{param} is required.") from exc
        raise InvalidParameter(param or "body", f"{param}: {error['msg']}") from exc


def check_model(model: str) -> str:
    """The served model's id, if `model` names it; else ModelNotFound."""
    served = services().settings.served_model_id
    if model != served:
        raise ModelNotFound(f"The model {model!r} does not exist here; this service serves {served!r}.")
    return served


def refuse(refusals: list[tuple[str, bool, str]]) -> None:
    """(parameter, refused?, why): the first refused one is a 400 that names it."""
    for param, refused, why in refusals:
        if refused:
            raise UnsupportedParameter(param, f"{param}: {why}.")


def caption(image_url: str, text: str, prefix: str | None, max_new: int | None, max_param: str) -> Captioned:
    """Caption one image (an http(s) URL or a data: URI) for the message `text`, or the explicit `prefix`."""
    svc = services()
    prompt = (prefix if prefix is not None else caption_prefix(text)) or None
    try:
        options = GenerationOptions(**({"max_new_tokens": max_new} if max_new else {}))
    except ValidationError as exc:
        raise InvalidParameter(max_param, f"{max_param}: {exc.errors()[0]['msg']}") from exc
    check_prompt(prompt, options.max_new_tokens, svc.settings)
    parsed = ParsedJob([parse_image_string(image_url, 0, svc.settings)], JobRequest(prompt=prompt, options=options))
    job = submit_job(svc, caller(), parsed, svc.settings.sync_timeout_seconds)
    if not job.status.is_terminal():
        svc.jobs.finish(job.id, JobStatus.CANCELED)
        raise CaptionTimedOut(f"The caption took longer than {svc.settings.sync_timeout_seconds:g} s; the job was "
                              "canceled. Try again.")
    result = job.results[0] if job.results else None
    if result is None or result.caption is None:
        error = result.error if result is not None else job.error
        reason = error.message if error is not None else f"the job ended {job.status.value}"
        raise InvalidImageInput(f"The image could not be captioned: {reason}")
    text_of_model = model_text(svc.settings.model)
    new_tokens = result.new_tokens or 0
    return Captioned(
        job_id=job.id, created=int(job.created_at.timestamp()), caption=result.caption,
        prompt_tokens=text_of_model.image_tokens + ((text_of_model.count(prompt) or 0) if prompt else 0),
        completion_tokens=new_tokens, truncated=new_tokens >= options.max_new_tokens,
    )


def usage_of(captioned: Captioned) -> dict[str, Any]:
    return {"prompt_tokens": captioned.prompt_tokens, "completion_tokens": captioned.completion_tokens,
            "total_tokens": captioned.prompt_tokens + captioned.completion_tokens}
