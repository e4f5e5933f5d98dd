"""The reaper after a Redis outage: reports lapse while no worker can renew them, so it judges no worker dead until
the live ones have had a report's lifetime to report again, then sends spare turns for the jobs waiting (an outage
can lose a turn on its way to a worker). A fake queue: the real one's reclaim is tested on Redis in
test_fairqueue.py, and the whole outage in tests/integration/test_redis_outage.py."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import redis
from celery import Celery

from common.fairqueue import FairQueue, Reclaimed
from common.jobstore import JobStore
from worker.jobs.recovery import TurnReaper

SILENCE_S = 0.6
ROUND_S = 0.05


class QueueWithOutages:
    """A fair queue whose Redis refuses connections while `away` is set; notes when each reclaim ran."""

    max_attempts = 3

    def __init__(self) -> None:
        self.away = threading.Event()
        self.reclaims: list[tuple[float, bool]] = []

    def ping(self) -> None:
        if self.away.is_set():
            raise redis.ConnectionError("Connection refused.")

    def reclaim(self, *, spare_anyway: bool = False) -> Reclaimed:
        self.reclaims.append((time.monotonic(), spare_anyway))
        return Reclaimed([], [], 2 if spare_anyway else 0)


class Broker:
    def __init__(self) -> None:
        self.sent: list[str | None] = []

    def send_task(self, name: str, queue: str, task_id: str | None) -> Any:
        self.sent.append(task_id)
        return SimpleNamespace(id=task_id or f"spare-{len(self.sent)}")


def test_after_an_outage_no_worker_is_judged_dead_until_the_live_ones_reported_again() -> None:
    queue, broker = QueueWithOutages(), Broker()
    reaper = TurnReaper(cast(FairQueue, queue), cast(JobStore, None), cast(Celery, broker), SILENCE_S, ROUND_S).start()
    try:
        time.sleep(0.3)
        assert queue.reclaims and not any(spare for _, spare in queue.reclaims)  # every round, while Redis answers
        queue.away.set()
        time.sleep(0.5)  # longer than a round and a quarter of a report's lifetime
        queue.away.clear()
        back_at = time.monotonic()
        time.sleep(SILENCE_S + 0.4)
    finally:
        reaper.stop()
    after = [(at, spare) for at, spare in queue.reclaims if at > back_at - 0.5]
    first_at, first_spare = after[0]
    assert first_at >= back_at + SILENCE_S - ROUND_S, "a worker was judged before it could report again"
    assert first_spare and [spare for _, spare in after[1:]] == [False] * (len(after) - 1)
    assert broker.sent == [None, None]  # the spare turns, with new ids


def test_a_blip_shorter_than_a_round_changes_nothing() -> None:
    queue, broker = QueueWithOutages(), Broker()
    # A longer report lifetime than above, so that a busy machine's late round does not look like an outage.
    reaper = TurnReaper(cast(FairQueue, queue), cast(JobStore, None), cast(Celery, broker), 2.0, ROUND_S).start()
    try:
        time.sleep(0.2)
        queue.away.set()
        time.sleep(ROUND_S / 2)
        queue.away.clear()
        time.sleep(0.3)
    finally:
        reaper.stop()
    assert not any(spare for _, spare in queue.reclaims) and not broker.sent
