"""The `captioner` command: `up` runs everything locally; `api` and `worker` run one part each."""

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

    api = commands.add_parser("api", help="run the HTTP API under gunicorn")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--host", default="0.0.0.0")

    worker = commands.add_parser("worker", help="run one captioning worker (one per GPU)")
    worker.add_argument("--model", help="model id or local directory (overrides CAPTIONER_MODEL)")
    worker.add_argument("--loglevel", default="INFO")

    args = parser.parse_args(argv)
    if args.command == "up":
        from cli.stack import run_up

        return run_up(args.port, args.model, args.data_dir, args.host)
    if args.command == "api":
        return _exec_gunicorn(args.host, args.port)
    from common.settings import load_settings
    from worker.main import run_worker

    settings = load_settings()
    if args.model:
        settings = settings.model_copy(update={"model": args.model})
    return run_worker(settings, args.loglevel)


def _exec_gunicorn(host: str, port: int) -> int:
    from common.settings import load_settings

    settings = load_settings()
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{host}:{port}",
        "--workers", str(settings.api_workers),
        "--worker-class", "gthread",
        "--threads", str(settings.api_threads),
        "--graceful-timeout", "10",
        "--access-logfile", "-",
        "api.wsgi:app",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
