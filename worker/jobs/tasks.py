"""Celery tasks, thin like views: validate the message, hand it to the pipeline."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from celery import Celery, Task
from celery.exceptions import Reject
from redis.exceptions import RedisError

from common.errors import InternalError, ServiceUnavailable, WorkerFailure
from common.queue import CAPTION_JOB_TASK
from common.schemas import CaptionTask, ErrorBody, JobStatus
from worker.jobs.pipeline import PipelineDeps, run_caption_task

log = logging.getLogger(__name__)

# Outages of Redis or S3 are retried with backoff; the job fails only when they outlast the retries.
TRANSIENT_ERRORS = (RedisError, BotoCoreError, ClientError)
MAX_RETRIES = 6


def register_tasks(app: Celery, deps: PipelineDeps) -> None:
    """Bind the tasks to this process's pipeline (batcher, decoding, stores)."""

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
            run_caption_task(task, deps)
        except WorkerFailure as failure:
            # This worker is broken, not the job: the message goes back to the queue at once, for another worker.
            log.warning("job %s goes back to the queue: %s", task.job_id, failure.message)
            raise Reject(failure.message, requeue=True) from failure
        except TRANSIENT_ERRORS as exc:
            if self.request.retries >= MAX_RETRIES:
                unavailable = ServiceUnavailable(f"Storage stayed unavailable: {exc}")
                deps.jobs.finish(task.job_id, JobStatus.FAILED, ErrorBody.of(unavailable))
            raise
        except Exception:
            # Celery acks a task that raised; fail its job rather than leave it `running` for ever.
            log.exception("job %s failed unexpectedly", task.job_id)
            error = InternalError("The worker failed on this job; see its logs.")
            deps.jobs.finish(task.job_id, JobStatus.FAILED, ErrorBody.of(error))
            raise
