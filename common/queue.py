"""The Celery app factory, queue names and task names shared by the API (sender) and the worker."""

from __future__ import annotations

from celery import Celery

from common.broker import broker_url, transport
from common.settings import Settings

INTERACTIVE_QUEUE = "captioner.interactive"
CAPTION_JOB_TASK = "captioner.caption_job"


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the Redis broker with at-least-once delivery.

    Late acks plus reject-on-worker-lost put a task back on the queue when its worker dies mid-job; the
    tasks are idempotent by job and image index, so running one twice is harmless. The job record in
    Redis holds status and results, so Celery keeps no results of its own.
    """
    sentinel = bool(settings.sentinel_addresses)
    app = Celery("captioner", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        broker_transport=transport(sentinel),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=INTERACTIVE_QUEUE,
        task_routes={CAPTION_JOB_TASK: {"queue": INTERACTIVE_QUEUE}},
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # A worker has nothing to do without its broker: it tries again for as long as Redis is away (after 2 s,
        # then 2 s longer each time up to 30 s: kombu's steps), rather than exiting after Celery's default 100 tries.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            # Without these a publish or a read waits for ever on a Redis that stopped answering (kombu's default).
            "socket_timeout": settings.redis_timeout_seconds,
            "socket_connect_timeout": settings.redis_timeout_seconds,
            "visibility_timeout": settings.visibility_timeout_seconds,
            # kombu looks for such tasks only every 10 s x 10 calls by default, so a killed worker's job
            # would wait up to ~100 s past the timeout: look every fifth of the timeout (1-10 s) instead.
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout_seconds // 5)),
            "unacked_restore_throttle": 1,
            **({"master_name": settings.redis_sentinel_master} if sentinel else {}),
        },
    )
    return app


def send_turn(app: Celery, turn: str | None = None) -> str:
    """Give the workers a turn to run the next interactive job (common/fairqueue.py), by task name (the API never
    imports the worker); return its id. `turn`: an id to send again, as a redelivery would."""
    sent = app.send_task(CAPTION_JOB_TASK, queue=INTERACTIVE_QUEUE, task_id=turn)
    return str(sent.id)
