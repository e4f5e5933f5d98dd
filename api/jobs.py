"""/v1/jobs: submit a captioning job, read it, cancel it, delete it."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, Response, jsonify, request, url_for
from redis.exceptions import RedisError

from api import request_ids
from api.auth import Caller, caller
from api.idempotency import Submitted, idempotency_key, job_fingerprint, submit_once
from api.intake import ParsedJob, parse_job_request
from api.services import ApiServices, services
from common.errors import (
    BacklogFull,
    InvalidRequest,
    JobNotFound,
    QueueUnavailable,
    ServiceUnavailable,
    TooManyInFlight,
)
from common.idempotency import Replay
from common.image_strings import RemoteImage
from common.outbound import check_url
from common.queue import send_turn
from common.schemas import CaptionTask, ErrorBody, ImageRef, Job, JobStatus, WebhookSubscription, job_links

log = logging.getLogger(__name__)
blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def upload_key(job_id: str, index: int) -> str:
    return f"uploads/{job_id}/{index}"


@blueprint.post("")
def create_job() -> tuple[Response, int, dict[str, str]]:
    """Queue a job: 202 with the job. With ?wait=N (seconds, at most 30) the answer comes when the job has ended
    (200, with its results) or N seconds have passed (202): one request instead of a submit and a read. With an
    Idempotency-Key used before, the first job again (api/idempotency.py)."""
    svc = services()
    who = caller()
    wait_s = _wait_seconds()  # checked first: a bad value must not leave a stored, queued job behind
    idempotency_key()  # checked before the body is read, too
    parsed = parse_job_request(request, svc.settings)
    if parsed.request.webhook is not None:
        check_webhook(svc, parsed.request.webhook)

    def replay(first: Replay) -> Submitted:
        job = load_job(first.record_id)
        location = url_for("jobs.get_job", job_id=job.id)
        return Submitted(job.id, present(job).model_dump(mode="json"), first.status_code, location)

    return submit_once(who.tenant, lambda: job_fingerprint(parsed), lambda: _submitted(svc, who, parsed, wait_s),
                       replay)


def _submitted(svc: ApiServices, who: Caller, parsed: ParsedJob, wait_s: float) -> Submitted:
    job = submit_job(svc, who, parsed, wait_s)
    location = url_for("jobs.get_job", job_id=job.id)
    return Submitted(job.id, present(job).model_dump(mode="json"), 200 if job.status.is_terminal() else 202, location)


def submit_job(svc: ApiServices, who: Caller, parsed: ParsedJob, wait_s: float, long_poll: bool = True) -> Job:
    """Admit, store and queue a job; then wait up to `wait_s` for its end (a `long_poll` no longer once the process
    stops). The job as it is then."""
    job_id = uuid.uuid4().hex
    _admit(svc, who, job_id, len(parsed.images))
    s3_keys: list[str] = []  # what this job has put in S3 so far
    try:
        refs, small_uploads = _store_images(svc, job_id, parsed, s3_keys)
        task = CaptionTask(job_id=job_id, images=refs, prompt=parsed.request.prompt,
                           options=parsed.request.options, tenant=who.tenant, request_id=request_ids.current())
        job = svc.jobs.create(
            job_id, len(refs), parsed.request.prompt, parsed.request.options, parsed.request.webhook,
            tenant=who.tenant, owner=who.owner, uploads=small_uploads, s3_keys=s3_keys,
            enqueue=lambda pipe: svc.queue.push(who.tenant, task, pipe),
        )
    except (RedisError, ServiceUnavailable) as exc:
        _release(svc, who, job_id)
        _forget_uploads(svc, job_id, s3_keys)
        if isinstance(exc, ServiceUnavailable):
            raise
        raise ServiceUnavailable("The job store is unavailable; try again shortly.") from exc
    try:
        send_turn(svc.celery)
    except Exception as exc:  # kombu raises many types; any failure to queue means the job cannot run
        log.error("could not queue job %s: %s", job_id, exc)
        try:
            svc.jobs.finish(job_id, JobStatus.FAILED, ErrorBody.of(QueueUnavailable(str(exc))))
        except RedisError as also:  # Redis went away between the two: the job runs on a turn sent after it returns
            log.warning("job %s, answered 503, stays queued: %s", job_id, also)
        raise ServiceUnavailable("The job queue is unavailable; try again shortly.") from exc
    _wait_for_replicas(svc, job_id)
    return _after_waiting(job, wait_s, long_poll)


def _wait_for_replicas(svc: ApiServices, job_id: str) -> None:
    """With CAPTIONER_REDIS_WAIT_REPLICAS, the job and its turn on that many replicas before its 202, so that a
    failover after the primary's host is lost keeps it. Fewer in time (a replica down, or none left after a
    failover): the job is as safe as on a lone Redis, so it is accepted, and the shortfall logged; refusing would
    make one lost replica stop every submission, and a retry would queue the job twice."""
    wanted = svc.replicas.replicas
    if not wanted:
        return
    try:
        acknowledged = svc.replicas.wait()
    except RedisError as exc:  # the primary went away after storing and queueing the job: it may run, unseen
        log.warning("job %s, answered 503, may run: Redis went away before its replicas acknowledged it: %s",
                    job_id, exc)
        raise ServiceUnavailable("The job store is unavailable; try again shortly.") from exc
    if acknowledged < wanted:
        log.warning("job %s accepted on %d of the %d Redis replicas asked for (CAPTIONER_REDIS_WAIT_REPLICAS) within "
                    "%d ms: a failover now may lose it", job_id, acknowledged, wanted, svc.replicas.timeout_ms)


def _admit(svc: ApiServices, who: Caller, job_id: str, images: int) -> None:
    """Count the job against the caller's in-flight cap and the service's backlog, before anything is stored:
    a refused job leaves nothing behind."""
    cap = who.limits.max_in_flight or svc.settings.default_max_in_flight
    try:
        verdict = svc.admission.admit(who.owner, job_id, images, cap, svc.settings.max_backlog_images or None)
    except RedisError as exc:
        raise ServiceUnavailable("The job store is unavailable; try again shortly.") from exc
    if verdict == "in_flight":
        raise TooManyInFlight(f"This key has as many images queued or running as it may ({cap}); this job's "
                              f"{images} would pass that. Try again when some have finished.")
    if verdict == "backlog":
        raise BacklogFull("The service has more work waiting than it takes on; try again later.")


def _release(svc: ApiServices, who: Caller, job_id: str) -> None:
    with contextlib.suppress(RedisError):  # then the admission lapses when the key is next over its cap
        svc.admission.release(who.owner, job_id)


def _forget_uploads(svc: ApiServices, job_id: str, s3_keys: list[str]) -> None:
    """Queue for deletion what a job that was never created put in S3 (its record would have done so)."""
    try:
        svc.uploads.queue(s3_keys)
    except RedisError as exc:
        log.warning("uploads of job %s, never created, stay in S3: %s %s", job_id, s3_keys, exc)


def check_webhook(svc: ApiServices, webhook: WebhookSubscription) -> None:
    """Refuse, at submit time, a webhook that could never be signed or sent."""
    try:
        secret = svc.tenants.webhook_secret(caller().tenant)
    except RedisError as exc:
        raise ServiceUnavailable("The key store is unavailable; try again shortly.") from exc
    if secret is None:
        raise InvalidRequest("Webhooks are not enabled on this server (CAPTIONER_WEBHOOK_SECRET is not set).")
    check_url(webhook.url, svc.outbound)


def _store_images(
    svc: ApiServices, job_id: str, parsed: ParsedJob, s3_keys: list[str]
) -> tuple[list[ImageRef], dict[int, bytes]]:
    """Put large uploads in S3 (adding each key to `s3_keys` once stored) and return the small ones, which the job
    record keeps (the queue carries references, never bytes); URLs travel as they are."""
    refs: list[ImageRef] = []
    small: dict[int, bytes] = {}
    try:
        for index, image in enumerate(parsed.images):
            if isinstance(image, RemoteImage):
                refs.append(ImageRef(index=index, url=image.url))
                continue
            if len(image.data) <= svc.settings.redis_upload_max_bytes:
                small[index] = image.data
                refs.append(ImageRef(index=index, stored_with_job=True))
                continue
            key = upload_key(job_id, index)
            svc.storage.put(key, image.data, image.content_type)
            s3_keys.append(key)
            refs.append(ImageRef(index=index, key=key))
    except (BotoCoreError, ClientError) as exc:
        log.error("could not store images of job %s: %s", job_id, exc)
        raise ServiceUnavailable("Image storage is unavailable; try again shortly.") from exc
    return refs, small


MAX_WAIT_SECONDS = 30.0


@blueprint.get("")
def list_jobs() -> Response:
    """The caller's jobs, newest first: ?limit=N (1-100, default 20) and ?cursor= from the page before."""
    page = services().jobs.page(caller().tenant, page_limit(), request.args.get("cursor") or None)
    return page_response([present(job).model_dump(mode="json") for job in page.data], page.next_cursor)


