"""Log lines: the bound fields on every record, the JSON and plain formats, gunicorn's access lines, a batch's fields,
and the X-Request-ID rules at the API's edge."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping

import pytest

from api.request_ids import MAX_LENGTH, chosen
from common import log_context
from common.fairqueue import FairQueue
from common.log_setup import AccessFields, JsonLines, PlainLines, logging_config
from common.settings import Settings
from tests.conftest import TEST_TENANT, api_client
from worker.jobs.batching import DynamicBatcher


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger whose records reach a stream through the context filter, as the root's do once set up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(log_context.ContextFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_a_json_line_has_the_bound_fields_and_the_message(lines: tuple[logging.Logger, io.StringIO,
                                                                        logging.Handler]) -> None:
    logger, stream, handler = lines
    handler.setFormatter(JsonLines())
    log_context.set_process_fields(worker="captioner-1@host")
    with log_context.bound(request_id="req-1", tenant="acme", job_id="j1"):
        logger.info("captioned a batch of %d «%s»", 3, "un chat")
    logger.info("outside")
    assert "«un chat»" in stream.getvalue()  # not escaped: a grep for a prompt finds it
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "captioned a batch of 3 «un chat»" and first["level"] == "INFO"
    assert first["logger"] == "tests.logs" and first["time"].endswith("+00:00")
    assert (first["request_id"], first["tenant"], first["job_id"], first["worker"]) == ("req-1", "acme", "j1",
                                                                                      "captioner-1@host")
    assert "request_id" not in second and second["worker"] == "captioner-1@host"  # unbound when the block ended
    log_context._process.clear()


def test_an_exception_stays_inside_its_json_line(lines: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = lines
    handler.setFormatter(JsonLines())
    try:
        raise ValueError("bad\nimage")
    except ValueError:
        logger.exception("job failed")
    (line,) = stream.getvalue().splitlines()
    assert "Traceback" in json.loads(line)["exc_info"]


def test_a_plain_line_shows_the_fields_after_the_message(lines: tuple[logging.Logger, io.StringIO,
                                                                       logging.Handler]) -> None:
    logger, stream, handler = lines
    handler.setFormatter(PlainLines())
    with log_context.bound(job_id="j1", request_id="r1"), log_context.bound(batch_id="b1", job_ids=["j1", "j2"]):
        logger.warning("slow")
    logger.warning("alone")
    first, second = stream.getvalue().splitlines()
    assert first.endswith(" WARNING tests.logs: slow [request_id=r1 job_id=j1 batch_id=b1 job_ids=j1,j2]")
    assert second.endswith(" WARNING tests.logs: alone")


def test_fields_bound_on_one_thread_stay_on_it() -> None:
    seen: list[Mapping[str, log_context.Value]] = []
    with log_context.bound(job_id="mine"):
        other = threading.Thread(target=lambda: seen.append(log_context.current()))
        other.start()
        other.join()
        assert log_context.current() == {"job_id": "mine"}
    assert seen == [{}] and log_context.current() == {}


def test_a_batch_lists_its_jobs_only_while_they_are_few() -> None:
    few = [{"job_id": "b"}, {"job_id": "a"}, {"job_id": "a"}, {"bulk_id": "k"}, {}]
    assert log_context.batch_fields("x", few) == {"batch_id": "x", "job_ids": ["a", "b"], "bulk_ids": ["k"]}
    many = [{"job_id": str(i)} for i in range(log_context.BATCH_IDS_LISTED + 1)]
    assert log_context.batch_fields("y", many) == {"batch_id": "y"}


@pytest.mark.parametrize("ahead", [False, True])
def test_a_batch_runs_under_its_id_and_its_jobs_ids(ahead: bool) -> None:
    seen: list[Mapping[str, log_context.Value]] = []

    def run(key: str, items: list[int]) -> list[int]:
        seen.append(log_context.current())
        return items

    def prepare(key: str, items: list[int]) -> Callable[[], list[int]]:
        seen.append(log_context.current())  # on the batching thread; the batch runs on the model's
        return lambda: run(key, items)

    batcher: DynamicBatcher[str, int, int] = DynamicBatcher(
        run, max_batch_size=8, max_wait_s=0.05, prepare_batch=prepare if ahead else None).start()
    try:
        futures = []
        for job in ("j2", "j1"):
            with log_context.bound(job_id=job, tenant="acme"):
                futures.append(batcher.submit("k", 1))
        assert [f.result(5) for f in futures] == [1, 1]
    finally:
        batcher.stop(5)
    fields, *same = seen
    assert same == ([fields] if ahead else [])  # prepared and run under one batch id
    assert fields["job_ids"] == ["j1", "j2"] and len(str(fields["batch_id"])) == 12
    assert "job_id" not in fields  # the batching thread's own context: the batch's fields alone


def test_gunicorn_access_lines_carry_the_answered_request_id() -> None:
    atoms = {"m": "POST", "U": "/v1/jobs", "s": "202", "D": 12_345, "{x-request-id}o": "abc-1"}
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "%(m)s %(U)s", (atoms,), None)
    assert AccessFields().filter(record)
    assert json.loads(JsonLines().format(record)) | {"time": None} == {
        "time": None, "level": "INFO", "logger": "gunicorn.access", "message": "POST /v1/jobs",
        "request_id": "abc-1", "http_method": "POST", "http_path": "/v1/jobs", "http_status": 202,
        "duration_ms": 12.35,
    }


def test_the_configuration_sends_gunicorn_through_the_root_in_either_format() -> None:
    for log_format in ("json", "plain"):
        config = logging_config(log_format)
        assert config["handlers"]["stderr"]["formatter"] == log_format
        assert all(logger["handlers"] == [] and logger["propagate"] for logger in config["loggers"].values())


@pytest.mark.parametrize("given", ["0af7651916cd43dd8448eb211c80319c", "req-1", "Root=1-5759e988-bd862e3f",
                                   "a" * MAX_LENGTH, "trace.id:42/7+x_y"])
def test_a_sane_request_id_is_kept(given: str) -> None:
    assert chosen(given) == (given, False)


@pytest.mark.parametrize("given", ["", "a" * (MAX_LENGTH + 1), "two words", "new\nline", 'quo"te', "é", "a\x00"])
def test_anything_else_gets_a_fresh_one(given: str) -> None:
    fresh, refused = chosen(given)
    assert refused and fresh != given and len(fresh) == 32


def test_no_header_gets_a_fresh_one_silently() -> None:
    fresh, refused = chosen(None)
    assert not refused and len(fresh) == 32 and chosen(None)[0] != fresh


def test_every_answer_has_a_request_id_errors_too(settings: Settings) -> None:
    client = api_client(settings)
    given = client.get("/v1/jobs/0123456789abcdef0123456789abcdef", headers={"X-Request-ID": "mine-1"})
    assert given.status_code == 404 and given.headers["X-Request-ID"] == "mine-1"
    refused = client.get("/healthz", headers={"X-Request-ID": "not sane"})
    assert refused.status_code == 200 and len(refused.headers["X-Request-ID"]) == 32
    unauthorized = api_client(settings, key="cap_wrong").get("/v1/jobs")
    assert unauthorized.status_code == 401 and len(unauthorized.headers["X-Request-ID"]) == 32
    assert client.get("/no/such/page").headers["X-Request-ID"] != unauthorized.headers["X-Request-ID"]


def test_the_request_id_travels_with_the_job(settings: Settings) -> None:
    client = api_client(settings)
    response = client.post("/v1/jobs", json={"images": ["https://images.example.com/cat.jpg"]},
                           headers={"X-Request-ID": "req-travels"})
    assert response.status_code == 202 and response.headers["X-Request-ID"] == "req-travels"
    job_id = response.get_json()["id"]
    tasks = [t for t in FairQueue.from_url(settings.redis_url, 60).waiting(TEST_TENANT) if t.job_id == job_id]
    assert [t.request_id for t in tasks] == ["req-travels"]
