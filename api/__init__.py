"""The web process: a Flask app factory with one blueprint per resource. Never imports torch or the worker."""

from __future__ import annotations

import logging

from flask import Flask
from redis.exceptions import RedisError

from api.services import ApiServices
from common.settings import Settings, load_settings

log = logging.getLogger(__name__)


class NoKeys(RuntimeError):
    """Keys are required (CAPTIONER_AUTH=on) and none exists: the API would refuse every request."""


def create_app(settings: Settings | None = None, services: ApiServices | None = None) -> Flask:
    """Build the app; tests pass their own settings (or whole collaborators) instead of the environment.

    Secure by default: with CAPTIONER_AUTH=on (the default) and no active key, NoKeys; with it off, a warning."""
    from api import auth, bulk, errors, health, jobs, metrics, page, ratelimit, request_ids, usage, webhooks
    from api.openai_compat import batches, chat, files, models, responses
    from api.openapi import views as openapi
    from common import prompts

    settings = settings or (services.settings if services else load_settings())
    found = services or ApiServices.from_settings(settings)
    if settings.auth == "off":
        log.warning("CAPTIONER_AUTH=off: every request is served, as the one built-in tenant, without a key")
    elif not _any_key(found):
        raise NoKeys("No API key exists, so every request would be refused: create one with "
                     "`captioner keys create --name NAME`, or set CAPTIONER_AUTH=off for an open local service.")
    prompts.model_text(settings.model)  # the model's tokenizer, read at start rather than on the first prompt
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["captioner"] = found
    request_ids.init_app(app)  # first: every other hook's lines, and every answer, have the request id
    metrics.init_app(app)  # before auth: its hook times and counts every request, those auth refuses too
    auth.init_app(app)
    ratelimit.init_app(app, settings)  # after auth: it limits by the caller's key
    app.register_blueprint(errors.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(bulk.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(usage.blueprint)
    app.register_blueprint(models.blueprint)
    app.register_blueprint(chat.blueprint)
    app.register_blueprint(responses.blueprint)
    app.register_blueprint(files.blueprint)
    app.register_blueprint(batches.blueprint)
    app.register_blueprint(openapi.blueprint)  # /openapi.json describes every route above, and /docs shows it
    app.register_blueprint(page.blueprint)  # GET /: the page for people, on the /v1 API like any client
    return app


def _any_key(services: ApiServices) -> bool:
    """Whether an active key exists; True when Redis cannot tell now (every request checks its key anyway)."""
    try:
        return services.tenants.any_active()
    except RedisError as exc:
        log.warning("could not count the API keys at start (%s); each request's key is checked", exc)
        return True
