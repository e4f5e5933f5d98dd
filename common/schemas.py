"""The wire contract (v1): what the API answers, what a queue message carries, what a job record holds.

Every boundary has one typed model here, so the API, the worker and the tests agree by construction.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import CaptionerError


class JobStatus(StrEnum):
    """Lifecycle of a job: queued -> running -> succeeded | failed | canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        """Terminal states never change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class GenerationOptions(BaseModel):
    """Generation options a user may set, each bounded so one job cannot monopolise a GPU.

    Frozen and hashable: the worker batches images by (prompt, options), since BLIP gives wrong
    captions when different prompts share a batch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(30, ge=1, le=128)
    min_new_tokens: int = Field(0, ge=0, le=128)
    num_beams: int = Field(1, ge=1, le=8)
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self


class ErrorBody(BaseModel):
    """The one error shape, for whole requests and single images alike."""

    # Nothing else is ever sent: the description says so, which tells it from OpenAI's shape (message, code, ...).
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    code: str
    message: str

    @classmethod
    def of(cls, error: CaptionerError) -> ErrorBody:
        return cls(code=error.code, message=error.message)


class ErrorResponse(BaseModel):
    """What a refused request to the native API answers: {"error": {"code", "message"}} (api/errors.py)."""

    error: ErrorBody


def _is_none(value: object) -> bool:
    return value is None


class ImageResult(BaseModel):
    """The outcome for one image: a caption or an error, never both; the other key is absent, not null."""

    # The missing outcome is left out per field (`exclude_if`) rather than by a model serializer, whose JSON Schema
    # would be a bare object; /openapi.json documents both forms of the answer.
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["caption"]}, {"required": ["error"]}]})

    index: int
    caption: str | None = Field(None, exclude_if=_is_none)
    error: ErrorBody | None = Field(None, exclude_if=_is_none)
    # The tokens the model generated for the caption, its end token included (what max_new_tokens bounds).
    new_tokens: int | None = Field(None, exclude_if=_is_none)

    @model_validator(mode="after")
    def _exactly_one_outcome(self) -> Self:
        if (self.caption is None) == (self.error is None):
            raise ValueError("an image result has exactly one of caption and error")
        return self


class ImageRef(BaseModel):
    """Where the worker finds one image: a key in the service's bucket, a URL it fetches itself, or (small
    uploads) the job's record in Redis, under the image's index."""

    index: int = Field(ge=0)
    key: str | None = None
    url: str | None = None
    stored_with_job: bool = False

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if [self.key is not None, self.url is not None, self.stored_with_job].count(True) != 1:
            raise ValueError("an image reference has exactly one of key, url and stored_with_job")
        return self


class CaptionTask(BaseModel):
    """The queue message for one job: ids, keys and URLs, never image bytes."""

    job_id: str
    images: list[ImageRef]
    prompt: str | None = None
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    tenant: str | None = None  # whose job: the worker shares batches out between tenants
    # The X-Request-ID of the request that made the job (api/request_ids.py), for the worker's log lines about it.
    request_id: str | None = None


class WebhookEvent(StrEnum):
    STARTED = "job.started"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"
    BULK_PROGRESS = "bulk.progress"  # throttled and best-effort: sent once, never retried
    BULK_COMPLETED = "bulk.completed"
    BULK_FAILED = "bulk.failed"
    BULK_CANCELED = "bulk.canceled"

    @classmethod
    def for_terminal(cls, status: JobStatus) -> WebhookEvent:
        """The event a job's terminal status emits."""
        return cls(f"job.{status.value}")


TERMINAL_EVENTS = (WebhookEvent.SUCCEEDED, WebhookEvent.FAILED, WebhookEvent.CANCELED)
BULK_TERMINAL_EVENTS = (WebhookEvent.BULK_COMPLETED, WebhookEvent.BULK_FAILED, WebhookEvent.BULK_CANCELED)


