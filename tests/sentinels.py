"""A Redis Sentinel group on free loopback ports for the tests and the benches: a primary, a replica, three
sentinels (redis-server in sentinel mode), every process stopped by its PID at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from cli.processes import ManagedProcess, free_ports, redis_process, sentinel_process, stop_together

MASTER_NAME = "mymaster"


@dataclass
class SentinelGroup:
    primary: ManagedProcess
    replica: ManagedProcess
    sentinels: list[ManagedProcess]
    sentinel_ports: list[int]

    @property
    def addresses(self) -> str:
        """The sentinels as REDIS_SENTINELS takes them."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def primary_port(self) -> int | None:
        """The port of the primary as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                found = cast(tuple[str, int] | None, _client(port).sentinel_get_master_addr_by_name(MASTER_NAME))
            except redis.RedisError:
                continue
            if found:
                return int(found[1])
        return None

    def wait_until_watching(self, timeout_s: float = 20) -> None:
        """Until every sentinel knows the replica and the two other sentinels: before that, a failover may not
        happen (sentinels learn of each other from hello messages every 2 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            masters = [cast(dict[str, Any], _client(port).sentinel_master(MASTER_NAME)) for port in self.sentinel_ports]
            if all(int(m["num-other-sentinels"]) == 2 and int(m["num-slaves"]) == 1 for m in masters):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the sentinels did not find each other and the replica: {masters}")

    def wait_for_primary_other_than(self, port: int, timeout_s: float) -> int:
        """The port of the new primary, once the sentinels name another than `port` and it answers as primary."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.primary_port()
            if found is not None and found != port:
                try:
                    if _client(found).info("replication")["role"] == "master":
                        return found
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"no failover within {timeout_s:.0f} s:\n{self.sentinels[0].log_tail()}")


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


@contextmanager
def sentinel_group(root: Path, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> Iterator[SentinelGroup]:
    """The group started, the replica in sync and the sentinels watching; stopped by PID when the block ends."""
    primary_port, replica_port, *sentinel_ports = free_ports(5)
    started: list[ManagedProcess] = []
    try:
        primary = redis_process(root / "primary", primary_port, root / "primary.log").start()
        started.append(primary)
        primary.wait_ready(30)
        replica = redis_process(root / "replica", replica_port, root / "replica.log", replica_of=primary_port).start()
        started.append(replica)
        replica.wait_ready(30)
        _wait_in_sync(replica_port, replica)
        sentinels = []
        for n, port in enumerate(sentinel_ports):
            sentinel = sentinel_process(root / f"sentinel-{n}", port, primary_port, root / f"sentinel-{n}.log",
                                        master_name=MASTER_NAME, down_after_ms=down_after_ms,
                                        failover_timeout_ms=failover_timeout_ms).start()
            started.append(sentinel)
            sentinels.append(sentinel)
        for sentinel in sentinels:
            sentinel.wait_ready(30)
        group = SentinelGroup(primary, replica, sentinels, sentinel_ports)
        group.wait_until_watching()
        yield group
    finally:
        stop_together(started)


def _wait_in_sync(port: int, replica: ManagedProcess, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _client(port).info("replication").get("master_link_status") == "up":
            return
        time.sleep(0.05)
    raise TimeoutError(f"the replica did not sync:\n{replica.log_tail()}")
