"""Every route of the API, as /openapi.json describes it: what each takes and answers, by the pydantic models the
views validate and answer with (api/openapi/document.py turns this into the document). A route added to the app
and not here fails tests/unit/test_openapi.py."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, Field

from api.health import Health, Readiness
from api.jobs import MAX_WAIT_SECONDS
from api.openai_compat.files import FileDeleted, FileList, FileUpload
from api.openapi.document import Answer, Form, Json, Raw, Route
from common.batches import BatchCreate, BatchList, BatchObject
from common.bulk_schemas import BulkJob, BulkJobList, BulkRequest
from common.files import FileObject
from common.listing import MAX_PAGE
from common.openai_objects import ChatCompletion, ChatCompletionChunk, ModelList, ModelObject, ResponseObject
from common.openai_requests import ChatCompletionRequest, ResponseRequest
from common.schemas import DeliveryList, Job, JobList, JobRequest, JobSubmission
from common.settings import Settings
from common.usage import MAX_DAYS, UsageReport

# A 32x32 PNG (a red circle on blue) for the examples, so that "Try it out" and the conformance test's example
# phase caption a real image.
EXAMPLE_PNG = ("iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAg0lEQVR42mOUsznBQEvAxEBjMGrBwFvAQqS6fY/CMAWd5FYR"
               "1MhIMJliNZp4a5goNJ2gGiYKTSeokoly0/GrZ6KK6Xh0DUQ+IM/5uPSOFhWjFtDEAmLKSOILvgEKIvI8gVUXE3mlPPHqmciuSYhUy"
               "URJbUWMGkYiW3Y0rJNHc/KQtwAAP+grx4gUSQUAAAAASUVORK5CYII=")
EXAMPLE_DATA_URI = f"data:image/png;base64,{EXAMPLE_PNG}"


class WaitQuery(BaseModel):
    wait: float = Field(0, ge=0, le=MAX_WAIT_SECONDS,
                        description="Answer when the job has ended or this many seconds have passed, whichever is "
                                    "first (long polling).")


class PageQuery(BaseModel):
    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Records on a page, newest first.")
    cursor: str | None = Field(None, description="The `next_cursor` of the page before.")


class FilesQuery(BaseModel):
    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Files on a page, newest first.")
    after: str | None = Field(None, description="The `last_id` of the page before.")


class BatchesQuery(BaseModel):
    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Batches on a page, newest first.")
    after: str | None = Field(None, description="The `last_id` of the page before.")


class UsageQuery(BaseModel):
    start: date | None = Field(None, description=f"First UTC day, YYYY-MM-DD (default: 30 days ending at `end`; a "
                                                 f"range spans at most {MAX_DAYS} days).")
    end: date | None = Field(None, description="Last UTC day, YYYY-MM-DD, included (default: today).")


PATH_PARAMETERS = {
    "job_id": "A job's id (32 hex digits).",
    "bulk_id": "A bulk job's id (32 hex digits).",
    "file_id": "A file's id (file-…).",
    "batch_id": "A batch's id (batch_…).",
    "model_id": "A model's id; a hub id holds a slash (Salesforce/blip-image-captioning-base).",
}

TAGS = [
    {"name": "jobs", "description": "Caption images: submit a job, read it (long polling), list, cancel, delete."},
    {"name": "webhooks", "description": "The deliveries of a job's events, and sending the final one again."},
    {"name": "bulk", "description": "Caption every image under an S3 bucket or prefix (docs/bulk.md)."},
    {"name": "usage", "description": "The caller's usage by UTC day."},
    {"name": "openai", "description": "OpenAI-compatible endpoints, for the official SDK with `base_url` changed "
                                      "(docs/openai.md). Errors in OpenAI's shape."},
    {"name": "health", "description": "Liveness and readiness; no key needed."},
    {"name": "docs", "description": "This description, its interactive page and the page for people; no key "
                                    "needed."},
]

_CREATED = ("Location", "Idempotent-Replayed")


def routes(settings: Settings) -> list[Route]:
    """The table; the examples name the served model, so that they succeed as they are."""
    job_example: dict[str, Any] = {"images": [EXAMPLE_DATA_URI], "prompt": "a picture of",
                                   "options": {"max_new_tokens": 20}}
    user_message = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": EXAMPLE_DATA_URI}}]}]
    chat_example: dict[str, Any] = {"model": settings.served_model_id, "messages": user_message, "max_tokens": 20}
    response_example: dict[str, Any] = {"model": settings.served_model_id, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": EXAMPLE_DATA_URI}]}]}
    return [
        *_job_routes(job_example),
        *_bulk_routes(),
        Route("/v1/usage", "GET", "The caller's usage by day", "usage",
              (Answer(200, "The report", (Json(UsageReport),)),), errors=(400, 422), query=UsageQuery),
        *_openai_routes(chat_example, response_example),
        *_batch_routes(),
        Route("/healthz", "GET", "Liveness", "health", (Answer(200, "The process answers", (Json(Health),)),)),
        Route("/readyz", "GET", "Readiness", "health", (
            Answer(200, "Redis and S3 answer", (Json(Readiness),)),
            Answer(503, "A check failed (the check says why)", (Json(Readiness),)))),
        Route("/openapi.json", "GET", "This description", "docs",
              (Answer(200, "OpenAPI 3.1", (Raw("application/json", "The OpenAPI document."),)),)),
        Route("/docs", "GET", "Interactive docs (Swagger UI)", "docs",
              (Answer(200, "The page", (Raw("text/html", "Swagger UI on /openapi.json."),)),)),
        Route("/", "GET", "The page to try the service in a browser", "docs",
              (Answer(200, "The page", (Raw("text/html", "Caption images with a key; recent jobs and bulk runs "
                                                           "(docs/page.md)."),)),)),
    ]


def _job_routes(job_example: dict[str, Any]) -> list[Route]:
    job = (Json(Job),)
    return [
        Route("/v1/jobs", "POST", "Submit a job", "jobs", (
            Answer(200, "The job, ended within ?wait", job, _CREATED),
            Answer(202, "The job, queued or running", job, _CREATED)),
            errors=(400, 409, 413, 415, 422), query=WaitQuery, headers=("Idempotency-Key",),
            body=(Json(JobSubmission, job_example),
                  Form(JobRequest, files={"images": "An image file; repeat the part for more (a string part is read as "
                                                    "in JSON: a URL, data: URI or base64)."},
                       json_fields=("options", "webhook"), repeated=("images",), required=("images",)))),
        Route("/v1/jobs", "GET", "List jobs", "jobs", (Answer(200, "A page of jobs", (Json(JobList),)),),
              errors=(400,), query=PageQuery),
        Route("/v1/jobs/<job_id>", "GET", "Read a job", "jobs", (Answer(200, "The job", job),),
              errors=(400, 404), query=WaitQuery),
        Route("/v1/jobs/<job_id>/cancel", "POST", "Cancel a job", "jobs", (Answer(200, "The job", job),),
              errors=(404,)),
        Route("/v1/jobs/<job_id>", "DELETE", "Delete an ended job", "jobs", (Answer(204, "Deleted"),),
              errors=(404, 409)),
        Route("/v1/jobs/<job_id>/webhooks", "GET", "List a job's webhook deliveries", "webhooks",
              (Answer(200, "The deliveries", (Json(DeliveryList),)),), errors=(404,)),
        Route("/v1/jobs/<job_id>/webhooks/redeliver", "POST", "Send a job's final event again", "webhooks",
              (Answer(202, "The deliveries, the event queued again", (Json(DeliveryList),)),), errors=(404, 409)),
    ]


def _bulk_routes() -> list[Route]:
    bulk = (Json(BulkJob),)
    return [
        Route("/v1/bulk", "POST", "Start a bulk job", "bulk", (Answer(202, "The bulk job", bulk, _CREATED),),
              errors=(400, 403, 409, 413, 415, 422), headers=("Idempotency-Key",), body=(Json(BulkRequest),)),
        Route("/v1/bulk", "GET", "List bulk jobs", "bulk", (Answer(200, "A page of bulk jobs", (Json(BulkJobList),)),),
              errors=(400,), query=PageQuery),
        Route("/v1/bulk/<bulk_id>", "GET", "Read a bulk job", "bulk", (Answer(200, "The bulk job", bulk),),
              errors=(404,)),
        Route("/v1/bulk/<bulk_id>/webhooks", "GET", "List a bulk job's webhook deliveries", "webhooks",
              (Answer(200, "The deliveries", (Json(DeliveryList),)),), errors=(404,)),
        Route("/v1/bulk/<bulk_id>/cancel", "POST", "Cancel a bulk job", "bulk", (Answer(200, "The bulk job", bulk),),
              errors=(404,)),
    ]


def _openai_routes(chat_example: dict[str, Any], response_example: dict[str, Any]) -> list[Route]:
    refused = (400, 404, 413, 415, 422, 504)  # 404: a model not served
    file = (Json(FileObject),)
    return [
        Route("/v1/chat/completions", "POST", "Caption an image as a chat completion", "openai", (
            Answer(200, "The completion; with stream=true, server-sent chunks", (
                Json(ChatCompletion),
                Raw("text/event-stream", "Server-sent events: each `data:` line a chat.completion.chunk, then "
                                         "`data: [DONE]`.", events=ChatCompletionChunk))),),
              errors=refused, body=(Json(ChatCompletionRequest, chat_example),)),
        Route("/v1/responses", "POST", "Caption an image as a response", "openai",
              (Answer(200, "The response", (Json(ResponseObject),)),), errors=refused,
              body=(Json(ResponseRequest, response_example),)),
        Route("/v1/models", "GET", "List models", "openai", (Answer(200, "The served model", (Json(ModelList),)),)),
        Route("/v1/models/<path:model_id>", "GET", "Read a model", "openai",
              (Answer(200, "The model", (Json(ModelObject),)),), errors=(404,)),
        Route("/v1/files", "POST", "Upload a batch input file", "openai", (Answer(200, "The file", file),),
              errors=(400, 413, 415), body=(Form(FileUpload, files={"file": "The JSONL file."}, required=("file",)),)),
        Route("/v1/files", "GET", "List files", "openai", (Answer(200, "A page of files", (Json(FileList),)),),
              errors=(400,), query=FilesQuery),
        Route("/v1/files/<file_id>", "GET", "Read a file's record", "openai", (Answer(200, "The file", file),),
              errors=(404,)),
        Route("/v1/files/<file_id>/content", "GET", "Download a file", "openai",
              (Answer(200, "The file's bytes", (Raw("application/octet-stream", "The content as uploaded."),)),),
              errors=(404,)),
        Route("/v1/files/<file_id>", "DELETE", "Delete a file", "openai",
              (Answer(200, "Deleted", (Json(FileDeleted),)),), errors=(404,)),
    ]


def _batch_routes() -> list[Route]:
    batch = (Json(BatchObject),)
    return [
        Route("/v1/batches", "POST", "Create a batch", "openai", (Answer(200, "The batch", batch),),
              errors=(400, 404, 413, 415, 422), body=(Json(BatchCreate),)),  # no example: it needs a real file's id
        Route("/v1/batches", "GET", "List batches", "openai", (Answer(200, "A page of batches", (Json(BatchList),)),),
              errors=(400,), query=BatchesQuery),
        Route("/v1/batches/<batch_id>", "GET", "Read a batch", "openai", (Answer(200, "The batch", batch),),
              errors=(404,)),
        Route("/v1/batches/<batch_id>/cancel", "POST", "Cancel a batch", "openai", (Answer(200, "The batch", batch),),
              errors=(404, 409)),
    ]
