"""`captioner keys usage`: tenants' usage by UTC day, for an operator (a tenant reads its own at GET /v1/usage)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from common.errors import CaptionerError
from common.redis_client import service_redis
from common.schemas import LOCAL_TENANT
from common.settings import Settings
from common.tenants import TenantStore, valid_tenant
from common.usage import LANES, UsageCounts, UsageReport, UsageStore, parse_range

_COLUMNS = ("jobs", "images_captioned", "images_failed", "tokens_generated", "model_seconds")
_HEADINGS = ("jobs", "captioned", "failed", "tokens", "model s")


def add_usage_parser(actions: Any) -> None:
    """`usage`, on `captioner keys`' subcommands."""
    usage = actions.add_parser("usage", help="usage by UTC day: every tenant's, or one's")
    usage.add_argument("--tenant", help="only this tenant (default: every tenant with a key, and the built-in one)")
    usage.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: 29 days before --end)")
    usage.add_argument("--end", help="last UTC day, included, YYYY-MM-DD (default: today)")
    usage.add_argument("--json", action="store_true",
                       help="print a JSON list with one report per tenant, each as GET /v1/usage answers it")


def show_usage(store: TenantStore, settings: Settings, args: argparse.Namespace) -> int:
    try:
        start, end = parse_range(args.start, args.end)
    except CaptionerError as exc:
        print(f"captioner keys usage: {exc.message}", file=sys.stderr)
        return 2
    if args.tenant is not None and not valid_tenant(args.tenant):
        print(f"captioner keys usage: {args.tenant!r} is not a tenant name", file=sys.stderr)
        return 2
    tenants = [args.tenant] if args.tenant else sorted({key.tenant for key in store.all_keys()} | {LOCAL_TENANT})
    usage = UsageStore(service_redis(settings))
    reports = [usage.report(tenant, start, end) for tenant in tenants]
    if args.json:
        print(json.dumps([report.model_dump(mode="json") for report in reports]))
    else:
        _table(reports)
    return 0


def _table(reports: list[UsageReport]) -> None:
    """A row per tenant, day and lane that has usage, then each tenant's totals."""
    rows: list[tuple[str, str, str, UsageCounts]] = []
    for report in reports:
        for day in report.data:
            rows += [(report.tenant, day.date.isoformat(), lane, getattr(day, lane)) for lane in LANES
                     if not getattr(day, lane).is_empty()]
        rows += [(report.tenant, "total", lane, getattr(report.total, lane)) for lane in LANES
                 if not getattr(report.total, lane).is_empty()]
    first, last = (reports[0].start, reports[0].end) if reports else (None, None)
    if not rows:
        print(f"no usage from {first} to {last} (UTC days)")
        return
    print(f"usage from {first} to {last} (UTC days)")
    width = max(len("tenant"), *(len(row[0]) for row in rows))
    print(f"{'tenant':<{width}}  {'date':<10}  {'lane':<11}" + "".join(f"{h:>12}" for h in _HEADINGS))
    for tenant, when, lane, counts in rows:
        values = [f"{getattr(counts, c):.3f}" if c == "model_seconds" else str(getattr(counts, c)) for c in _COLUMNS]
        print(f"{tenant:<{width}}  {when:<10}  {lane:<11}" + "".join(f"{v:>12}" for v in values))
