"""One image captioned for an OpenAI-style request: checked, made a native job of the caller's tenant (api/jobs.py:
the same admission, limits, queue, batching and usage), and waited for up to CAPTIONER_SYNC_TIMEOUT_SECONDS.
Chat completions and responses differ only in the shapes around it."""

from __future__ import annotations

from typing import TypeVar

from flask import Request
from pydantic import BaseModel

from api.auth import caller
from api.intake import ParsedJob, json_object
from api.jobs import submit_job
from api.services import services
from common.errors import CaptionTimedOut, InvalidImageInput, ModelNotFound, UnsupportedMediaType
from common.openai_answers import Captioned
from common.openai_requests import Ask, parse_request, resolve
from common.schemas import JobRequest, JobStatus

M = TypeVar("M", bound=BaseModel)


def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body as `model` (common/openai_requests.py)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the request as application/json.")
    return parse_request(json_object(request), model)


def check_model(model: str) -> str:
    """The served model's id, if `model` names it; else ModelNotFound."""
    served = services().settings.served_model_id
    if model != served:
        raise ModelNotFound(f"The model {model!r} does not exist here; this service serves {served!r}.")
    return served


def caption(ask: Ask) -> Captioned:
    """Caption the asked image for its message's text, or its explicit prefix."""
    svc = services()
    asked = resolve(ask, svc.settings)
    parsed = ParsedJob([asked.image], JobRequest(prompt=asked.prompt, options=asked.options))
    # Not a long poll: there is no answer without the job's end, even while the process stops.
    job = submit_job(svc, caller(), parsed, svc.settings.sync_timeout_seconds, long_poll=False)
    if not job.status.is_terminal():
        svc.jobs.finish(job.id, JobStatus.CANCELED)
        raise CaptionTimedOut(f"The caption took longer than {svc.settings.sync_timeout_seconds:g} s; the job was "
                              "canceled. Try again.")
    result = job.results[0] if job.results else None
    if result is None or result.caption is None:
        error = result.error if result is not None else job.error
        reason = error.message if error is not None else f"the job ended {job.status.value}"
        raise InvalidImageInput(f"The image could not be captioned: {reason}")
    new_tokens = result.new_tokens or 0
    return Captioned(
        job_id=job.id, created=int(job.created_at.timestamp()), caption=result.caption,
        prompt_tokens=asked.prompt_tokens, completion_tokens=new_tokens,
        truncated=new_tokens >= asked.options.max_new_tokens,
    )
