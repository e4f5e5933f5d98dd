"""Interactive jobs of dead workers, running again within seconds rather than after the broker's visibility timeout.

Every worker runs a reaper: every RECLAIM_EVERY_S it asks the fair queue for the turns held by workers whose report
has expired (common/fairqueue.py, `reclaim`; a ready worker renews its report every few seconds, worker/health.py),
and sends each again under the same id, so the worker that gets it takes the same job and captions what the dead one
had not recorded. The broker still redelivers the dead worker's own message once its visibility timeout passes; by
then the job has ended and that delivery takes the next waiting job, or nothing.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from redis.exceptions import RedisError

from common.fairqueue import FairQueue
from common.queue import send_turn

log = logging.getLogger(__name__)

RECLAIM_EVERY_S = 2.0


class TurnReaper:
    """A thread that sends the turns of dead workers again; every worker runs one, the script makes racing safe."""

    def __init__(self, queue: FairQueue, app: Celery, interval_s: float = RECLAIM_EVERY_S) -> None:
        self._queue = queue
        self._app = app
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
        while not self._stop.wait(self._interval_s):
            try:
                self.reclaim()
            except RedisError as exc:  # Redis away: the turns stay held, and are reclaimed once it is back
                log.warning("could not reclaim the jobs of dead workers: %s", exc)

    def reclaim(self) -> int:
        turns = self._queue.reclaim()
        for turn in turns:
            send_turn(self._app, turn)
        if turns:
            log.warning("sent again the %d jobs held by workers that stopped reporting", len(turns))
        return len(turns)
