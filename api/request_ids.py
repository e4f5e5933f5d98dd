"""X-Request-ID: every request gets one, the client's own when it is sane, else a fresh one; it is bound to the
request's log lines (common/log_context.py), answered on every response, errors included, and stored with the jobs and
bulk runs the request makes, so the worker's lines for them carry it too."""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, request

from common import log_context

log = logging.getLogger(__name__)

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# Ids as tracing systems and load balancers make them (UUIDs, hex, base64, AWS's "Root=1-...") fit; spaces, quotes,
# control and non-ASCII characters do not, so an id can go into a log line, a header and a Redis record unescaped.
SANE = re.compile(rf"[A-Za-z0-9._:=+/-]{{1,{MAX_LENGTH}}}")


def init_app(app: Flask) -> None:
    """Register before any other hook (auth's included), so that a refused request's lines have the id too."""
    app.before_request(_begin)
    app.after_request(_answer)
    app.teardown_request(_end)


def chosen(given: str | None) -> tuple[str, bool]:
    """The request id for a client's header (None: none sent) and whether the client's was refused: it is kept when
    it is 1 to MAX_LENGTH letters, digits or `._:=+/-`; anything else gets a fresh one."""
    if given is not None and SANE.fullmatch(given):
        return given, False
    return uuid.uuid4().hex, given is not None


def current() -> str | None:
    """This request's id (None outside a request)."""
    found: str | None = g.get("request_id")
    return found


def _begin() -> None:
    request_id, refused = chosen(request.headers.get(HEADER))
    g.request_id = request_id
    g.log_token = log_context.bind(request_id=request_id)
    if refused:  # its length only: the refused value itself may be what should not reach a log
        log.info("%s refused (%d characters; at most %d of letters, digits and ._:=+/-): using a fresh one",
                 HEADER, len(request.headers.get(HEADER, "")), MAX_LENGTH)


def bind_tenant(tenant: str) -> None:
    """Add the caller's tenant to the request's log lines, once auth has found it."""
    log_context.bind(tenant=tenant)  # undone with the rest of the request's fields, in _end


def _answer(response: Response) -> Response:
    response.headers[HEADER] = current() or chosen(None)[0]
    return response


def _end(_: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        log_context.reset(token)
