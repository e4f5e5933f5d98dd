"""Liveness (/healthz: the process answers) and readiness (/readyz: Redis and S3 answer)."""

from __future__ import annotations

import logging
from typing import Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from api.services import services

log = logging.getLogger(__name__)
blueprint = Blueprint("health", __name__)


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether Redis and S3 answer (each check "ok" or why not), and whether keys are required."""

    status: Literal["ok", "unavailable"]
    auth: Literal["on", "off"]
    checks: dict[str, str]


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify(Health(status="ok").model_dump())


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    for name, probe in (("redis", services().jobs.ping), ("s3", services().storage.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready", whatever the client library raised
            log.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", auth=services().settings.auth, checks=checks)
    return jsonify(body.model_dump()), 200 if ready else 503
