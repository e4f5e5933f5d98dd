"""`captioner keys`: make, list and revoke API keys, rotate tenants' webhook secrets and read their usage, in the
Redis the service uses (REDIS_URL)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.usage import add_usage_parser, show_usage
from common.redis_client import service_redis
from common.settings import Settings
from common.tenants import ApiKey, KeyLimits, TenantStore

EXAMPLES = """examples:
  captioner keys create --name acme --bulk-bucket photos --bulk-bucket exports/captions
  captioner keys create --name acme-ci --tenant acme --json
  captioner keys list
  captioner keys revoke key_0123456789abcdef
  captioner keys rotate-webhook-secret acme --overlap-hours 48
  captioner keys usage --tenant acme --start 2026-12-01 --json"""


def add_parser(commands: Any) -> None:
    """The `keys` command and its subcommands, on the main parser's subparsers."""
    keys = commands.add_parser("keys", help="make, list and revoke API keys; read tenants' usage", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key (shown once) for a new or existing tenant",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    create.add_argument("--name", required=True, help="what the key is for (also the new tenant's name)")
    create.add_argument("--tenant", help="add the key to this tenant (default: a new tenant named --name)")
    create.add_argument("--rate-limit", help='requests allowed, e.g. "600/minute"')
    create.add_argument("--max-in-flight", type=int, help="images the key may have queued or running at once")
    create.add_argument("--bulk-bucket", action="append", default=[],
                        help="a bucket (or bucket/prefix) bulk jobs may read and write; repeatable; default none")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = actions.add_parser("list", help="every key, active or revoked (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a key: it stops working at once, everywhere")
    revoke.add_argument("key_id", help="the key's id (key_...), as `list` shows it")
    rotate = actions.add_parser("rotate-webhook-secret",
                                help="give a tenant a new webhook secret; the old one signs beside it for a while")
    rotate.add_argument("tenant")
    rotate.add_argument("--overlap-hours", type=float, default=24.0,
                        help="how long deliveries carry the old secret's signature too (default 24)")
    rotate.add_argument("--json", action="store_true", help="print one JSON object")
    add_usage_parser(actions)


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = TenantStore(service_redis(settings))
    if args.action == "create":
        return _create(store, args)
    if args.action == "list":
        return _list(store, args.json)
    if args.action == "rotate-webhook-secret":
        return _rotate(store, args)
    if args.action == "usage":
        return show_usage(store, settings, args)
    revoked = store.revoke(args.key_id)
    if revoked is None:
        print(f"captioner keys: no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {revoked.key_id} ({revoked.name}, tenant {revoked.tenant})")
    return 0


def _create(store: TenantStore, args: argparse.Namespace) -> int:
    limits = KeyLimits(bulk_buckets=tuple(args.bulk_bucket), rate_limit=args.rate_limit,
                       max_in_flight=args.max_in_flight)
    try:
        created = store.create_key(args.name, args.tenant, limits)
    except ValueError as exc:
        print(f"captioner keys: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key": created.key, **_described(created.record),
                          "webhook_secret": created.webhook_secret}))
        return 0
    print(f"key        {created.key}\n"
          f"key id     {created.record.key_id}\n"
          f"tenant     {created.record.tenant}\n"
          f"webhooks   signed with {created.webhook_secret}\n"
          "The key is shown only now: keep it (e.g. export CAPTIONER_API_KEY=...).")
    return 0


def _rotate(store: TenantStore, args: argparse.Namespace) -> int:
    if args.overlap_hours < 0:
        print("captioner keys: --overlap-hours must not be negative", file=sys.stderr)
        return 2
    try:
        secret, until = store.rotate_webhook_secret(args.tenant, args.overlap_hours * 3600)
    except ValueError as exc:
        print(f"captioner keys: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"tenant": args.tenant, "webhook_secret": secret, "previous_until": until.isoformat()}))
        return 0
    print(f"webhooks   signed with {secret}\n"
          f"           and with the secret before it until {until:%Y-%m-%d %H:%M} UTC\n"
          "Give the new secret to the tenant's receivers before then.")
    return 0


def _list(store: TenantStore, as_json: bool) -> int:
    keys = store.all_keys()
    if as_json:
        print(json.dumps([_described(key) for key in keys]))
        return 0
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.key_id}  {key.tenant:<20} {key.name:<24} {state}")
    return 0


def _described(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id, "tenant": key.tenant, "name": key.name, "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "rate_limit": key.limits.rate_limit, "max_in_flight": key.limits.max_in_flight,
        "bulk_buckets": list(key.limits.bulk_buckets),
    }
