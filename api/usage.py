"""/v1/usage: the caller's tenant's usage by UTC day (common/usage.py counts it)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from redis.exceptions import RedisError

from api.auth import caller
from api.services import services
from common.errors import ServiceUnavailable
from common.usage import parse_range

blueprint = Blueprint("usage", __name__, url_prefix="/v1/usage")


@blueprint.get("")
def get_usage() -> Response:
    """?start=YYYY-MM-DD&end=YYYY-MM-DD, both included (default: the last 30 days, today included)."""
    start, end = parse_range(request.args.get("start"), request.args.get("end"))
    try:
        report = services().usage.report(caller().tenant, start, end)
    except RedisError as exc:
        raise ServiceUnavailable("The usage store is unavailable; try again shortly.") from exc
    return jsonify(report.model_dump(mode="json"))
