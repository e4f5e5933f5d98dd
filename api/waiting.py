"""Long polling: GET /v1/jobs/{id}?wait=N answers as soon as the job ends, not at the client's next poll.

One subscriber thread per API process listens to the channel on which the job store announces every job
that ends, and wakes the requests waiting on that job. A waiter registers before it reads the job, so an end
that lands between the read and the wait is not missed.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from common.jobstore import ENDED_CHANNEL
from common.schemas import JobStatus

log = logging.getLogger(__name__)


class JobWaiter:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._waiting: dict[str, list[threading.Event]] = defaultdict(list)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[threading.Event]:
        """An event set when job_id ends, for as long as the block runs."""
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiting[job_id].append(event)
        try:
            yield event
        finally:
            with self._lock:
                self._waiting[job_id].remove(event)
                if not self._waiting[job_id]:
                    del self._waiting[job_id]

    def wait_for_end(self, job_id: str, status_of: Callable[[str], JobStatus | None], timeout_s: float) -> None:
        """Return once the job has ended (read after registering, so no end is missed), or after timeout_s."""
        with self.watching(job_id) as event:
            status = status_of(job_id)
            if status is not None and not status.is_terminal():
                event.wait(timeout_s)

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._subscribed.clear()
                self._thread = threading.Thread(target=self._listen, name="job-waiter", daemon=True)
                self._thread.start()
        # Subscribing takes one round trip; a waiter that started before it would miss an early end.
        self._subscribed.wait(2.0)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(ENDED_CHANNEL)
                pubsub.get_message(timeout=1.0)  # the subscribe confirmation
                self._subscribed.set()
                while True:  # get_message rather than listen(), which redis-py leaves untyped
                    message = pubsub.get_message(timeout=30.0)
                    if message is not None and message["type"] == "message":
                        self._wake(str(message["data"]))
            except redis.RedisError:
                log.warning("job waiter lost Redis; resubscribing")
                self._wake_all()  # waiters fall back to reading the job themselves
                threading.Event().wait(1.0)

    def _wake(self, job_id: str) -> None:
        with self._lock:
            for event in self._waiting.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiting.values():
                for event in events:
                    event.set()
