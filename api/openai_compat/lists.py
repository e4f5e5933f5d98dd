"""How the OpenAI-compatible lists are paged: ?limit= (1-100, default 20) and ?after= (the last id of the page
before), as OpenAI's are."""

from __future__ import annotations

from flask import request

from common.errors import InvalidParameter


def page_args() -> tuple[int, str | None]:
    """The request's limit and `after` cursor."""
    raw = request.args.get("limit", "20")
    if not raw.isdigit():
        raise InvalidParameter("limit", f"limit must be a whole number, not {raw!r}.")
    return int(raw), request.args.get("after") or None
