"""/v1/jobs/{id}/webhooks: the deliveries of a job's events, and sending the final one again."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.jobs import load_job
from api.services import services
from common.errors import Conflict
from common.schemas import WebhookEvent

blueprint = Blueprint("webhooks", __name__, url_prefix="/v1/jobs")


def deliveries_response(job_id: str) -> Response:
    """Every kept delivery of a job's (or bulk job's) events, as the webhooks endpoints answer them."""
    deliveries = services().deliveries.list_for_job(job_id)
    return jsonify({"deliveries": [d.model_dump(mode="json") for d in deliveries]})


@blueprint.get("/<job_id>/webhooks")
def list_deliveries(job_id: str) -> Response:
    """Every delivery of the job's events, with each attempt: time, status code or error, next try."""
    load_job(job_id)
    return deliveries_response(job_id)


@blueprint.post("/<job_id>/webhooks/redeliver")
def redeliver(job_id: str) -> tuple[Response, int]:
    """Send the job's terminal event again, under the same webhook-id, with a fresh retry budget."""
    job = load_job(job_id)
    if not job.status.is_terminal():
        raise Conflict(f"The job is {job.status}; only a finished job's final event can be sent again.")
    if not services().deliveries.redeliver(job_id, WebhookEvent.for_terminal(job.status)):
        raise Conflict(f"The job has no webhook for {WebhookEvent.for_terminal(job.status)}.")
    return deliveries_response(job_id), 202
