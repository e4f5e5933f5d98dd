"""gunicorn's hooks for the API's processes (`captioner api` passes `--config python:api.gunicorn_hooks`): long polls
ending on SIGTERM, and the directory the processes' metrics share.

On SIGTERM a gunicorn worker stops accepting connections and gives the requests in flight GRACEFUL_TIMEOUT_S to
finish before it is killed. A long poll (`?wait=N`) would use all of that and then be cut off; instead it answers at
once with the job as it is (api/waiting.py), as when its time is up, and the client polls the next process.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
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


# Metrics (api/metrics.py): prometheus_client's multiprocess mode, in which each process writes its values to files
# in one directory and a scrape adds them up. The directory must be set before any process imports prometheus_client
# and must start empty, or a restart would add the last run's counts again; the master sets it here, before it forks
# the processes that import the app. PROMETHEUS_MULTIPROC_DIR is prometheus_client's own variable: an operator may
# set it (a volume, where the root file system is read-only), and it is then emptied at start and kept.
_MADE_DIR: list[str] = []  # the directory made here, removed when gunicorn exits


def on_starting(server: Any) -> None:
    """Give this run of gunicorn an empty metrics directory."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    else:
        made = tempfile.mkdtemp(prefix="captioner-metrics-")
        _MADE_DIR.append(made)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made


def child_exit(server: Any, worker: Any) -> None:
    """A process ended: its live gauges go (the counters stay counted, as they must)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    for made in _MADE_DIR:
        shutil.rmtree(made, ignore_errors=True)
