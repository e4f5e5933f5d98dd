"""Celery tasks, thin like views: take the turn's job (common/fairqueue.py), hand it to the pipeline. A job a worker
died holding runs alone once one more death would fail it: in batches of its own, one such job at a time on this
worker, named as the worker's suspect while it runs, so that if this worker dies too, it alone is blamed. Until then
it runs as any job does: most deaths are not the job's doing (an OOM kill, a lost host), and running each job of a
dead worker alone, one after another, held them for tens of seconds (the chaos test)."""

from __future__ import annotations

import logging
import threading
import time

from botocore.exceptions import BotoCoreError, ClientError
from celery import Celery, Task
from celery.exceptions import Reject
from redis.exceptions import RedisError

from common import log_context
from common.errors import InternalError, ServiceUnavailable, WorkerFailure
from common.fairqueue import FairQueue
from common.queue import CAPTION_JOB_TASK
from common.schemas import CaptionTask, ErrorBody, JobStatus
from worker.jobs.pipeline import PipelineDeps, run_caption_task

log = logging.getLogger(__name__)

# Outages of Redis or S3 are retried with backoff (1, 2, 4 ... 32 s: a minute in all); the job fails only when they
# outlast the retries. Without jitter, which would make that minute anywhere from none of it to all of it.
TRANSIENT_ERRORS = (RedisError, BotoCoreError, ClientError)
MAX_RETRIES = 6


def register_tasks(
    app: Celery, deps: PipelineDeps, queue: FairQueue, worker: str, stopping: threading.Event
) -> None:
    """Bind the tasks to this process's pipeline (batcher, decoding, stores), the jobs' fair queue, this worker's
    name (recorded as the holder of the turns it runs, common/fairqueue.py) and the event set when it stops."""
    suspects = threading.Lock()  # one blamed job at a time

    @app.task(  # type: ignore[untyped-decorator]
        name=CAPTION_JOB_TASK,
        bind=True,
        autoretry_for=TRANSIENT_ERRORS,
        max_retries=MAX_RETRIES,
        retry_backoff=True,
        retry_backoff_max=60,
        retry_jitter=False,
    )
    def caption_job(self: Task) -> None:
        """A turn: run the job it takes."""
        turn = str(self.request.id)
        if stopping.is_set():  # a message the broker handed over before the worker stopped consuming
            raise Reject("this worker is stopping", requeue=True)
        taken = queue.take(turn, worker)
        if taken is None:
            return  # every waiting job has been taken by other turns (a redelivered one took this one's)
        task = taken.task  # its lines name the job, its tenant and the request that made it
        with log_context.bound(job_id=task.job_id, tenant=task.tenant, request_id=task.request_id):
            try:
                if taken.deaths < max(1, queue.max_attempts - 1):
                    _run(taken.task, deps, retries=self.request.retries)
                else:
                    with suspects:
                        log.warning("job %s runs alone: a worker died holding it (%d times)", taken.task.job_id,
                                    taken.deaths)
                        queue.suspect(worker, turn)
                        try:
                            _run(taken.task, deps, retries=self.request.retries, alone=True)
                        finally:
                            queue.suspect(worker, None)
            except WorkerFailure as failure:
                # This worker is broken or stopping, not the job: the turn goes back to the queue at once, keeping its
                # job, for another worker to caption the images not yet recorded.
                log.warning("job %s goes back to the queue: %s", taken.task.job_id, failure.message)
                queue.give_back(turn)
                raise Reject(failure.message, requeue=True) from failure
            queue.done(turn)


def _run(task: CaptionTask, deps: PipelineDeps, *, retries: int, alone: bool = False) -> None:
    """Run a job; raise only for the turn to be run again (a retry, or a WorkerFailure: another worker), having
    failed the job for anything else."""
    started = time.monotonic()
    try:
        status = run_caption_task(task, deps, alone)
        # One line per job run, so that every job has a line naming it, its tenant and its request id.
        log.info("job %s: %d images, %s after %.0f ms", task.job_id, len(task.images),
                 status.value if status is not None else "gone", (time.monotonic() - started) * 1000)
    except WorkerFailure:
        raise  # given back by the task
    except TRANSIENT_ERRORS as exc:
        if retries < MAX_RETRIES:
            raise  # retried, the same turn taking the same job
        unavailable = ServiceUnavailable(f"Storage stayed unavailable: {exc}")
        deps.jobs.finish(task.job_id, JobStatus.FAILED, ErrorBody.of(unavailable))
        log.error("job %s failed: %s", task.job_id, unavailable.message)
    except Exception:
        # Fail its job rather than leave it `running` for ever.
        log.exception("job %s failed unexpectedly", task.job_id)
        error = InternalError("The worker failed on this job; see its logs.")
        deps.jobs.finish(task.job_id, JobStatus.FAILED, ErrorBody.of(error))
