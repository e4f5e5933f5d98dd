"""Every Redis client of the service is built here: the timeouts that keep a caller from hanging on a Redis that
stopped answering, and, in the workers, the retries that carry work in hand across a short Redis outage.

The API fails fast: a request that meets a dead or silent Redis gets 503 within one timeout (api/errors.py), and
its commands are never sent twice (a retried MULTI could store a job twice). A worker's commands are retried with
backoff for about RIDE_OUT_S instead: a job in the middle of its batch waits for Redis and goes on, rather than
failing back to a broker that is down too. Commands that may run twice are idempotent (design.md, "Reliability
rules"). A connection that Redis closed (a restart) is found and replaced when it is taken from the pool, so a
restart costs no request an error once Redis answers again.

With REDIS_SENTINELS set, a client asks the sentinels where the primary is whenever it opens a connection
(redis-py's Sentinel), so the same timeouts and retries carry it across a failover: the API's requests fail fast
until the sentinels name the promoted replica, a worker's commands wait for it.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from common.settings import Settings

# Connect and read timeout of every command, unless CAPTIONER_REDIS_TIMEOUT_SECONDS says otherwise: Redis answers
# in microseconds, so this only bounds how long a stopped (SIGSTOP, a hung host) or unreachable Redis holds a caller.
DEFAULT_TIMEOUT_S = 5.0
# How long a worker's command keeps trying through an outage (a restart, the append-only file loading).
RIDE_OUT_S = 60.0
# The backoff between a worker's tries: 0.1 s doubling to between 0.5 and 1 s, 0.75 s on average.
_BACKOFF = EqualJitterBackoff(cap=1.0, base=0.1)
_RIDE_OUT_RETRIES = math.ceil(RIDE_OUT_S / 0.75)


def service_redis(settings: Settings, *, ride_out_outages: bool = False) -> redis.Redis:
    """The client of the service's Redis as the settings name it: through the sentinels when REDIS_SENTINELS is set,
    else at REDIS_URL. `ride_out_outages` as for `redis_client`."""
    if settings.sentinel_addresses:
        return sentinel_client(settings, ride_out_outages=ride_out_outages)
    return redis_client(settings.redis_url, settings.redis_timeout_seconds, ride_out_outages=ride_out_outages)


class FollowingConnection(SentinelManagedConnection):
    """redis-py's connection to the primary the sentinels name, which asks them again whenever it reconnects.

    redis-py (8.2, and its main branch) asks the sentinels only when the pool opens a connection: a command retried
    after its connection broke reconnects to the address the connection had, so a worker's command in flight at a
    failover would spend its whole minute of retries on the dead primary (redis/redis-py#3874)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


def redis_client(url: str, timeout_s: float = DEFAULT_TIMEOUT_S, *, ride_out_outages: bool = False) -> redis.Redis:
    """A client (its own connection pool, safe to share between threads) that decodes replies to str.

    `ride_out_outages`: retry a command that met a dead, loading or silent Redis for about RIDE_OUT_S (workers);
    otherwise raise at once (the API)."""
    return redis.Redis.from_url(url, **_client_options(timeout_s, ride_out_outages))


def sentinel_client(settings: Settings, *, ride_out_outages: bool = False) -> redis.Redis:
    """A client of the primary the sentinels name, with REDIS_URL's database, user name and password. The sentinels
    are asked with the same timeouts, and no password: REDIS_URL's is the data nodes'."""
    timeout_s = settings.redis_timeout_seconds
    sentinels = Sentinel(settings.sentinel_addresses, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    client: redis.Redis = sentinels.master_for(
        settings.redis_sentinel_master, connection_class=FollowingConnection,
        **primary_credentials(settings.redis_url), **_client_options(timeout_s, ride_out_outages),
    )
    return client


def primary_credentials(url: str) -> dict[str, Any]:
    """What of REDIS_URL still applies when the sentinels name the primary: its database, user name and password."""
    parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return {name: parsed[name] for name in ("db", "username", "password") if parsed.get(name) is not None}


def _client_options(timeout_s: float, ride_out_outages: bool) -> dict[str, Any]:
    retry = Retry(_BACKOFF, _RIDE_OUT_RETRIES) if ride_out_outages else Retry(NoBackoff(), 0)
    return {"decode_responses": True, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
            "retry": retry}
