"""Waiting for Redis replicas to hold what the primary answered, before the API acknowledges it.

Replication is asynchronous: the primary answers a write before its replicas have it, so a replica promoted after
the primary's host is lost may lack writes that the primary answered. Redis's WAIT blocks until that many replicas
have acknowledged the writes of its own connection, or its timeout passes, and says how many did.

A submission writes on two connections (the job store's MULTI, then kombu's LPUSH of the turn), and WAIT counts
only its own connection's writes. The replication stream is one ordered log, so a write on the waiting connection
after both carries everything before it: a PUBLISH on a channel no one reads, which Redis sends to replicas like
any write and which leaves no key behind.
"""

from __future__ import annotations

from typing import cast

import redis

# Nobody subscribes: the message exists only to be replicated.
MARKER_CHANNEL = "captioner:replicated"


class ReplicaWait:
    def __init__(self, client: redis.Redis, replicas: int, timeout_ms: int) -> None:
        self._client = client
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    def wait(self) -> int:
        """Block until `replicas` replicas hold every write the primary had answered before this call, or
        `timeout_ms` has passed; how many did (0 when no replica is asked for)."""
        if self.replicas == 0:
            return 0
        with self._client.pipeline(transaction=False) as pipe:  # one connection for both
            pipe.publish(MARKER_CHANNEL, "")
            pipe.wait(self.replicas, self.timeout_ms)
            return cast(int, pipe.execute()[-1])
