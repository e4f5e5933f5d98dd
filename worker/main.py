"""`captioner worker`: load the model once, then consume the queue with a Celery thread pool.

Threads, not processes: one process holds one model on one GPU, and its dynamic batcher gathers images from
all the jobs its threads hold at once.
"""

from __future__ import annotations

import logging
import socket
import sys

from common.queue import INTERACTIVE_QUEUE, make_celery
from common.settings import Settings
from worker.captioner import ModelUnavailable
from worker.runtime import build_runtime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


def run_worker(settings: Settings, loglevel: str = "INFO") -> int:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runtime = build_runtime(settings)
    except ModelUnavailable as exc:
        print(f"captioner worker: {exc}", file=sys.stderr)
        return 2
    app = make_celery(settings)
    register_tasks(app, runtime)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={runtime.concurrency}",
                f"--queues={INTERACTIVE_QUEUE}",
                f"--loglevel={loglevel}",
                f"--hostname=captioner@{socket.gethostname()}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        runtime.close()
    return 0
