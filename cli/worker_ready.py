"""`captioner worker-ready`: whether a worker on this host has loaded its model and can caption, for a container's
health check and a Kubernetes readiness probe (deploy/).

A worker reports itself in Redis (common/workers.py, worker/health.py) under a name ending in `@<hostname>`; in a
container or a pod the hostname is that container's own. It reads the workers consuming now (one set) and their
reports, never a scan of the keyspace, so a probe every few seconds from each of a hundred pods costs Redis little.
"""

from __future__ import annotations

import socket
import sys

from redis.exceptions import RedisError

from common.fairqueue import FairQueue
from common.redis_client import service_redis
from common.settings import Settings
from common.workers import WorkerRegistry


def run(settings: Settings, host: str | None = None) -> int:
    """0 when a worker of `host` (this one's by default) reports `ready`, else 1, saying why on stderr."""
    host = host or socket.gethostname()
    client = service_redis(settings)
    try:
        names = sorted(name for name in FairQueue(client, settings.job_ttl_seconds, settings.max_attempts).workers()
                       if name.endswith("@" + host))
        registry = WorkerRegistry(client)
        reports = [report for name in names if (report := registry.get(name)) is not None]
    except RedisError as exc:
        print(f"captioner worker-ready: Redis does not answer: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    ready = [report.name for report in reports if report.state == "ready"]
    if ready:
        print(f"ready: {', '.join(ready)}")
        return 0
    why = "; ".join(f"{report.name}: {report.reason or report.state}" for report in reports)
    print(f"captioner worker-ready: no worker of {host} is ready{': ' + why if why else ' (none has reported)'}",
          file=sys.stderr)
    return 1
