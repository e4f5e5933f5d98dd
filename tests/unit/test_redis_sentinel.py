"""Redis Sentinel on a real group (a primary, a replica, three sentinels): every client of the service reaches the
primary the sentinels name, with REDIS_URL's database; WAIT counts the writes of a whole submission; the API's 202
with CAPTIONER_REDIS_WAIT_REPLICAS. tests/integration/test_redis_sentinel.py kills the primary under load."""

from __future__ import annotations

import io
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kombu.connection import Connection
from limits import parse
from limits.strategies import SlidingWindowCounterRateLimiter

from api.ratelimit import _storage
from common.broker import SentinelChannel, SentinelTransport, Transport, broker_url
from common.queue import INTERACTIVE_QUEUE, make_celery
from common.redis_client import service_redis
from common.replication import ReplicaWait
from common.settings import Settings
from tests.conftest import api_client
from tests.fixtures.shapes import Scene, render
from tests.sentinels import SentinelGroup, sentinel_group

DB = 5  # not the default, to show that REDIS_URL's database applies


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path_factory.mktemp("sentinel")) as started:
        yield started


@pytest.fixture
def on_sentinels(group: SentinelGroup, make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings on the group: REDIS_URL names the primary too, for the tests' own key, but the service asks the
    sentinels."""

    def make(**overrides: object) -> Settings:
        return make_settings(redis_url=f"redis://127.0.0.1:{group.primary_port()}/{DB}",
                             redis_sentinels=group.addresses, **overrides)

    return make


def primary(group: SentinelGroup) -> redis.Redis:
    port = group.primary_port()
    assert port is not None
    return redis.Redis(host="127.0.0.1", port=port, db=DB, decode_responses=True)


def png() -> bytes:
    buffer = io.BytesIO()
    render(Scene("circle", "red", "white"), (32, 32)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_stores_reach_the_primary_through_the_sentinels_with_redis_url_s_database(
    group: SentinelGroup, make_settings: Callable[..., Settings]
) -> None:
    # REDIS_URL's host is nowhere: only its database is used.
    settings = make_settings(redis_url=f"redis://nowhere.invalid:1/{DB}", redis_sentinels=group.addresses)
    client = service_redis(settings)
    client.set("sentinel-test", "stored")
    assert primary(group).get("sentinel-test") == "stored"
    ride_out = service_redis(settings, ride_out_outages=True)
    assert ride_out.get("sentinel-test") == "stored"


def test_a_connection_that_broke_asks_the_sentinels_again_when_it_reconnects(
    group: SentinelGroup, make_settings: Callable[..., Settings]
) -> None:
    """As after a failover: a retried command reconnects its own connection, which must go to the primary the
    sentinels name now, not to the address it had (redis/redis-py#3874)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone = probe.getsockname()[1]  # nothing listens there: the old primary
    client = service_redis(make_settings(redis_url=f"redis://x:1/{DB}", redis_sentinels=group.addresses),
                           ride_out_outages=True)
    connection = client.connection_pool.get_connection()
    try:
        connection.disconnect()
        connection.port = gone
        connection.send_command("PING")  # what a retry does with the connection whose command failed
        assert connection.read_response() == "PONG"
        assert connection.port == group.primary_port()
    finally:
        client.connection_pool.release(connection)


def test_the_broker_runs_on_kombu_s_sentinel_transport_with_one_client_per_channel(
    group: SentinelGroup, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=f"redis://nowhere.invalid:1/{DB}", redis_sentinels=group.addresses)
    with make_celery(settings).connection_for_write() as connection:
        assert isinstance(connection.transport, SentinelTransport)
        channel = connection.default_channel
        assert isinstance(channel, SentinelChannel)
        assert channel._create_client() is channel._create_client()
        queue = connection.SimpleQueue(f"{INTERACTIVE_QUEUE}.sentinel-test")
        queue.put({"hello": "sentinel"})
        assert primary(group).llen(f"{INTERACTIVE_QUEUE}.sentinel-test") == 1  # on the primary, in REDIS_URL's db
        message = queue.get(timeout=5)
        assert message.payload == {"hello": "sentinel"}
        message.ack()
        queue.close()


def test_the_rate_limit_counts_on_the_primary(group: SentinelGroup, on_sentinels: Callable[..., Settings]) -> None:
    limiter = SlidingWindowCounterRateLimiter(_storage(on_sentinels()))
    rate = parse("2/minute")
    assert [limiter.hit(rate, "sentinel-test", "owner") for _ in range(3)] == [True, True, False]
    assert primary(group).keys("LIMITS:*sentinel-test*")


def test_the_broker_url_carries_redis_url_s_database_and_password(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://:p%40ss@ignored:6379/3", redis_sentinels="10.0.0.1,10.0.0.2:26380")
    url = broker_url(settings)
    assert url == "sentinel://:p%40ss@10.0.0.1:26379/3;sentinel://:p%40ss@10.0.0.2:26380/3"
    parsed = Connection(url, transport=SentinelTransport)
    assert parsed.password == "p@ss" and parsed.virtual_host == "3"
    assert [alt.split("@")[1] for alt in parsed.alt] == ["10.0.0.1:26379/3", "10.0.0.2:26380/3"]


def test_without_sentinels_redis_url_is_used_as_it_is(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert broker_url(settings) == settings.redis_url
    client = service_redis(settings)
    assert type(client.connection_pool) is redis.ConnectionPool and client.ping()
    with make_celery(settings).connection_for_write() as connection:
        assert type(connection.transport) is Transport


def test_wait_counts_the_turn_written_on_another_connection(group: SentinelGroup) -> None:
    """WAIT counts only its own connection's writes: a bare WAIT after another connection's write says the replica
    has it at once, even from a replica that is stopped. ReplicaWait's marker write makes it wait for it."""
    elsewhere, waiting = primary(group), primary(group)
    waiting.ping()
    wait = ReplicaWait(waiting, replicas=1, timeout_ms=300)
    assert wait.wait() == 1
    group.replica.signal(signal.SIGSTOP)
    try:
        elsewhere.lpush("sentinel-test-turns", "a turn")
        assert waiting.wait(1, 300) == 1  # what a bare WAIT would have answered
        started = time.monotonic()
        assert wait.wait() == 0
        assert time.monotonic() - started >= 0.3
    finally:
        group.replica.signal(signal.SIGCONT)
    started = time.monotonic()
    assert wait.wait() == 1
    assert time.monotonic() - started < 0.3
    assert ReplicaWait(waiting, replicas=0, timeout_ms=300).wait() == 0  # off: no round trip at all


def test_a_submission_waits_for_the_replica_and_is_accepted_without_it(
    group: SentinelGroup, on_sentinels: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    client = api_client(on_sentinels(redis_wait_replicas=1, redis_wait_timeout_ms=300))
    started = time.monotonic()
    answer = client.post("/v1/jobs", data={"images": (io.BytesIO(png()), "a.png")})
    assert answer.status_code == 202, answer.get_json()
    assert time.monotonic() - started < 0.3
    group.replica.signal(signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="api.jobs"):
            started = time.monotonic()
            answer = client.post("/v1/jobs", data={"images": (io.BytesIO(png()), "a.png")})
            waited_s = time.monotonic() - started
    finally:
        group.replica.signal(signal.SIGCONT)
    assert answer.status_code == 202, answer.get_json()
    assert waited_s >= 0.3
    job_id = answer.get_json()["id"]
    assert f"job {job_id} accepted on 0 of the 1 Redis replicas" in caplog.text
    assert primary(group).exists(f"captioner:job:{job_id}")


def test_sentinels_out_of_reach_answer_503(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = probe.getsockname()[1]
    client = api_client(make_settings(redis_sentinels=f"127.0.0.1:{refused}"))
    started = time.monotonic()
    answer = client.post("/v1/jobs", data={"images": (io.BytesIO(png()), "a.png")})
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0, answer.get_json()
    assert time.monotonic() - started < 2