def page_limit() -> int:
    raw = request.args.get("limit", "20")
    if not raw.isdigit():
        raise InvalidRequest(f"limit must be a whole number, not {raw!r}.")
    return int(raw)


def page_response(data: list[dict[str, Any]], next_cursor: str | None) -> Response:
    """A list endpoint's answer: its page, and the cursor of the next one (null on the last)."""
    return jsonify({"data": data, "has_more": next_cursor is not None, "next_cursor": next_cursor})


@blueprint.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """The job; with ?wait=N (seconds, at most 30), not before it has ended or N seconds have passed."""
    job = _after_waiting(load_job(job_id), _wait_seconds())
    return jsonify(present(job).model_dump(mode="json"))


def _after_waiting(job: Job, wait_s: float, long_poll: bool = True) -> Job:
    """The job once it has ended or `wait_s` seconds have passed, whichever comes first; a `long_poll` also once the
    process stops (api/waiting.py)."""
    if wait_s <= 0 or job.status.is_terminal():
        return job
    services().waiter.wait_for_end(job.id, services().jobs.status, wait_s, long_poll)
    return load_job(job.id)


def _wait_seconds() -> float:
    raw = request.args.get("wait", "0")
    try:
        wait_s = float(raw)
    except ValueError as exc:
        raise InvalidRequest(f"wait must be a number of seconds, not {raw!r}.") from exc
    if not 0 <= wait_s <= MAX_WAIT_SECONDS:
        raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS:.0f} seconds.")
    return wait_s


