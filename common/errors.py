"""The service's small error hierarchy: each error has a stable `code`; HTTP status is in api/errors.py."""

from __future__ import annotations


class CaptionerError(Exception):
    """Base of every error the service reports to a user."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# Request errors: the whole request is refused.


class InvalidRequest(CaptionerError):
    code = "invalid_request"


class ValidationFailed(CaptionerError):
    """The request is well-formed but a value is out of bounds (a generation option, say)."""

    code = "validation_error"


class InvalidImageInput(CaptionerError):
    """An image in the request is not a URL, a data: URI, valid base64 or a file part."""

    code = "invalid_image"


class TooManyImages(CaptionerError):
    code = "too_many_images"


class PayloadTooLarge(CaptionerError):
    code = "payload_too_large"


class UnsupportedMediaType(CaptionerError):
    code = "unsupported_media_type"


class JobNotFound(CaptionerError):
    code = "not_found"


class Conflict(CaptionerError):
    """The request is valid but the resource's state does not allow it now."""

    code = "conflict"


class ServiceUnavailable(CaptionerError):
    code = "service_unavailable"


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
    code = "inference_failed"


# Outbound requests (webhook delivery).


class OutboundRequestError(CaptionerError):
    """An outbound request failed on the network or ran out of time; worth retrying."""

    code = "delivery_failed"


# Worker start-up.


class ModelLoadError(CaptionerError):
    code = "model_load_failed"
