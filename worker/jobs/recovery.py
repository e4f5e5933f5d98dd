"""Interactive jobs of dead workers, running again within seconds rather than after the broker's visibility timeout.

Every worker runs a reaper: every RECLAIM_EVERY_S it asks the fair queue for the turns held by workers whose report
has expired (common/fairqueue.py, `reclaim`; a ready worker renews its report several times within its lifetime,
worker/health.py), and sends each again under the same id, so the worker that gets it takes the same job and
captions what the dead one had not recorded; a job that has cost CAPTIONER_MAX_ATTEMPTS workers is failed instead.
The broker still redelivers the dead worker's own message once its visibility timeout passes; by
then the job has ended and that delivery takes the next waiting job, or nothing.

A report that expired while Redis was out of reach says nothing about its worker: no worker could renew one. So a
reaper that could not reach Redis for a while judges no worker dead until the live ones have had a report's lifetime
to report again; then it sends spare turns for the jobs waiting, since an outage can lose a turn on its way to a
worker (kombu pops a message, then records it as unacknowledged, in two steps).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from common.errors import JobKilledWorkers
from common.fairqueue import FairQueue
from common.jobstore import JobStore
from common.queue import send_turn
from common.schemas import ErrorBody, JobStatus

log = logging.getLogger(__name__)

RECLAIM_EVERY_S = 2.0


class TurnReaper:
    """A thread that sends the turns of dead workers again; every worker runs one, the script makes racing safe.

    `queue` should fail fast rather than ride out an outage (common/redis_client.py): a reclaim sent to a Redis that
    is away must not run late, once reports have expired."""

    def __init__(
        self, queue: FairQueue, jobs: JobStore, app: Celery, silence_s: float, interval_s: float = RECLAIM_EVERY_S
    ) -> None:
        self._queue = queue
        self._jobs = jobs
        self._app = app
        self._silence_s = silence_s
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="turn-reaper", daemon=True)

    def start(self) -> TurnReaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a worker stopped before it was ready never started it
            self._thread.join(timeout=5)

    def _run(self) -> None:
        reached_at = time.monotonic()  # when this reaper last reached Redis
        holding_until: float | None = None  # after Redis was out of reach: when to judge workers again
        while True:  # at once first: a worker started in place of a dead one takes up its jobs without waiting
            try:
                self._queue.ping()
                now = time.monotonic()
                # Out of reach for a quarter of a report's lifetime (beyond a round): a report may lapse unrenewed.
                if now - reached_at > self._interval_s + self._silence_s / 4:
                    holding_until = now + self._silence_s
                    log.warning("Redis was out of reach for %.1f s: no worker is judged dead for %.0f s, while the "
                                "live ones report again", now - reached_at, self._silence_s)
                reached_at = now
                if holding_until is None:
                    self.reclaim()
                elif now >= holding_until:
                    self.reclaim(after_outage=True)
                    holding_until = None
            except Exception as exc:  # Redis away, or the broker (kombu raises many types): the next round tries again
                log.warning("could not reclaim the jobs of dead workers: %s", exc)
            if self._stop.wait(self._interval_s):
                return

    def reclaim(self, *, after_outage: bool = False) -> int:
        """Send again the turns of dead workers, and fail the jobs that have cost too many; how many turns.
        `after_outage`: send spare turns for the jobs waiting, whether or not a worker died."""
        reclaimed = self._queue.reclaim(spare_anyway=after_outage)
        for turn in reclaimed.again:
            send_turn(self._app, turn)
        for _ in range(reclaimed.spare):
            send_turn(self._app)
        if reclaimed.again or reclaimed.spare:
            log.warning("sent again the %d jobs held by workers that stopped reporting, and %d spare turns for the "
                        "jobs waiting%s", len(reclaimed.again), reclaimed.spare,
                        " (Redis was out of reach)" if after_outage else "")
        for turn in reclaimed.poisoned:
            task = self._queue.task(turn)
            if task is not None:
                error = JobKilledWorkers(f"A worker died captioning this job {self._queue.max_attempts} times, the "
                                         "last time running it alone: one of its images crashes the worker. It is "
                                         "not tried again.")
                self._jobs.finish(task.job_id, JobStatus.FAILED, ErrorBody.of(error))
                log.error("job %s failed: %s", task.job_id, error.message)
            self._queue.done(turn)
        return len(reclaimed.again) + len(reclaimed.poisoned) + reclaimed.spare
