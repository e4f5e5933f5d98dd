"""The one place that maps errors to HTTP status codes and the JSON error shape."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, Response, jsonify, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

from api.openai_compat.errors import openai_shaped
from common import errors
from common.openai_answers import openai_error
from common.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.CaptionerError], int] = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.InvalidRequest: 400,
    errors.InvalidImageInput: 400,
    errors.TooManyImages: 400,
    errors.JobNotFound: 404,
    errors.ModelNotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.ValidationFailed: 422,
    errors.TooManyInFlight: 429,
    errors.RateLimited: 429,
    errors.ServiceUnavailable: 503,
    errors.CaptionTimedOut: 504,
}

blueprint = Blueprint("errors", __name__)


def error_response(code: str, message: str, status: int, param: str | None = None) -> tuple[Response, int]:
    """The error body: the native shape, or OpenAI's on the OpenAI-compatible endpoints, so that the SDK raises
    its own exception types."""
    if openai_shaped(request.path):
        return jsonify({"error": openai_error(code, message, status, param)}), status
    return jsonify(ErrorResponse(error=ErrorBody(code=code, message=message)).model_dump()), status


def status_for(error: errors.CaptionerError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


@blueprint.app_errorhandler(errors.CaptionerError)
def _captioner_error(error: errors.CaptionerError) -> tuple[Response, int]:
    status = status_for(error)
    if status >= 500:
        log.error("request failed: %s", error.message)
    response, status = error_response(error.code, error.message, status, getattr(error, "param", None))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="captioner"'
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    response.headers.update(error.headers)
    return response, status


@blueprint.app_errorhandler(RedisError)
def _redis_unavailable(error: RedisError) -> tuple[Response, int]:
    """Redis went away (down, loading, full, or silent past CAPTIONER_REDIS_TIMEOUT_SECONDS) under a view or check
    that did not expect it: 503 with Retry-After, as the views that catch it answer, never a 500."""
    # A refused or timed-out connection is an outage; any other error from Redis may be a bug: keep its trace.
    outage = isinstance(error, (RedisConnectionError, RedisTimeoutError))
    log.log(logging.WARNING if outage else logging.ERROR, "Redis failed under %s %s: %s", request.method,
            request.path, error, exc_info=not outage)
    return _captioner_error(errors.ServiceUnavailable("The service's store is unavailable; try again shortly."))


@blueprint.app_errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[Response, int]:
    status = error.code or 500
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, (error.name or "error").lower().replace(" ", "_")
    )
    return error_response(code, error.description or error.name, status)


@blueprint.app_errorhandler(BotoCoreError)
@blueprint.app_errorhandler(ClientError)
def _storage_error(error: BotoCoreError | ClientError) -> tuple[Response, int]:
    """S3 away (refused, timed out, or answering 5xx) under a view that did not expect it: 503 with Retry-After, as
    the views that catch it answer, never a 500. Any other answer from S3 (access denied, say) is a fault of ours."""
    if isinstance(error, ClientError) and error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500) < 500:
        return _unexpected(error)
    log.warning("S3 failed under %s %s: %s", request.method, request.path, error)
    return _captioner_error(errors.ServiceUnavailable("Image storage is unavailable; try again shortly."))


@blueprint.app_errorhandler(Exception)
def _unexpected(error: Exception) -> tuple[Response, int]:
    log.exception("unhandled error")
    return error_response("internal_error", "The server failed to handle this request.", 500)
