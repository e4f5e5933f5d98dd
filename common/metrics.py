"""The Prometheus metrics the stores record: a job's end and an image's outcome, counted by the call whose script
recorded them, so that a task run twice, a chunk run twice or a cancel racing a finish counts once.

The API's own metrics are in api/metrics.py, the worker's in worker/metrics.py; what each means, and how they are
read under gunicorn's processes, is in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import threading

from prometheus_client import Counter

# Tenants named in a process's labels; the rest count as OTHER_TENANT. Tenants are made by operators, so most
# deployments have a handful, but a label per tenant without a bound would let their number grow the series
# without one. The first tenants a process sees keep their names; /v1/usage has every tenant exactly.
MAX_TENANT_LABELS = 50
OTHER_TENANT = "other"

JOBS = Counter("captioner_jobs", "Interactive jobs that ended, by final status (succeeded, failed, canceled).",
               ["status"])
IMAGES = Counter("captioner_images", "Images that got their result, by lane (interactive, bulk) and status "
                                     "(succeeded, failed; skipped: a bulk object unchanged since the last run).",
                 ["lane", "status"])
TENANT_IMAGES = Counter("captioner_tenant_images", f"captioner_images by tenant: the first {MAX_TENANT_LABELS} "
                                                   f"tenants a process sees, the rest as '{OTHER_TENANT}'.",
                        ["tenant", "lane", "status"])


class _TenantLabels:
    """The tenants this process names in its labels, first come, up to the bound."""

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        with self._lock:
            if tenant in self._named:
                return tenant
            if len(self._named) < self._bound:
                self._named.add(tenant)
                return tenant
        return OTHER_TENANT


tenant_label = _TenantLabels(MAX_TENANT_LABELS)


def job_ended(status: str) -> None:
    """A job reached its terminal status: called by the one call that moved it there."""
    JOBS.labels(status=status).inc()


def images_recorded(lane: str, tenant: str, succeeded: int, failed: int, skipped: int = 0) -> None:
    """Images whose results were recorded for the first time, with their tenant's share."""
    label = tenant_label(tenant)
    for status, count in (("succeeded", succeeded), ("failed", failed), ("skipped", skipped)):
        if count:
            IMAGES.labels(lane=lane, status=status).inc(count)
            TENANT_IMAGES.labels(tenant=label, lane=lane, status=status).inc(count)
