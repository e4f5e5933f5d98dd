"""The Idempotency-Key header at the edge: read and checked, and each submission's fingerprint (what makes two
requests "the same": their content, however it was encoded), for common/idempotency.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from flask import Response, jsonify, request
from redis.exceptions import RedisError

from api.intake import ParsedJob
from api.services import services
from common.bulk_schemas import BulkRequest
from common.errors import InvalidRequest, ServiceUnavailable
from common.idempotency import Replay
from common.image_strings import RemoteImage

HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def idempotency_key() -> str | None:
    """The request's Idempotency-Key, or None; InvalidRequest for one that is not 1-255 visible ASCII characters."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.match(key):
        raise InvalidRequest(f"{HEADER} must be 1 to 255 visible ASCII characters (a UUID, say).")
    return key


def job_fingerprint(parsed: ParsedJob) -> str:
    """The same for the same images, prompt, options and webhook, whether sent as JSON or multipart."""
    images = [image.url if isinstance(image, RemoteImage) else hashlib.sha256(image.data).hexdigest()
              for image in parsed.images]
    content = {"images": images, "request": parsed.request.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def bulk_fingerprint(bulk: BulkRequest) -> str:
    return hashlib.sha256(bulk.model_dump_json().encode()).hexdigest()


class Submitted(NamedTuple):
    """A submission's answer: what it made, the object to show, its status code and where it lives."""

    record_id: str
    body: dict[str, Any]
    status_code: int
    location: str

    def response(self, replayed: bool = False) -> tuple[Response, int, dict[str, str]]:
        headers = {"Location": self.location}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return jsonify(self.body), self.status_code, headers


def submit_once(
    tenant: str, fingerprint: Callable[[], str], submit: Callable[[], Submitted], replay: Callable[[Replay], Submitted]
) -> tuple[Response, int, dict[str, str]]:
    """`submit()`, unless the request's Idempotency-Key was used before: then the first answer again, as
    `replay` rebuilds it (the record as it is now, with the first status code), or the key's refusal. A submission
    that fails frees its key for a retry."""
    key = idempotency_key()
    if key is None:
        return submit().response()
    store, print_ = services().idempotency, fingerprint()
    try:
        first = store.begin(tenant, key, print_)
    except RedisError as exc:
        raise ServiceUnavailable("The job store is unavailable; try again shortly.") from exc
    if first is not None:
        return replay(first).response(replayed=True)
    try:
        made = submit()
    except BaseException:
        with contextlib.suppress(RedisError):  # else the key lapses with its TTL
            store.abandon(tenant, key)
        raise
    with contextlib.suppress(RedisError):  # the job stands; only a repeat would make another
        store.complete(tenant, key, print_, made.record_id, made.status_code)
    return made.response()
