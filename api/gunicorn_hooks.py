"""gunicorn's hooks for the API's processes (`captioner api` passes `--config python:api.gunicorn_hooks`): long polls
ending on SIGTERM, the directory the processes' metrics share, and their logging.

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

from common.log_setup import logging_config
from common.settings import load_settings

# gunicorn's error and access lines, and the app's, in CAPTIONER_LOG_FORMAT with the request's fields
# (common/log_setup.py): gunicorn applies this in its master before it forks the workers.
logconfig_dict = logging_config(load_settings().log_format)

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
# in one directory and a scrape adds them up. prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, when first
# imported, and the master imports it with this module's package, so `captioner api` sets it before it starts
# gunicorn at all. The directory must start empty, or a restart would count the last run's requests again: each start
# makes a fresh one (under PROMETHEUS_MULTIPROC_DIR when an operator set it, e.g. a volume where the root file system
# is read-only), removed when gunicorn exits.
METRICS_DIR_PREFIX = "captioner-metrics-"


def fresh_metrics_dir() -> str:
    """An empty directory for this start's metrics, for PROMETHEUS_MULTIPROC_DIR."""
    parent = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX, dir=parent)


def on_starting(server: Any) -> None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: each process keeps its own metrics and /metrics "
                           "shows one process's; start the API with `captioner api`")


def child_exit(server: Any, worker: Any) -> None:
    """A process ended: its live gauges go (its counts stay counted, as they must)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    made = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if Path(made).name.startswith(METRICS_DIR_PREFIX):  # only the directory fresh_metrics_dir made
        shutil.rmtree(made, ignore_errors=True)
