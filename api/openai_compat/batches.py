"""The Batch API: /v1/batches to create a batch over an uploaded input file, read it, list the caller's and cancel one
(common/batches.py; the worker runs it on the bulk lane). Another tenant's batch answers 404 as one that never
existed."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from redis.exceptions import RedisError

from api import request_ids
from api.auth import caller
from api.openai_compat.captioning import parse_body
from api.openai_compat.lists import page_args
from api.services import services
from common.batches import BatchCreate, BatchList
from common.errors import InvalidParameter, ServiceUnavailable
from common.files import FileNotFound

blueprint = Blueprint("openai_batches", __name__, url_prefix="/v1/batches")


@blueprint.post("")
def create_batch() -> Response:
    """Create a batch over an input file the caller uploaded with purpose `batch`: it starts `validating`, and runs
    on the bulk lane (docs/openai.md, Batches)."""
    svc = services()
    tenant = caller().tenant
    body = parse_body(request, BatchCreate)
    try:
        found = svc.files.get(body.input_file_id, tenant=tenant)
    except FileNotFound as exc:
        raise InvalidParameter("input_file_id", f"No file with id {body.input_file_id!r}.") from exc
    if found.purpose != "batch":
        raise InvalidParameter("input_file_id", f"The file {found.id!r} has purpose {found.purpose!r}; a batch's input "
                               "file is uploaded with purpose 'batch'.")
    try:
        created = svc.batches.create(body, tenant=tenant, model=svc.settings.served_model_id,
                                     request_id=request_ids.current())
    except RedisError as exc:
        raise ServiceUnavailable("The job store is unavailable; try again shortly.") from exc
    return jsonify(created.model_dump(mode="json"))


@blueprint.get("")
def list_batches() -> Response:
    """The caller's batches, newest first: ?limit= (1-100, default 20) and ?after= (the last id of the page before)."""
    found = services().batches.page(caller().tenant, *page_args())
    return jsonify(BatchList.of(found, [b.id for b in found.data]).model_dump(mode="json"))


@blueprint.get("/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """The batch: its status, times, request counts, usage, and once it has ended its output and error files."""
    return jsonify(services().batches.get(batch_id, tenant=caller().tenant).model_dump(mode="json"))


@blueprint.post("/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """Cancel a batch: `cancelling`, then `cancelled` once its files hold what it answered and, as errors, what it
    did not. A batch that has ended is 409."""
    return jsonify(services().batches.cancel(batch_id, tenant=caller().tenant).model_dump(mode="json"))
