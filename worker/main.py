"""`captioner worker`: load the model once, then consume the queue with a Celery thread pool.

Threads, not processes: one process holds one model on one GPU, and its dynamic batcher gathers images from
all the jobs its threads hold at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from celery.signals import setup_logging, worker_ready, worker_shutting_down
from redis.exceptions import RedisError

from common.errors import ModelLoadError
from common.fairqueue import FairQueue
from common.log_context import set_process_fields
from common.log_setup import configure_logging
from common.queue import INTERACTIVE_QUEUE, make_celery
from common.redis_client import service_redis
from common.settings import Settings
from worker.health import EXIT_WORKER_FAILED
from worker.jobs.recovery import TurnReaper
from worker.jobs.tasks import register_tasks
from worker.metrics import serve as serve_metrics
from worker.model.captioner import transformers_logs_through_ours
from worker.runtime import build_runtime

log = logging.getLogger(__name__)


def _stop_taking_work() -> None:
    """Celery's warm shutdown, as on SIGTERM: consume nothing more, let the tasks in hand end (a worker whose device
    failed gives them back to the queue), then return from worker_main."""
    os.kill(os.getpid(), signal.SIGTERM)


def run_worker(settings: Settings, loglevel: str = "INFO") -> int:
    """Run until stopped: 0 when asked to stop, 2 when the model cannot be loaded, EXIT_WORKER_FAILED when the
    device failed (worker/health.py)."""
    configure_logging(settings.log_format, loglevel)
    transformers_logs_through_ours(progress_bars=settings.log_format == "plain")
    # The process id too: several workers may share a host (one per GPU).
    name = f"captioner-{os.getpid()}@{socket.gethostname()}"
    set_process_fields(worker=name)  # on every line this worker logs
    # Served before the model loads, so that a scrape sees the worker not ready yet rather than no worker.
    metrics = serve_metrics(settings.metrics_port, settings.metrics_token)
    try:
        runtime = build_runtime(settings, name, _stop_taking_work)
    except ModelLoadError as exc:
        print(f"captioner worker: {exc}", file=sys.stderr)
        return 2
    app = make_celery(settings)
    queue = FairQueue(runtime.redis, settings.job_ttl_seconds, settings.max_attempts)
    stopping = threading.Event()
    register_tasks(app, runtime.deps, queue, name, stopping)
    # The reaper's queue fails fast: a reclaim must not run late, once Redis is back and reports have lapsed.
    failing_fast = service_redis(settings)
    reaper_queue = FairQueue(failing_fast, settings.job_ttl_seconds, settings.max_attempts)
    reaper = TurnReaper(reaper_queue, runtime.deps.jobs, app, settings.worker_silence_seconds)

    def consuming(**_: Any) -> None:
        runtime.health.ready()
        queue.join(name)
        reaper.start()

    def shutting_down(**_: Any) -> None:
        """SIGTERM (or a failed device): Celery stops consuming and waits for the tasks in hand, which give their jobs
        back once the batch on the model ends, rather than running them to the end. Off the signal handler's thread,
        which must not wait on the batcher's lock."""
        stopping.set()
        threading.Thread(target=runtime.hand_back, name="hand-back", daemon=True).start()

    # A receiver of setup_logging tells Celery the logging is set up already: it neither replaces the handlers nor
    # gives its task loggers their own, nor turns print() into log lines.
    setup_logging.connect(lambda **_: None, weak=False)
    worker_ready.connect(consuming, weak=False)
    worker_shutting_down.connect(shutting_down, weak=False)
    try:
        app.worker_main(
            [
                # JSON lines only, for a collector: Celery's banner, which it prints, goes in plain logs alone.
                *(["--quiet"] if settings.log_format == "json" else []),
                "worker",
                "--pool=threads",
                f"--concurrency={runtime.concurrency}",
                f"--queues={INTERACTIVE_QUEUE}",
                f"--loglevel={loglevel}",
                f"--hostname={name}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    except SystemExit:
        pass  # Celery's own exit after a shutdown; the code is decided below
    finally:
        reaper.stop()
        with contextlib.suppress(RedisError):  # Redis away: once this report expires, others send spare turns
            reaper_queue.leave(name)  # at once: a worker stopping while Redis is away does not wait for it
        runtime.close()
        if metrics is not None:
            metrics.shutdown()
    if runtime.health.failure is not None:
        return EXIT_WORKER_FAILED
    return 0
