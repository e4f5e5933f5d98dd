"""The worker's Prometheus metrics, and the small HTTP server that serves them (with the stores' own,
common/metrics.py) on CAPTIONER_METRICS_PORT.

A worker is one process (threads inside), so its metrics live in the process's default registry; nothing of
gunicorn's multiprocess mode applies here. What each means: docs/operations.md ("Metrics").
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram("captioner_batch_size", "Images per model call.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
MODEL_SECONDS = Histogram("captioner_model_seconds", "Seconds of one model call (one batch).",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUEUE_WAIT = Histogram("captioner_queue_wait_seconds", "Seconds an interactive job waited queued before a worker "
                                                       "started it (the job's timings.queue_ms).",
                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
WEBHOOK_DELIVERIES = Counter("captioner_webhook_deliveries", "Webhook delivery attempts by outcome: delivered, "
                                                             "retrying (failed, to be tried again), dead (given up).",
                             ["outcome"])
WORKER_READY = Gauge("captioner_worker_ready", "1 while this worker can caption (its model loaded, its device "
                                               "sound), else 0.")


def observe_batch(images: int, seconds: float) -> None:
    """One model call: its images and how long it took."""
    BATCH_SIZE.observe(images)
    MODEL_SECONDS.observe(seconds)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the worker's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A line per scrape would drown the worker's own log."""


def guarded(app: WSGIApp, token: str | None) -> WSGIApp:
    """`app`, answering 401 to requests without `Authorization: Bearer <token>` when a token is set."""
    if token is None:
        return app
    expected = f"Bearer {token}".encode()

    def check(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"a bearer token is required (CAPTIONER_METRICS_TOKEN)\n"]
        return app(environ, start_response)

    return check


def serve(port: int, token: str | None, host: str = "0.0.0.0") -> WSGIServer | None:
    """Serve /metrics on a daemon thread; None when `port` is 0, or taken (logged: a worker without metrics still
    captions, and a second worker on one host is a deployment's mistake to read in the log, not a reason to stop)."""
    if port == 0:
        return None
    try:
        server = make_server(host, port, guarded(make_wsgi_app(), token), _Server, handler_class=_QuietHandler)
    except OSError as exc:
        log.error("cannot serve metrics on port %d (%s): this worker runs without them; give each worker on a host "
                  "its own CAPTIONER_METRICS_PORT", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
