"""The service's small error hierarchy: each error has a stable `code`; HTTP status is in api/errors.py.

Every error code the service reports comes from a class here. Plain Python only: every process imports it, the
model code and the decoding processes included.
"""

from __future__ import annotations

from dataclasses import dataclass


class CaptionerError(Exception):
    """Base of every error the service reports to a user."""

    code = "internal_error"
    # Seconds a client should wait before trying again (the Retry-After header), where waiting helps.
    retry_after_s: int | None = None

    def __init__(
        self, message: str, *, retry_after_s: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        self.headers = headers or {}  # more for the HTTP answer (a rate limit's state, say)


class InternalError(CaptionerError):
    """Something failed that should not have: the logs say what."""


# Request errors: the whole request is refused.


class InvalidRequest(CaptionerError):
    code = "invalid_request"


class ValidationFailed(CaptionerError):
    """The request is well-formed but a value is out of bounds (a generation option, say)."""

    code = "validation_error"


class IdempotencyKeyReused(ValidationFailed):
    """An Idempotency-Key used before with another request."""

    code = "idempotency_key_reused"


class InvalidImageInput(CaptionerError):
    """An image in the request is not a URL, a data: URI, valid base64 or a file part."""

    code = "invalid_image"


class TooManyImages(CaptionerError):
    code = "too_many_images"


class PayloadTooLarge(CaptionerError):
    code = "payload_too_large"


class UnsupportedMediaType(CaptionerError):
    code = "unsupported_media_type"


class Unauthorized(CaptionerError):
    """No API key, or one that is malformed, unknown or revoked, or one sent in the URL."""

    code = "unauthorized"


class Forbidden(CaptionerError):
    """The key is valid but may not do this (a bulk bucket it was not given, say)."""

    code = "forbidden"


class JobNotFound(CaptionerError):
    """No such job for this caller: another tenant's id answers exactly as an id that never existed."""

    code = "not_found"


class ModelNotFound(CaptionerError):
    """A request for a model this service does not serve (the OpenAI-compatible endpoints' `model`)."""

    code = "model_not_found"


class InvalidParameter(InvalidRequest):
    """One named parameter is missing or wrong (the OpenAI-compatible endpoints, whose errors name it)."""

    code = "invalid_value"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class MissingParameter(InvalidParameter):
    code = "missing_required_parameter"


class UnsupportedParameter(InvalidParameter):
    """A parameter the service cannot honour, named rather than ignored."""

    code = "unsupported_parameter"


class Conflict(CaptionerError):
    """The request is valid but the resource's state does not allow it now."""

    code = "conflict"


class JobNotEnded(Conflict):
    """A job that is queued or running cannot be deleted: cancel it first."""

    code = "job_not_ended"


class IdempotencyKeyInUse(Conflict):
    """A request with the same Idempotency-Key is still running."""

    code = "idempotency_key_in_use"
    retry_after_s = 1


class CaptionTimedOut(CaptionerError):
    """A synchronous request's caption took longer than CAPTIONER_SYNC_TIMEOUT_SECONDS."""

    code = "timeout"


class ServiceUnavailable(CaptionerError):
    code = "service_unavailable"
    retry_after_s = 5


class BacklogFull(ServiceUnavailable):
    """More images are waiting than CAPTIONER_MAX_BACKLOG_IMAGES: new work would wait for hours."""

    code = "backlog_full"
    retry_after_s = 30


class TooManyInFlight(CaptionerError):
    """The key's images queued or running would pass its cap."""

    code = "too_many_in_flight"
    retry_after_s = 2


class RateLimited(CaptionerError):
    """The key made more requests than its rate limit allows."""

    code = "rate_limited"


class QueueUnavailable(ServiceUnavailable):
    """The job was stored but could not be queued; it was failed rather than left queued for ever."""

    code = "queue_unavailable"


class UnsafeUrl(InvalidRequest):
    """A user-supplied URL the service refuses to request (scheme, credentials, port or address)."""

    code = "unsafe_url"


# Per-image errors: the image fails, its job goes on.


class ImageError(CaptionerError):
    """One image could not be captioned; recorded on its own result entry."""

    code = "image_error"


class ImageDecodeError(ImageError):
    code = "invalid_image"


class ImageTooLarge(ImageError):
    code = "image_too_large"


class ImageFetchError(ImageError):
    code = "image_fetch_failed"


class InferenceError(ImageError):
    """The model failed on this image alone (its batch was retried image by image)."""

    code = "inference_failed"


class ImageKilledWorkers(ImageError):
    """Workers died with this image of a bulk chunk or batch in hand CAPTIONER_MAX_ATTEMPTS times (the last times
    captioning it alone): it crashes the decoder or the model, and it is failed rather than tried again. An
    interactive job that does so fails whole, with JobKilledWorkers."""

    code = "image_killed_workers"


@dataclass(frozen=True)
class Unreadable:
    """Which S3 error codes mean an object itself cannot be read (an ImageFetchError for that image, not an S3
    outage), and the message to give; the same whether boto3 or a presigned GET read the object."""

    codes: tuple[str, ...]
    message: str  # may name the code: {code}

    def error(self, code: str) -> ImageFetchError | None:
        """The per-image error S3's error `code` means, or None when it is S3's problem, not the object's."""
        return ImageFetchError(self.message.format(code=code)) if code in self.codes else None


# A user's bucket (bulk): missing, forbidden or archived objects are the user's.
USERS_OBJECT = Unreadable(
    ("NoSuchKey", "404", "AccessDenied", "403", "InvalidObjectState"), "The object could not be read ({code})."
)
# The service's own bucket (uploads): only a missing object is the image's problem; a forbidden one is ours.
UPLOAD = Unreadable(("NoSuchKey", "404"), "The uploaded image is no longer in storage.")


# Whole jobs.


class AllImagesFailed(CaptionerError):
    """Every image of a job, or of a bulk job, failed on its own."""

    code = "all_images_failed"


class JobKilledWorkers(CaptionerError):
    """Workers died holding this job CAPTIONER_MAX_ATTEMPTS times (the last time running it alone): one of its
    images crashes the decoder or the model, and it is failed rather than tried again."""

    code = "job_killed_workers"


class BulkFailed(CaptionerError):
    """A bulk job could not go on (its bucket became unusable, a part of it kept failing)."""

    code = "bulk_failed"


# Outbound requests (webhook delivery).


class OutboundRequestError(CaptionerError):
    """An outbound request failed on the network or ran out of time; worth retrying."""

    code = "delivery_failed"


class NoWebhookSecret(CaptionerError):
    """A delivery whose tenant has no signing secret: none is ever sent unsigned."""

    code = "no_webhook_secret"


# Failures of the worker itself, not of the work it holds: the worker stops taking work and exits for its
# supervisor to restart it, and its jobs go to other workers (worker/health.py).


class WorkerFailure(CaptionerError):
    code = "worker_failed"


class ModelLoadError(WorkerFailure):
    """The model could not be loaded; the message says how to fix it."""

    code = "model_load_failed"


class WorkerStopping(WorkerFailure):
    """This worker was asked to stop (SIGTERM): it is healthy, but the work it holds and has not started on the model
    goes back to the queue at once, for other workers to take (worker/main.py)."""

    code = "worker_stopping"


class DeviceFailure(WorkerFailure):
    """The device failed in a way that every later batch would meet too: a CUDA error, which leaves its context
    unusable, or running out of memory on a batch of one image."""

    code = "device_failed"
