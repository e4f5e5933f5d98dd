"""An image given as a string, as jobs and OpenAI-style requests give one: an http(s) URL for the worker to fetch,
a base64 data: URI, or bare base64. Checked here, with an error naming the image; nothing is fetched."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.errors import InvalidImageInput, PayloadTooLarge, UnsafeUrl
from common.settings import Settings

MAX_URL_CHARS = 2048
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)
_WHITESPACE = re.compile(r"\s+")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


@dataclass(frozen=True)
class UploadedImage:
    """Image bytes the API stores in S3 before queueing."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class RemoteImage:
    """An image URL the worker fetches itself."""

    url: str


IncomingImage = UploadedImage | RemoteImage



def parse_image_string(value: str, name: str, settings: Settings) -> IncomingImage:
    """A string image: an http(s) URL, a base64 data: URI, or bare base64; errors call it `name` ("images[2]")."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        return RemoteImage(_check_url(value, name))
    if value.startswith("data:"):
        match = _DATA_URI.match(value)
        if not match or not match.group("b64"):
            raise InvalidImageInput(f"{name} is a data: URI without ';base64,' encoded data.")
        mime = (match.group("mime") or "application/octet-stream").lower()
        if not mime.startswith("image/") and mime != "application/octet-stream":
            raise InvalidImageInput(f"{name} is a data: URI of {mime}, not of an image.")
        return UploadedImage(_decode_base64(value[match.end() :], name, settings), mime)
    if scheme := _SCHEME.match(value):  # base64 has no ':', so this is a URL
        if scheme.group(1).lower() in ("http", "https"):
            return RemoteImage(_check_url(value, name))
        raise UnsafeUrl(f"{name} is a {scheme.group(1).lower()}: URL; only http and https URLs are fetched.")
    return UploadedImage(_decode_base64(value, name, settings), "application/octet-stream")


def _check_url(url: str, name: str) -> str:
    if len(url) > MAX_URL_CHARS:
        raise InvalidImageInput(f"{name} is a URL longer than {MAX_URL_CHARS} characters.")
    parts = urlsplit(url)
    if not parts.hostname:
        raise InvalidImageInput(f"{name} is a URL without a host.")
    if parts.username or parts.password:
        raise InvalidImageInput(f"{name} is a URL with credentials in it; those are refused.")
    try:  # a lone surrogate, which JSON allows ("\ud800"), could not even be queued: it was a 500
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidImageInput(f"{name} is a URL that is not valid Unicode.") from None
    return url


def _decode_base64(text: str, name: str, settings: Settings) -> bytes:
    text = _WHITESPACE.sub("", text)
    if len(text) > settings.max_image_bytes * 4 // 3 + 4:
        raise PayloadTooLarge(f"{name} is larger than {settings.max_image_bytes} bytes.")
    # Accept both alphabets: URL-safe base64 is common from JavaScript clients.
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageInput(
            f"{name} is neither an http(s) URL, a data: URI nor valid base64."
        ) from exc
    if not data:
        raise InvalidImageInput(f"{name} decodes to no bytes.")
    return data
