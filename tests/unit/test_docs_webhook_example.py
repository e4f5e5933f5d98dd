"""docs/webhooks.md's webhook-verification snippet, run as written against a delivery signed like ours."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

WEBHOOKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec_" + base64.b64encode(b"docs-example-secret").decode()


def documented_handler() -> Any:
    (snippet,) = re.findall(r"```python\n(.*?)```", WEBHOOKS_DOC.read_text(), flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # the page's own code, unchanged
    return namespace["handle_delivery"]


def signed(body: bytes, secret: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": "msg_example_job.succeeded",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_example_job.succeeded", now, body.decode()),
    }


def test_the_documented_snippet_accepts_a_good_delivery_and_rejects_a_forged_one() -> None:
    handle_delivery = documented_handler()
    body = b'{"type": "job.succeeded", "timestamp": "2026-11-29T12:00:00+00:00", "data": {"id": "x"}}'
    assert handle_delivery(body, signed(body, SECRET), SECRET)["type"] == "job.succeeded"
    forged = signed(body, "whsec_" + base64.b64encode(b"not our secret").decode())
    assert handle_delivery(body, forged, SECRET) is None
    assert handle_delivery(body.replace(b"succeeded", b"failed"), signed(body, SECRET), SECRET) is None