@blueprint.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job that has not ended; a job that has ended is answered as it is."""
    check_job_id(job_id)
    return jsonify(present(services().jobs.cancel(job_id, tenant=caller().tenant)).model_dump(mode="json"))


@blueprint.delete("/<job_id>")
def delete_job(job_id: str) -> tuple[str, int]:
    """Delete an ended job: its record, results, images (Redis and S3) and webhook log. 204; 409 before it ends."""
    svc = services()
    check_job_id(job_id)
    keys = svc.jobs.delete(job_id, tenant=caller().tenant)
    try:  # now rather than by the sweeper, so the images are gone when the client hears so
        svc.uploads.delete(keys)
    except (RedisError, BotoCoreError, ClientError) as exc:
        log.warning("the sweeper will delete job %s's uploads: %s", job_id, exc)
    return "", 204


def check_job_id(job_id: str) -> None:
    """JobNotFound for an id that could not be any job's, before the store is asked."""
    if not _JOB_ID.match(job_id):
        raise JobNotFound(f"No job with id {job_id!r}.")


def load_job(job_id: str) -> Job:
    """The caller's job, or JobNotFound: for ids that could not be a job's, that no job has, or that another
    tenant's job has, alike."""
    check_job_id(job_id)
    return services().jobs.get(job_id, tenant=caller().tenant)


def present(job: Job) -> Job:
    """The job with its links, absolute under CAPTIONER_PUBLIC_URL or this request's host."""
    base = services().settings.public_url or request.host_url
    return job.model_copy(update={"urls": job_links(job.id, base)})
