"""An S3 object's bytes from a presigned URL, with urllib3: how decoding processes fetch bulk images and uploads
(`StoredObject.read` is the boto3 way, on the calling thread).

boto3's get_object costs the process that calls it far more Python than presigning the same GET (BENCHMARKS.md,
"Bulk, local stack"); on a GPU worker that is GIL time the thread launching the model's kernels waits for. So the
worker presigns the GET and a decoding process fetches it, off the worker's GIL. Errors mean what
ObjectStorage.get's callers make of boto3's: the object's own problems (missing, too large, and in a user's bucket
forbidden or archived) are per-image errors; anything else (S3 away, throttling past the retries) is S3's problem,
a RuntimeError, and the work is retried later.
"""

from __future__ import annotations

import re
from functools import cache

import urllib3

from common.errors import USERS_OBJECT, ImageTooLarge, Unreadable

# As ObjectStorage's boto3 client: 3 attempts for S3's passing failures, the same connect and read timeouts.
_RETRIES = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504),
                         allowed_methods=frozenset({"GET"}), raise_on_status=False)
_TIMEOUT = urllib3.Timeout(connect=5, read=30)


@cache
def _http() -> urllib3.PoolManager:
    """One connection pool per process, made on first use (decoding processes that never fetch need none)."""
    return urllib3.PoolManager(retries=_RETRIES, timeout=_TIMEOUT)


def fetch_object(url: str, max_bytes: int, unreadable: Unreadable | None = None) -> bytes:
    """The object's bytes; ImageFetchError or ImageTooLarge for the object's own problems, RuntimeError else.

    `unreadable` says which S3 error codes are the object's problem and how to word them (default: those of a
    user's bucket, where a forbidden object is the user's to fix)."""
    unreadable = unreadable or USERS_OBJECT
    try:
        # The stored bytes as they are, as boto3 gives them: no gunzipping of a Content-Encoding the uploader set.
        response = _http().request("GET", url, preload_content=False, decode_content=False)
    except urllib3.exceptions.HTTPError as exc:
        raise RuntimeError(f"S3 could not be reached: {exc}") from exc
    try:
        if response.status != 200:
            code = _error_code(response.read(64 * 1024)) or str(response.status)
            if (error := unreadable.error(code)) is not None:
                raise error
            raise RuntimeError(f"S3 answered {response.status} ({code})")
        length = response.headers.get("Content-Length")
        if length is not None and int(length) > max_bytes:
            raise ImageTooLarge(f"The image is {length} bytes; the limit is {max_bytes}.")
        data = response.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ImageTooLarge(f"The image is larger than the limit of {max_bytes} bytes.")
        return data
    except urllib3.exceptions.HTTPError as exc:
        raise RuntimeError(f"reading the object from S3 failed: {exc}") from exc
    finally:
        response.release_conn()


def _error_code(body: bytes) -> str | None:
    """The <Code> of an S3 error document, if the body is one."""
    found = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    return found.group(1).decode(errors="replace") if found else None
