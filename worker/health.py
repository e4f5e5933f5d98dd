"""Whether this worker can caption: ready once its model is loaded, and not ready for good once its device fails.

A worker whose device is broken would fail every image of every job it took. On a WorkerFailure (the batcher
reports it: worker/jobs/batching.py) it reports itself not ready (common/workers.py), stops taking work and exits
with EXIT_WORKER_FAILED, for its supervisor (Kubernetes, systemd, `captioner up`) to start a fresh one; the jobs
it held go back to the queue at once, for other workers (worker/jobs/tasks.py), and so do its bulk chunks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis.exceptions import RedisError

from common.errors import WorkerFailure
from common.workers import WorkerRegistry
from worker.metrics import WORKER_READY

log = logging.getLogger(__name__)

EXIT_WORKER_FAILED = 3
# A ready worker renews its report this many times within its lifetime (CAPTIONER_WORKER_SILENCE_SECONDS): a worker
# whose report expires is dead, and its jobs run again elsewhere (worker/jobs/recovery.py).
RENEWALS_PER_LIFETIME = 5
# A not-ready report stays for operators to read long after the worker exited.
NOT_READY_TTL_S = 24 * 3600.0


class WorkerHealth:
    """This worker's report, renewed on a thread of its own while it is ready."""

    def __init__(
        self, registry: WorkerRegistry, name: str, stop_worker: Callable[[], None], silence_s: float = 10.0
    ) -> None:
        self.name = name
        self.silence_s = silence_s
        self.failure: WorkerFailure | None = None
        self._registry = registry
        self._stop_worker = stop_worker
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._reporting = threading.Lock()  # so that a renewal cannot land after the not-ready report
        self._renewing = threading.Thread(target=self._renew, name="worker-health", daemon=True)

    def ready(self) -> None:
        """Report ready now and RENEWALS_PER_LIFETIME times per report's lifetime, until `failed` or `close`."""
        self._report()
        WORKER_READY.set(1)
        self._renewing.start()

    def failed(self, failure: WorkerFailure) -> None:
        """The device is broken: report not ready, and stop the worker (once, from whichever thread found it)."""
        with self._lock:
            if self.failure is not None:
                return
            self.failure = failure
        WORKER_READY.set(0)
        self._stopped.set()
        log.critical("worker %s is not ready and stops, for its supervisor to start a fresh one: %s",
                     self.name, failure.message)
        self._report()
        self._stop_worker()

    def close(self) -> None:
        WORKER_READY.set(0)
        self._stopped.set()

    def _renew(self) -> None:
        while not self._stopped.wait(self.silence_s / RENEWALS_PER_LIFETIME):
            self._report()

    def _report(self) -> None:
        try:
            with self._reporting:
                self._write()
        except RedisError as exc:  # Redis away: the report is renewed (or expires) once it is back
            log.warning("could not report this worker's state: %s", exc)

    def _write(self) -> None:
        if self.failure is None:
            self._registry.report(self.name, "ready", self.silence_s)
        else:
            self._registry.report(self.name, "not_ready", NOT_READY_TTL_S, self.failure.message)
