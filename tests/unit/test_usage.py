"""Usage on a real redis-server: counted where the work is recorded, once, by tenant, lane and UTC day; read through
GET /v1/usage (the caller's own) and `captioner keys usage` (an operator's, every tenant's)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import redis

from api import create_app
from cli.main import main
from common.bulk_schemas import BulkRequest, ChunkFiles
from common.bulk_scripts import LEASES_KEY, READY_KEY
from common.bulkstore import BulkStore
from common.errors import InvalidRequest, ValidationFailed
from common.jobstore import JobStore
from common.schemas import ErrorBody, GenerationOptions, ImageResult, JobStatus
from common.settings import Settings
from common.tenants import TenantStore
from common.usage import DEFAULT_RETENTION_DAYS, ModelWork, UsageCounts, UsageStamp, UsageStore, parse_range, usage_key
from tests.conftest import api_client

TODAY = datetime.now(UTC).date()


def tenant() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def today(settings: Settings, who: str) -> tuple[UsageCounts, UsageCounts]:
    """(interactive, bulk) counts of `who` today."""
    report = UsageStore.from_url(settings.redis_url).report(who, TODAY, TODAY)
    return report.data[0].interactive, report.data[0].bulk


def new_job(jobs: JobStore, who: str, images: int) -> str:
    job_id = uuid.uuid4().hex
    jobs.create(job_id, images, None, GenerationOptions(), tenant=who)
    return job_id


def test_a_job_and_its_images_are_counted_once_even_when_its_results_come_twice(settings: Settings) -> None:
    jobs = JobStore.from_url(settings.redis_url, 600)
    mine, other = tenant(), tenant()
    job_id = new_job(jobs, mine, 3)
    jobs.mark_running(job_id)
    assert jobs.record_result(job_id, ImageResult(index=0, caption="a red circle"), work=ModelWork(5, 0.25))[0]
    failed = ImageResult(index=1, error=ErrorBody(code="invalid_image", message="no"))
    assert jobs.record_result(job_id, failed)[0]
    # The task ran again (a redelivery): its results are not recorded, and not counted.
    assert not jobs.record_result(job_id, ImageResult(index=0, caption="again"), work=ModelWork(7, 1.0))[0]
    assert not jobs.record_result(job_id, failed)[0]
    interactive, bulk = today(settings, mine)
    assert interactive == UsageCounts(jobs=1, images_captioned=1, images_failed=1, tokens_generated=5,
                                      model_seconds=0.25)
    assert bulk == UsageCounts()
    assert today(settings, other) == (UsageCounts(), UsageCounts())  # tenants apart


def test_a_result_after_the_job_ended_is_not_counted(settings: Settings) -> None:
    jobs = JobStore.from_url(settings.redis_url, 600)
    mine = tenant()
    job_id = new_job(jobs, mine, 2)
    jobs.finish(job_id, JobStatus.CANCELED)
    assert not jobs.record_result(job_id, ImageResult(index=0, caption="late"), work=ModelWork(3, 0.1))[0]
    assert today(settings, mine)[0] == UsageCounts(jobs=1)


def test_a_bulk_run_and_its_chunks_are_counted_once_in_the_bulk_lane(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = BulkStore(client, ttl_seconds=600, lease_s=60, window=4)
    mine = tenant()
    bulk_id = uuid.uuid4().hex
    try:
        store.create(bulk_id, BulkRequest.model_validate({"source": {"bucket": "photos"}}), tenant=mine)
        files = ChunkFiles(index=0, first_key="a", last_key="z", results_key="r", errors_key="e", captioned=7,
                           failed=2, skipped=3)
        assert store.complete_chunk(bulk_id, files, 12, ModelWork(70, 1.5))
        assert not store.complete_chunk(bulk_id, files, 12, ModelWork(70, 1.5))  # the chunk ran twice
    finally:
        client.delete(READY_KEY, LEASES_KEY)  # no worker here takes this job's work
    interactive, bulk = today(settings, mine)
    assert interactive == UsageCounts()
    assert bulk == UsageCounts(jobs=1, images_captioned=7, images_failed=2, tokens_generated=70, model_seconds=1.5)


def test_a_day_s_counts_expire_the_retention_after_that_day(settings: Settings) -> None:
    jobs = JobStore.from_url(settings.redis_url, 600, usage_retention_days=3)
    mine = tenant()
    new_job(jobs, mine, 1)
    ttl = redis.Redis.from_url(settings.redis_url).ttl(usage_key(mine, TODAY.isoformat()))
    assert 3 * 86_400 < ttl <= 4 * 86_400
    assert UsageStamp.at(86_400 * 2 + 5, 3) == UsageStamp("1970-01-03", 86_400 * 6)
    assert Settings.model_fields["usage_retention_days"].default == DEFAULT_RETENTION_DAYS  # one default


def test_a_report_has_every_day_of_its_range_and_their_total(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    mine = tenant()
    first = date(2026, 3, 1)
    client.hset(usage_key(mine, "2026-03-01"), mapping={"interactive:jobs": 2, "interactive:model_us": 1_500_000})
    client.hset(usage_key(mine, "2026-03-03"), mapping={"bulk:images_captioned": 9, "interactive:jobs": 1})
    report = UsageStore(client).report(mine, first, first + timedelta(days=3))
    assert [day.date.isoformat() for day in report.data] == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    assert report.data[1].interactive == report.data[1].bulk == UsageCounts()
    assert report.total.interactive == UsageCounts(jobs=3, model_seconds=1.5)
    assert report.total.bulk == UsageCounts(images_captioned=9)


def test_ranges_default_to_the_last_30_days_and_are_checked() -> None:
    day = date(2026, 12, 6)
    assert parse_range(None, None, today=day) == (date(2026, 11, 7), day)
    assert parse_range("2026-12-01", None, today=day) == (date(2026, 12, 1), day)
    assert parse_range(None, "2026-01-31", today=day) == (date(2026, 1, 2), date(2026, 1, 31))
    assert parse_range("2025-12-06", "2026-12-06") == (date(2025, 12, 6), day)  # 366 days
    for start, end in [("2026-1-5", None), ("yesterday", None), (None, "2026-02-30"), ("20261206", None)]:
        with pytest.raises(InvalidRequest):
            parse_range(start, end, today=day)
    for start, end in [("2026-12-07", "2026-12-06"), ("2025-12-05", "2026-12-06")]:
        with pytest.raises(ValidationFailed):
            parse_range(start, end, today=day)


def test_the_api_answers_the_caller_s_own_usage_only(settings: Settings) -> None:
    keys = TenantStore.from_url(settings.redis_url)
    mine, theirs = keys.create_key(tenant()), keys.create_key(tenant())
    jobs = JobStore.from_url(settings.redis_url, 600)
    new_job(jobs, mine.record.tenant, 1)
    client = api_client(settings, mine.key)
    body = client.get("/v1/usage").get_json()
    assert body["tenant"] == mine.record.tenant
    assert body["end"] == TODAY.isoformat() and len(body["data"]) == 30
    assert body["data"][-1] == {"date": TODAY.isoformat(), "interactive": {
        "jobs": 1, "images_captioned": 0, "images_failed": 0, "tokens_generated": 0, "model_seconds": 0.0,
    }, "bulk": {"jobs": 0, "images_captioned": 0, "images_failed": 0, "tokens_generated": 0, "model_seconds": 0.0}}
    assert body["total"]["interactive"]["jobs"] == 1
    ranged = client.get("/v1/usage", query_string={"start": TODAY.isoformat(), "end": TODAY.isoformat()})
    assert [day["date"] for day in ranged.get_json()["data"]] == [TODAY.isoformat()]
    other = api_client(settings, theirs.key).get("/v1/usage").get_json()
    assert other["tenant"] == theirs.record.tenant and other["total"]["interactive"]["jobs"] == 0


@pytest.mark.parametrize(("query", "status", "code"), [
    ({"start": "2026-13-01"}, 400, "invalid_request"),
    ({"end": "soon"}, 400, "invalid_request"),
    ({"start": "2026-12-07", "end": "2026-12-06"}, 422, "validation_error"),
    ({"start": "2020-01-01", "end": "2026-12-06"}, 422, "validation_error"),
])
def test_bad_ranges_get_the_usual_error_body(settings: Settings, query: dict[str, str], status: int,
                                             code: str) -> None:
    response = api_client(settings).get("/v1/usage", query_string=query)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_usage_needs_a_key(settings: Settings) -> None:
    api_client(settings)  # a key exists, so the app starts
    response = create_app(settings).test_client().get("/v1/usage")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def test_the_cli_shows_one_tenant_or_every_tenant(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    keys = TenantStore.from_url(settings.redis_url)
    mine, idle = keys.create_key(tenant()), keys.create_key(tenant())
    jobs = JobStore.from_url(settings.redis_url, 600)
    job_id = new_job(jobs, mine.record.tenant, 1)
    jobs.record_result(job_id, ImageResult(index=0, caption="x"))

    assert main(["keys", "usage", "--tenant", mine.record.tenant, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["tenant"] == mine.record.tenant
    assert report["total"]["interactive"]["jobs"] == report["total"]["interactive"]["images_captioned"] == 1

    assert main(["keys", "usage", "--json", "--start", TODAY.isoformat()]) == 0
    reports = {r["tenant"]: r for r in json.loads(capsys.readouterr().out)}
    assert {mine.record.tenant, idle.record.tenant, "local"} <= set(reports)
    assert reports[idle.record.tenant]["total"]["interactive"]["jobs"] == 0

    assert main(["keys", "usage"]) == 0
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines() if line.startswith(mine.record.tenant)]
    assert [row[1:5] for row in rows] == [[TODAY.isoformat(), "interactive", "1", "1"],
                                          ["total", "interactive", "1", "1"]]
    assert idle.record.tenant not in table  # no usage, no rows

    assert main(["keys", "usage", "--start", "2026-12-07", "--end", "2026-12-06"]) == 2
    assert "before start" in capsys.readouterr().err
