"""/v1/bulk: caption every image under an S3 bucket/prefix; read the bulk job; cancel it."""

from __future__ import annotations

import logging
import re
import uuid

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import ValidationError
from redis.exceptions import RedisError

from api import request_ids
from api.auth import caller
from api.idempotency import Submitted, bulk_fingerprint, idempotency_key, submit_once
from api.intake import describe, json_object
from api.jobs import check_webhook, page_limit, page_response
from api.services import ApiServices, services
from api.webhooks import deliveries_response
from common.bulk_schemas import BulkJob, BulkRequest, bulk_links
from common.errors import (
    Forbidden,
    JobNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from common.idempotency import Replay
from common.prompts import check_prompt

log = logging.getLogger(__name__)
blueprint = Blueprint("bulk", __name__, url_prefix="/v1/bulk")

_BULK_ID = re.compile(r"^[0-9a-f]{32}$")


@blueprint.post("")
def create_bulk_job() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    tenant = caller().tenant
    idempotency_key()  # checked before the body is read, too
    bulk_request = _parse(svc)

    def submit() -> Submitted:
        bulk_id = uuid.uuid4().hex
        try:
            job = svc.bulk.create(bulk_id, bulk_request, tenant=tenant, request_id=request_ids.current())
        except RedisError as exc:
            raise ServiceUnavailable("The job store is unavailable; try again shortly.") from exc
        location = url_for("bulk.get_bulk_job", bulk_id=bulk_id)
        return Submitted(bulk_id, present(job).model_dump(mode="json"), 202, location)

    def replay(first: Replay) -> Submitted:
        job = load_bulk_job(first.record_id)
        location = url_for("bulk.get_bulk_job", bulk_id=job.id)
        return Submitted(job.id, present(job).model_dump(mode="json"), first.status_code, location)

    return submit_once(tenant, lambda: bulk_fingerprint(bulk_request), submit, replay)


def _parse(svc: ApiServices) -> BulkRequest:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send application/json with a 'source' object.")
    body = json_object(request)
    try:
        parsed = BulkRequest.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(describe(exc.errors())) from exc
    check_prompt(parsed.prompt, parsed.options.max_new_tokens, svc.settings)
    if parsed.webhook is not None:
        check_webhook(svc, parsed.webhook)
    output = parsed.resolved_output()
    places = (("source", parsed.source.bucket, parsed.source.prefix), ("output", output.bucket, output.prefix))
    for role, bucket, prefix in places:
        if not svc.settings.bulk_bucket_allowed(bucket):
            raise ValidationFailed(f"{role}.bucket: this server does not caption bucket {bucket!r} "
                                   "(see CAPTIONER_BULK_BUCKETS).")
        if not caller().limits.allows_bulk(bucket, prefix):
            raise Forbidden(f"{role}: this API key may not use s3://{bucket}/{prefix} for bulk jobs "
                            "(keys are given their buckets with `captioner keys create --bulk-bucket`).")
    _check_buckets(svc, parsed.source.bucket, output.bucket)
    return parsed


def _check_buckets(svc: ApiServices, source: str, output: str) -> None:
    """Refuse now, with a clear message, a bucket the worker could never read or write."""
    try:
        if output == svc.storage.bucket:
            svc.storage.ensure_bucket()
        for role, bucket in (("source", source), ("output", output)):
            problem = svc.storage.in_bucket(bucket).bucket_problem()
            if problem:
                raise ValidationFailed(f"{role}.bucket: {problem}")
    except (BotoCoreError, ClientError) as exc:
        raise ServiceUnavailable("Storage is unavailable; try again shortly.") from exc


@blueprint.get("")
def list_bulk_jobs() -> Response:
    """The caller's bulk jobs, newest first: ?limit=N (1-100, default 20) and ?cursor= from the page before."""
    page = services().bulk.page(caller().tenant, page_limit(), request.args.get("cursor") or None)
    return page_response([present(job).model_dump(mode="json") for job in page.data], page.next_cursor)


@blueprint.get("/<bulk_id>")
def get_bulk_job(bulk_id: str) -> Response:
    return jsonify(present(load_bulk_job(bulk_id)).model_dump(mode="json"))


@blueprint.get("/<bulk_id>/webhooks")
def list_bulk_deliveries(bulk_id: str) -> Response:
    """The deliveries of the bulk job's terminal events (bulk.progress is best-effort and not kept)."""
    load_bulk_job(bulk_id)
    return deliveries_response(bulk_id)


@blueprint.post("/<bulk_id>/cancel")
def cancel_bulk_job(bulk_id: str) -> Response:
    """Stop a bulk job; results of the chunks that finished stay, and its manifest lists them."""
    check_bulk_id(bulk_id)
    return jsonify(present(services().bulk.cancel(bulk_id, tenant=caller().tenant)).model_dump(mode="json"))


def check_bulk_id(bulk_id: str) -> None:
    if not _BULK_ID.match(bulk_id):
        raise JobNotFound(f"No bulk job with id {bulk_id!r}.")


def load_bulk_job(bulk_id: str) -> BulkJob:
    """The caller's bulk job, or JobNotFound, the same for another tenant's as for one that never existed."""
    check_bulk_id(bulk_id)
    return services().bulk.get(bulk_id, tenant=caller().tenant)


def present(job: BulkJob) -> BulkJob:
    base = services().settings.public_url or request.host_url
    return job.model_copy(update={"urls": bulk_links(job.id, base)})
