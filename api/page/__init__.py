"""GET /: the page where a person tries the service in a browser, and /page/<file>, its script and style.

Plain HTML, CSS and a JavaScript module, served as they are from static/: no build step, no framework and nothing
fetched from elsewhere. The page calls the /v1 API like any client, with a key the person enters (kept in the
browser's local storage), so it needs no route or permission of its own. Neither path needs a key.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).parent / "static"

blueprint = Blueprint("page", __name__, static_folder="static", static_url_path="/page")

# The page runs only its own files and talks only to this origin; nothing may frame it (clickjacking) or read
# its key through injected markup: every text the service returns is put in with textContent.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@blueprint.get("/")
def page() -> Response:
    """The page: caption images with a key, see recent jobs and bulk runs."""
    return send_from_directory(STATIC, "index.html", max_age=0)


@blueprint.after_request
def _protect(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response
