"""The wire contract of bulk captioning (v1): the request, the bulk job object, and one result line.

A bulk job captions every image under an S3 bucket/prefix. Results are JSON Lines objects in S3; the job
object in Redis holds the status and the counts.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.schemas import (
    BULK_TERMINAL_EVENTS,
    ErrorBody,
    GenerationOptions,
    Lifecycle,
    ListPage,
    WebhookSubscription,
)

# The default include patterns: the image formats the worker decodes. Matching ignores case.
IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.bmp", "*.tif", "*.tiff")

# Where results go when the request names no output: the same bucket, under this prefix plus the source's.
DEFAULT_RESULTS_PREFIX = "captioner-results/"

# S3's bucket naming rules (3-63 characters of lowercase letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_PREFIX_CHARS = 1024


class BulkStatus(StrEnum):
    """queued -> running -> succeeded | partial (some images failed) | failed | canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self not in (BulkStatus.QUEUED, BulkStatus.RUNNING)


def _check_bucket(value: str) -> str:
    if not _BUCKET.match(value):
        raise ValueError(f"{value!r} is not a valid S3 bucket name")
    return value


class BulkSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str
    prefix: str = Field("", max_length=MAX_PREFIX_CHARS)
    include: tuple[str, ...] = Field(IMAGE_PATTERNS, min_length=1, max_length=32)
    max_objects: int | None = Field(None, ge=1)

    _bucket = field_validator("bucket")(_check_bucket)

    @field_validator("include")
    @classmethod
    def _patterns_are_short(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not pattern or len(pattern) > 256 for pattern in value):
            raise ValueError("include patterns must be 1-256 characters")
        return value


class BulkOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str
    prefix: str = Field("", max_length=MAX_PREFIX_CHARS)

    _bucket = field_validator("bucket")(_check_bucket)

    @field_validator("prefix")
    @classmethod
    def _ends_with_a_slash(cls, value: str) -> str:
        """Result files go *under* the prefix, as in a folder."""
        return value if not value or value.endswith("/") else value + "/"


class BulkRequest(BaseModel):
    """The body of POST /v1/bulk."""

    model_config = ConfigDict(extra="forbid")

    source: BulkSource
    output: BulkOutput | None = None
    prompt: str | None = None
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    webhook: WebhookSubscription | None = None
    incremental: bool = True
    dry_run: bool = False

    @model_validator(mode="before")
    @classmethod
    def _bulk_events_by_default(cls, data: Any) -> Any:
        """A webhook that names no events gets the bulk job's terminal ones (not a job's)."""
        if isinstance(data, dict) and isinstance(data.get("webhook"), dict) and "events" not in data["webhook"]:
            data = {**data, "webhook": {**data["webhook"], "events": [e.value for e in BULK_TERMINAL_EVENTS]}}
        return data

    @model_validator(mode="after")
    def _webhook_events_are_bulk_events(self) -> Self:
        if self.webhook is not None:
            wrong = [e.value for e in self.webhook.events if not e.value.startswith("bulk.")]
            if wrong:
                raise ValueError(f"a bulk job's webhook takes bulk.* events, not {', '.join(wrong)}")
        return self

    def resolved_output(self) -> BulkOutput:
        """The output asked for, or the default: the source's bucket, under captioner-results/{prefix}."""
        if self.output is not None:
            return self.output
        return BulkOutput(bucket=self.source.bucket, prefix=DEFAULT_RESULTS_PREFIX + self.source.prefix)


class BulkProgress(BaseModel):
    """Counts of images: discovered by the listing, then captioned, failed or skipped (already captioned)."""

    discovered: int = 0
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    in_flight: int = 0
    listing_complete: bool = False
    images_per_second: float | None = None
    estimated_seconds_left: float | None = None


class DryRunReport(BaseModel):
    """What a dry run found: every listed object, what the patterns keep, what a run would do."""

    objects: int = 0
    bytes: int = 0
    matched: int = 0
    matched_bytes: int = 0
    would_skip: int = 0
    to_caption: int = 0
    estimated_seconds: float | None = None


class BulkJob(Lifecycle[BulkStatus]):
    """The bulk job object that GET /v1/bulk/{id} answers."""

    source: BulkSource
    output: BulkOutput
    incremental: bool
    dry_run: bool
    progress: BulkProgress
    dry_run_report: DryRunReport | None = None
    manifest_key: str | None = None


class BulkJobList(ListPage[BulkJob]):
    """What GET /v1/bulk answers."""


class ResultLine(BaseModel):
    """One line of a results file: an image's caption and everything it was made with."""

    key: str
    etag: str
    caption: str
    model: str
    prompt: str | None
    options: GenerationOptions

    def made_like(self, etag: str, model: str, prompt: str | None, options: GenerationOptions) -> bool:
        """True when this result still holds for the object as it is now, under these caption settings."""
        return (self.etag, self.model, self.prompt, self.options) == (etag, model, prompt, options)


class ErrorLine(BaseModel):
    """One line of an errors file."""

    key: str
    etag: str
    error: ErrorBody


class ObjectRef(BaseModel):
    """One listed source object, as a chunk carries it; `prior` is a result that may be reused."""

    key: str
    etag: str
    size: int
    prior: ResultLine | None = None


class ChunkFiles(BaseModel):
    """What one finished chunk left in S3, for the manifest and for the next incremental run."""

    index: int
    first_key: str
    last_key: str
    results_key: str | None
    errors_key: str | None
    captioned: int
    failed: int
    skipped: int


def bulk_links(bulk_id: str, base_url: str) -> dict[str, str]:
    base = f"{base_url.rstrip('/')}/v1/bulk/{bulk_id}"
    return {"get": base, "cancel": f"{base}/cancel"}


class ManifestCounts(BaseModel):
    objects: int = 0
    captioned: int = 0
    failed: int = 0
    skipped: int = 0


class BulkManifest(BaseModel):
    """manifest.json: what a run did and where its files are. `complete` runs cover the whole listing.

    The latest complete run's manifest is also written at {output}manifest.json: the next incremental run
    reuses the results it lists (by key ranges of its chunks) for objects whose ETag and settings still match.
    """

    bulk_id: str
    status: BulkStatus
    complete: bool
    source: BulkSource
    output: BulkOutput
    model: str
    prompt: str | None
    options: GenerationOptions
    created_at: datetime
    completed_at: datetime
    counts: ManifestCounts
    result_files: list[str]
    error_files: list[str]
    chunks: list[ChunkFiles]
    manifest_key: str
