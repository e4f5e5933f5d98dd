"""The web process: a Flask app factory with one blueprint per resource. Never imports torch or the worker."""

from __future__ import annotations

from flask import Flask

from api.services import ApiServices
from common.settings import Settings, load_settings


def create_app(settings: Settings | None = None, services: ApiServices | None = None) -> Flask:
    """Build the app; tests pass their own settings (or whole collaborators) instead of the environment."""
    from api import bulk, errors, health, jobs, webhooks

    settings = settings or (services.settings if services else load_settings())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["captioner"] = services or ApiServices.from_settings(settings)
    app.register_blueprint(errors.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(bulk.blueprint)
    app.register_blueprint(webhooks.blueprint)
    return app
