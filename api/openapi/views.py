"""GET /openapi.json (the description, built once per process) and GET /docs (Swagger UI on it). Neither needs a key:
api/auth.py checks /v1 paths only.

Swagger UI's files come from the `swagger-ui-py` package (Swagger UI 5, which reads OpenAPI 3.1; Apache-2.0) and
are served from here, so the page needs no CDN, no network and no build step. Only that package's static folder is
used, found without importing the package (its Python side is a framework adapter we do not need).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, jsonify, send_from_directory, url_for

from api.openapi.document import build_document
from api.openapi.routes import PATH_PARAMETERS, TAGS, routes
from api.services import services

blueprint = Blueprint("openapi", __name__)

# The files the page loads; anything else under the package's folder is not served.
_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "LICENSE"})
_LOCK = threading.Lock()

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>captioner API</title>
  <link rel="icon" type="image/png" href="{icon}">
  <link rel="stylesheet" href="{css}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{js}"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true,
                                 displayRequestDuration: true, tryItOutEnabled: false}});
  </script>
</body>
</html>
"""


def swagger_ui_folder() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("the swagger-ui-py package is not installed (it is in the api extra)")
    return Path(spec.origin).parent / "static"


def document(app: Flask) -> dict[str, Any]:
    """The description of this app, built on first use and kept (it depends only on the code and settings)."""
    found: dict[str, Any] | None = app.extensions.get("openapi")
    if found is None:
        with _LOCK:
            found = app.extensions.get("openapi")
            if found is None:
                settings = services().settings
                info = {
                    "title": "captioner",
                    "version": importlib.metadata.version("captioner"),
                    "summary": "Image captioning with BLIP: jobs, bulk runs over S3, webhooks, and OpenAI-compatible "
                               "endpoints.",
                    "description": "Every /v1 request carries an API key: `Authorization: Bearer cap_…`. Native "
                                   "errors answer `{\"error\": {\"code\", \"message\"}}`; the OpenAI-compatible "
                                   "paths answer OpenAI's `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
                }
                found = build_document(app, routes(settings), info, TAGS, PATH_PARAMETERS)
                app.extensions["openapi"] = found
    return found


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 description of every endpoint."""
    return jsonify(document(current_app))


@blueprint.get("/docs")
def docs() -> Response:
    """Swagger UI on /openapi.json, its files served by the API itself."""
    page = _PAGE.format(icon=url_for("openapi.asset", filename="favicon-32x32.png"),
                        css=url_for("openapi.asset", filename="swagger-ui.css"),
                        js=url_for("openapi.asset", filename="swagger-ui-bundle.js"),
                        spec=url_for("openapi.openapi_json"))
    return Response(page, mimetype="text/html")


@blueprint.get("/docs/<filename>")
def asset(filename: str) -> Response:
    if filename not in _ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_folder(), filename, max_age=86400)
