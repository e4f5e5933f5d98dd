"""Which paths answer errors in OpenAI's shape (common/openai_answers.py's `openai_error`), so the SDK raises its own
exception types; the native endpoints keep theirs."""

from __future__ import annotations

# The paths answered in OpenAI's shapes, now and as the rest of its surface comes (files, batches).
_PREFIXES = ("/v1/chat/", "/v1/models", "/v1/responses", "/v1/files", "/v1/batches")


def openai_shaped(path: str) -> bool:
    return path.startswith(_PREFIXES)
