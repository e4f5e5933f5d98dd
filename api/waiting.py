"""Long polling: GET /v1/jobs/{id}?wait=N answers as soon as the job ends, not at the client's next poll.

One subscriber thread per API process listens to the channel on which the job store announces every job
that ends, and wakes the requests waiting on that job. A waiter registers before it reads the job, so an end
that lands between the read and the wait is not missed.

When the process is asked to stop (SIGTERM: api/gunicorn_hooks.py), long polls answer at once with the job as it
is, as when their time is up, rather than be cut off when gunicorn's grace ends; a request that needs the job's end
to answer at all (a synchronous caption, api/openai_compat/captioning.py) keeps waiting within that grace.
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
        self._long_polls: set[threading.Event] = set()
        self._stopping = threading.Event()

    @contextmanager
    def watching(self, job_id: str, long_poll: bool = False) -> Iterator[threading.Event]:
        """An event set when job_id ends, for as long as the block runs; for a `long_poll`, also when the process
        stops."""
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiting[job_id].append(event)
            if long_poll:
                self._long_polls.add(event)
                if self._stopping.is_set():
                    event.set()
        try:
            yield event
        finally:
            with self._lock:
                self._waiting[job_id].remove(event)
                self._long_polls.discard(event)
                if not self._waiting[job_id]:
                    del self._waiting[job_id]

    def wait_for_end(
        self, job_id: str, status_of: Callable[[str], JobStatus | None], timeout_s: float, long_poll: bool = True
    ) -> None:
        """Return once the job has ended (read after registering, so no end is missed), or after timeout_s; a
        `long_poll` also once the process stops."""
        with self.watching(job_id, long_poll) as event:
            status = status_of(job_id)
            if status is not None and not status.is_terminal():
                event.wait(timeout_s)

    def end_long_polls(self) -> None:
        """The process is stopping: every long poll answers now, and any that starts later at once."""
        with self._lock:
            self._stopping.set()
            for event in self._long_polls:
                event.set()

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