class WebhookSubscription(BaseModel):
    """Where a job's events go, and which events (by default, the terminal ones)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    events: list[WebhookEvent] = Field(default_factory=lambda: list(TERMINAL_EVENTS), min_length=1)

    @model_validator(mode="after")
    def _each_event_once(self) -> Self:
        self.events = sorted(set(self.events), key=list(WebhookEvent).index)
        return self


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # the retry budget ran out, or the receiver answered 410 Gone


class WebhookAttempt(BaseModel):
    """One try at delivering an event: the receiver's status code, or what went wrong."""

    at: datetime
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


class WebhookDelivery(BaseModel):
    """One event of one job, with every attempt to deliver it; `id` is its stable webhook-id."""

    id: str
    event: WebhookEvent
    url: str
    state: DeliveryState
    created_at: datetime
    next_attempt_at: datetime | None = None
    attempts: list[WebhookAttempt] = Field(default_factory=list)


class JobRequest(BaseModel):
    """The body of POST /v1/jobs once the images are parsed (JSON or multipart)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    webhook: WebhookSubscription | None = None

    @model_validator(mode="after")
    def _webhook_events_are_job_events(self) -> Self:
        if self.webhook is not None:
            wrong = [e.value for e in self.webhook.events if not e.value.startswith("job.")]
            if wrong:
                raise ValueError(f"a job's webhook takes job.* events, not {', '.join(wrong)}")
        return self


class JobSubmission(JobRequest):
    """The JSON body of POST /v1/jobs: the images, and the job's prompt, options and webhook. A multipart body
    carries the same fields as parts: `images` as files (or strings), `options` and `webhook` as JSON text."""

    images: list[str] = Field(
        min_length=1,
        description="Each image as an http(s) URL, a data: URI or bare base64; at most CAPTIONER_MAX_IMAGES_PER_JOB "
                    "(16 by default) in one job.",
    )

    def job_request(self) -> JobRequest:
        """The job's request without its images (what the job records, and what a repeat is compared by)."""
        return JobRequest.model_construct(prompt=self.prompt, options=self.options, webhook=self.webhook)


class JobTimings(BaseModel):
    """Where a job's time went, in milliseconds: waiting for a worker, reading and decoding its images,
    waiting for their batch, in the model, and recording the results (what is left of the worker's time)."""

    queue_ms: float | None = None
    fetch_decode_ms: float | None = None
    batch_wait_ms: float | None = None
    model_ms: float | None = None
    record_ms: float | None = None


StatusT = TypeVar("StatusT", bound=StrEnum)
# The built-in tenant of the open mode (CAPTIONER_AUTH=off), and of records made before tenants existed.
LOCAL_TENANT = "local"


class Lifecycle(BaseModel, Generic[StatusT]):
    """What jobs and bulk jobs share: identity, status and its times, what they caption with, how they ended,
    whom they tell, and their links. Each adds what it is about."""

    id: str
    status: StatusT
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    prompt: str | None = None
    options: GenerationOptions
    error: ErrorBody | None = None
    webhook: WebhookSubscription | None = None
    urls: dict[str, str] = Field(default_factory=dict)
    # Whose it is: the stores read it by tenant and id together; never shown (a caller sees only its own).
    tenant: str = Field(LOCAL_TENANT, exclude=True)


class Job(Lifecycle[JobStatus]):
    """The job object that GET /v1/jobs/{id} answers."""

    num_images: int
    results: list[ImageResult] = Field(default_factory=list)
    timings: JobTimings | None = None


ItemT = TypeVar("ItemT", bound=BaseModel)


class ListPage(BaseModel, Generic[ItemT]):
    """A page of a list endpoint's records, newest first; `next_cursor` (null on the last page) is the next page's
    ?cursor=."""

    data: list[ItemT]
    has_more: bool
    next_cursor: str | None


class JobList(ListPage[Job]):
    """What GET /v1/jobs answers."""


class DeliveryList(BaseModel):
    """What the webhooks endpoints answer: every kept delivery of a job's (or bulk job's) events."""

    deliveries: list[WebhookDelivery]


def job_links(job_id: str, base_url: str) -> dict[str, str]:
    """The job object's `urls`: absolute under base_url, or relative when it is empty."""
    base = f"{base_url.rstrip('/')}/v1/jobs/{job_id}"
    return {"get": base, "cancel": f"{base}/cancel", "webhooks": f"{base}/webhooks"}
