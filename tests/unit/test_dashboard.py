"""deploy/grafana/captioner.json: every panel's query names only metrics the code exports (with the suffixes
Prometheus gives counters and histograms), and the dashboard shows every metric of docs/operations.md's list."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

import api.metrics
import common.metrics
import worker.metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "captioner.json"
# The names of issue 20 that dashboards and autoscalers depend on.
REQUIRED = {
    "captioner_http_requests_total", "captioner_http_request_duration_seconds", "captioner_jobs_total",
    "captioner_images_total", "captioner_batch_size", "captioner_model_seconds", "captioner_queue_wait_seconds",
    "captioner_backlog_images", "captioner_webhook_deliveries_total", "captioner_worker_ready",
    "captioner_tenant_images_total",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, str]:
    """Every series name the service's metrics expose -> the metric it belongs to."""
    assert common.metrics and worker.metrics  # imported for their registrations
    families = [*REGISTRY.collect(), *api.metrics.Backlog(lambda: 0, lambda: 0).describe()]
    names = {}
    for family in families:
        if family.name.startswith("captioner_"):
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = family.name + ("_total" if family.type == "counter" else "")
    return names


def queries() -> list[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside label matchers' quoted values."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![\w:])captioner_[a-zA-Z0-9_:]*", unquoted))


def test_every_panel_queries_exported_metrics_only() -> None:
    names = exported()
    found = queries()
    assert found
    for title, expr in found:
        used = metric_names(expr)
        assert used, f"{title}: {expr} names no metric of the service"
        assert used <= set(names), f"{title}: {sorted(used - set(names))} not exported"


def test_the_dashboard_shows_every_metric_of_the_list() -> None:
    names = exported()
    shown = {names[name] for _, expr in queries() for name in metric_names(expr)}
    assert set(names.values()) >= REQUIRED, sorted(REQUIRED - set(names.values()))
    assert shown >= REQUIRED, sorted(REQUIRED - shown)


def test_the_expression_parser_sees_through_label_values() -> None:
    assert metric_names('sum(rate(captioner_images_total{lane="captioner_x"}[5m])) / captioner_a_b') == {
        "captioner_images_total", "captioner_a_b"}
