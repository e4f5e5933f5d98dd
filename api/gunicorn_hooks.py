"""gunicorn's hooks for the API's processes (`captioner api` passes `--config python:api.gunicorn_hooks`).

On SIGTERM a gunicorn worker stops accepting connections and gives the requests in flight GRACEFUL_TIMEOUT_S to
finish before it is killed. A long poll (`?wait=N`) would use all of that and then be cut off; instead it answers at
once with the job as it is (api/waiting.py), as when its time is up, and the client polls the next process.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

# Long enough for a synchronous caption (the OpenAI endpoints) queued behind a busy service to finish; an
# orchestrator's grace (Kubernetes' terminationGracePeriodSeconds, Compose's stop_grace_period) must exceed it.
GRACEFUL_TIMEOUT_S = 30


def post_worker_init(worker: Any) -> None:
    """Chain the long polls' ending to gunicorn's own SIGTERM handler of this worker process."""
    from api.services import ApiServices
    from api.wsgi import app

    services: ApiServices = app.extensions["captioner"]
    graceful_exit = worker.handle_exit

    def stopping(signum: int, frame: FrameType | None) -> None:
        services.waiter.end_long_polls()
        graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, stopping)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn has it: requests in flight are not interrupted
