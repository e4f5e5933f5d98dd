"""The Celery broker transport: kombu's Redis transport, with one client object per channel.

kombu builds a new redis-py client for every delivery it tracks and every ack (``Channel._create_client``),
and redis-py's constructor fills a table of about 200 reply callbacks each time: under load that took more of
a worker's GIL than our own task code (a py-spy profile; bench/results/2026-11-29-service-path.md). Clients are
thread-safe and hold no state beyond their connection pool, so one per pool serves every call.

With REDIS_SENTINELS set, the same channel on kombu's Sentinel transport, which asks the sentinels for the primary
whenever it connects (`sentinel_broker_url`).

`_create_client` is kombu's private method: on a kombu version it was not checked on (common/compat.py),
`transport()` gives kombu's own transport instead, and says so.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import redis
from kombu.transport import redis as kombu_redis

from common.compat import unchecked_reason
from common.redis_client import FollowingConnection, primary_credentials
from common.settings import Settings

log = logging.getLogger(__name__)

# The import paths Celery's `broker_transport` takes; an explicit transport wins over the URL's scheme.
TRANSPORT = "common.broker:Transport"
KOMBU_TRANSPORT = "redis"
SENTINEL_TRANSPORT = "common.broker:SentinelTransport"
KOMBU_SENTINEL_TRANSPORT = "sentinel"


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if self.connection.client is None:
            # The broker was lost, and Celery detached this channel's connection before closing the channel: closing it
            # restores its unacknowledged messages, and its tasks, still running, ack theirs later. kombu would build a
            # pool from the detached connection, an AttributeError that stops the worker (kombu 5.7.0, Celery 5.7.0).
            # The old pool reconnects once Redis is back; until then these fail as a lost broker's calls do.
            if client is None:
                raise redis.exceptions.ConnectionError("the broker connection was closed")
            return client
        # kombu replaces its pool after a fork or on close: a client of an old pool is not reused.
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Ours, with kombu's pool of the primary the sentinels name, whose connections ask the sentinels again when
    they reconnect (common/redis_client.py)."""

    connection_class = FollowingConnection


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport(sentinel: bool = False) -> str:
    """The broker transport to use: ours, unless kombu's version is one it was not checked on."""
    reason = unchecked_reason("kombu")
    if reason is None:
        return SENTINEL_TRANSPORT if sentinel else TRANSPORT
    log.warning("%s: using kombu's own Redis transport, which builds a client per ack (slower)", reason)
    return KOMBU_SENTINEL_TRANSPORT if sentinel else KOMBU_TRANSPORT


def broker_url(settings: Settings) -> str:
    """REDIS_URL; or, with sentinels, kombu's list of them (`sentinel://host:port;sentinel://...`), each carrying
    REDIS_URL's database, user name and password, which kombu applies to the primary only."""
    if not settings.sentinel_addresses:
        return settings.redis_url
    credentials = primary_credentials(settings.redis_url)
    user = quote(credentials.get("username") or "", safe="")
    password = credentials.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password is not None else (f"{user}@" if user else "")
    return ";".join(f"sentinel://{auth}{host}:{port}/{credentials.get('db', 0)}"
                    for host, port in settings.sentinel_addresses)
