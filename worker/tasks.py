"""Celery tasks, thin like views: validate the message, hand it to the pipeline."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from celery import Celery, Task
from redis.exceptions import RedisError

from common.queue import CAPTION_JOB_TASK
from common.schemas import CaptionTask, ErrorBody, JobStatus
from worker.pipeline import run_caption_task
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# Outages of Redis or S3 are retried with backoff; the job fails only when they outlast the retries.
TRANSIENT_ERRORS = (RedisError, BotoCoreError, ClientError)
MAX_RETRIES = 6


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Bind the tasks to this process's runtime (model, batcher, stores)."""

    @app.task(  # type: ignore[untyped-decorator]
        name=CAPTION_JOB_TASK,
        bind=True,
        autoretry_for=TRANSIENT_ERRORS,
        max_retries=MAX_RETRIES,
        retry_backoff=True,
        retry_backoff_max=60,
    )
    def caption_job(self: Task, payload: dict[str, Any]) -> None:
        task = CaptionTask.model_validate(payload)
        try:
            run_caption_task(task, runtime.deps)
        except TRANSIENT_ERRORS as exc:
            if self.request.retries >= MAX_RETRIES:
                error = ErrorBody(code="service_unavailable", message=f"Storage stayed unavailable: {exc}")
                runtime.deps.jobs.finish(task.job_id, JobStatus.FAILED, error)
            raise
        except Exception:
            # Celery acks a task that raised; fail its job rather than leave it `running` for ever.
            log.exception("job %s failed unexpectedly", task.job_id)
            error = ErrorBody(code="internal_error", message="The worker failed on this job; see its logs.")
            runtime.deps.jobs.finish(task.job_id, JobStatus.FAILED, error)
            raise
