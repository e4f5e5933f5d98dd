"""The `captioner` command: `up` runs everything locally; `api` and `worker` run one part each; `caption` captions
files, folders and URLs, and `bulk` a bucket, through a running API; `status`, `cancel` and `jobs` read and cancel
jobs; `keys` makes, lists and revokes API keys; `worker-ready` is a worker container's readiness probe."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run Redis, S3, the API and a worker on this machine")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--model", help="model id or local directory (sets CAPTIONER_MODEL)")
    up.add_argument("--data-dir", type=Path, default=Path(".captioner-data"),
                    help="where Redis, S3 and logs keep their files (default ./.captioner-data)")
    up.add_argument("--no-auth", action="store_true",
                    help="serve without API keys (CAPTIONER_AUTH=off), for throwaway local use")

    api = commands.add_parser("api", help="run the HTTP API under gunicorn")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--host", default="0.0.0.0")

    worker = commands.add_parser("worker", help="run one captioning worker (one per GPU)")
    worker.add_argument("--model", help="model id or local directory (overrides CAPTIONER_MODEL)")
    worker.add_argument("--loglevel", default="INFO")

    commands.add_parser("worker-ready", help="exit 0 when a worker on this host is ready (a health check's probe)")

    bulk = commands.add_parser("bulk", help="caption every image under s3://bucket/prefix (through the API)")
    bulk.add_argument("source", help="s3://bucket/prefix to caption")
    bulk.add_argument("--output", help="s3://bucket/prefix for results (default: beside the source)")
    bulk.add_argument("--prompt", help="text the captions continue")
    bulk.add_argument("--include", action="append", help="key pattern to caption, e.g. '*.jpg' (repeatable)")
    bulk.add_argument("--max-objects", type=int, help="caption at most this many objects")
    bulk.add_argument("--full", action="store_true", help="caption everything again, not only what changed")
    bulk.add_argument("--dry-run", action="store_true", help="count what a run would do; caption nothing")
    bulk.add_argument("--wait", action="store_true", help="follow the job to its end with a progress bar")
    bulk.add_argument("--api", help="the API's URL (default CAPTIONER_PUBLIC_URL, else http://127.0.0.1:8000)")
    # A client's setting, not the service's: read here, at the command line's edge.
    bulk.add_argument("--key", default=os.environ.get("CAPTIONER_API_KEY"),
                      help="the API key (default CAPTIONER_API_KEY)")

    from cli import caption, keys

    caption.add_parsers(commands)
    keys.add_parser(commands)

    args = parser.parse_args(argv)
    from common.log_setup import configure_logging

    if args.command == "up":
        from cli.stack import run_up

        configure_logging("plain")
        return run_up(args.port, args.model, args.data_dir, args.host, auth=not args.no_auth)
    if args.command == "api":
        return _exec_gunicorn(args.host, args.port)
    if args.command == "bulk" or args.command in caption.COMMANDS:
        configure_logging("plain", "WARNING")  # clients at a terminal: their own output says what they do
        return _bulk(args) if args.command == "bulk" else caption.run(args)
    from common.settings import load_settings

    if args.command == "keys":
        settings = load_settings()
        configure_logging(settings.log_format if "log_format" in settings.model_fields_set else "plain")
        return keys.run(args, settings)
    if args.command == "worker-ready":
        from cli import worker_ready

        return worker_ready.run(load_settings())
    from worker.main import run_worker

    settings = load_settings()
    if args.model:
        settings = settings.model_copy(update={"model": args.model})
    return run_worker(settings, args.loglevel)


def _bulk(args: argparse.Namespace) -> int:
    from cli.bulk import UsageError, build_request, run_bulk
    from common.settings import load_settings

    try:
        body = build_request(args.source, output=args.output, prompt=args.prompt, include=args.include,
                             max_objects=args.max_objects, full=args.full, dry_run=args.dry_run)
    except UsageError as exc:
        print(f"captioner bulk: {exc}", file=sys.stderr)
        return 2
    return run_bulk(args.api or load_settings().public_url or "http://127.0.0.1:8000", body, args.wait, args.key)


def _exec_gunicorn(host: str, port: int) -> int:
    from api import NoKeys, create_app
    from api.gunicorn_hooks import GRACEFUL_TIMEOUT_S, fresh_metrics_dir
    from common.log_setup import configure_logging
    from common.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_format)  # as gunicorn's processes will (api/gunicorn_hooks.py)
    try:
        create_app(settings)  # refuses here, with the fix, rather than in each of gunicorn's workers
    except NoKeys as exc:
        print(f"captioner api: {exc}", file=sys.stderr)
        return 2
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = fresh_metrics_dir()  # gunicorn's processes add up their metrics there
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{host}:{port}",
        "--workers", str(settings.api_workers),
        "--worker-class", "gthread",
        "--threads", str(settings.api_threads),
        "--config", "python:api.gunicorn_hooks",
        "--graceful-timeout", str(GRACEFUL_TIMEOUT_S),
        # gunicorn closes an idle keep-alive connection after 2 s by default; a client that reuses it just then
        # gets "connection reset" (seen under steady load). Load balancers idle connections out at about 60 s,
        # so the server keeps them longer than that and the client or balancer closes first.
        "--keep-alive", "75",
        "--access-logfile", "-",
        "api.wsgi:app",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
