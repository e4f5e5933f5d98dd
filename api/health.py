"""Liveness (/healthz: the process answers) and readiness (/readyz: Redis and S3 answer)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from api.services import services

log = logging.getLogger(__name__)
blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


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
    body = {"status": "ok" if ready else "unavailable", "auth": services().settings.auth, "checks": checks}
    return jsonify(body), 200 if ready else 503
