"""`GET /metrics`: the API's Prometheus metrics (requests by route), the stores' (common/metrics.py), and the
backlog read from Redis at scrape time, the signal workers are scaled on.

gunicorn runs several processes and a scrape reaches one of them, so under `captioner api` every process writes its
values to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode; api/gunicorn_hooks.py makes a
fresh directory per start) and each scrape adds up all of them. Served without an API key, as scrapers have none;
with CAPTIONER_METRICS_TOKEN, only to `Authorization: Bearer <token>`. Not an operation of /openapi.json: it is for
operators' scrapers, not clients (docs/operations.md, "Metrics").
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from api.services import services
from common.errors import Unauthorized

log = logging.getLogger(__name__)
blueprint = Blueprint("metrics", __name__)

# prometheus_client's own switch, which it reads once at import as here: set by gunicorn's hooks, unset in a single
# process (the tests' app), where this process's registry is the whole story. Not a setting of the service.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
# Methods by name; anything else a client invents counts as "other", so that no request can add a series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route of a request no rule matched (404s, and 405s on a known path)

REQUESTS = Counter("captioner_http_requests", "HTTP requests answered, by route (the URL rule, never the path), "
                                              "method and status.", ["route", "method", "status"])
DURATION = Histogram("captioner_http_request_duration_seconds", "Seconds to answer a request, by route (a long "
                                                                "poll's wait included).", ["route"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class Backlog(Collector):
    """`captioner_backlog_images{lane}`, read when scraped: images of interactive jobs not yet ended (the admission
    count, one GET) and of bulk chunks not yet done. While Redis is away it has no samples, rather than a 0 that an
    autoscaler would act on."""

    def __init__(self, interactive: Callable[[], int], bulk: Callable[[], int]) -> None:
        self._lanes = (("interactive", interactive), ("bulk", bulk))

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            values = [(lane, read()) for lane, read in self._lanes]
        except RedisError as exc:
            log.warning("the backlog could not be read for /metrics: %s", exc)
            values = []
        for lane, value in values:
            family.add_metric([lane], value)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("captioner_backlog_images", "Images waiting or in progress, by lane (interactive, "
                                                             "bulk): what workers are scaled on.", labels=["lane"])


class _ThisProcess(Collector):
    """The default registry's metrics, for a process that is the whole API (no multiprocess directory)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def init_app(app: Flask) -> None:
    """Count every request; called before any other hook, so that a request refused early is counted too."""
    app.before_request(_started)
    app.after_request(_answered)
    app.register_blueprint(blueprint)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _answered(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"
    REQUESTS.labels(route=route, method=method, status=str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        DURATION.labels(route=route).observe(time.perf_counter() - started)
    return response


@blueprint.get("/metrics")
def scrape() -> Response:
    token = services().settings.metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise Unauthorized("/metrics needs `Authorization: Bearer <CAPTIONER_METRICS_TOKEN>`.")
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS_DIR:
        MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(Backlog(services().admission.backlog, services().bulk.backlog_images))
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
