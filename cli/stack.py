"""`captioner up`: the whole service on one machine, in the foreground, stopped cleanly on Ctrl-C/SIGTERM.

Starts Redis and an S3 server unless REDIS_URL / S3_ENDPOINT_URL point at existing ones, then the API and one
worker as `captioner api` / `captioner worker` children configured through their environment. Like a supervisor, it
restarts any child that dies (a worker whose device failed, a SIGKILLed API, Redis), with backoff, and says why;
only Ctrl-C or SIGTERM stops the stack.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import cast

import requests

from cli.processes import ManagedProcess, free_ports, redis_process, s3_process
from common.settings import DEFAULT_MODEL, Settings
from common.tenants import KeyLimits, TenantStore, new_webhook_secret
from worker.health import EXIT_WORKER_FAILED

LOCAL_ACCESS_KEY = "captioner"
LOCAL_SECRET_KEY = "captioner-local-secret"
# A child that died is started again after FIRST_BACKOFF_S, then twice as long after each death in a row, up to
# MAX_BACKOFF_S; one that has run STABLE_AFTER_S since its last start is forgiven its earlier deaths.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0
POLL_S = 0.5
# The tenant of the key `captioner up` makes.
UP_TENANT = "default"


def local_webhook_secret(data_dir: Path) -> str:
    """A Standard Webhooks secret for this local stack, made once and kept with its data."""
    path = data_dir / "webhook_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(new_webhook_secret())
        path.chmod(0o600)
    return path.read_text().strip()


def local_api_key(data_dir: Path, redis_url: str) -> tuple[str, str]:
    """This local stack's API key and the webhook secret of its tenant: the key kept with its data while Redis
    still knows it, else a new one (any bulk bucket: the local S3 is the user's own)."""
    store = TenantStore.from_url(redis_url)
    path = data_dir / "api_key"
    found = store.resolve(path.read_text().strip()) if path.exists() else None
    if found is not None:
        key = path.read_text().strip()
    else:
        created = store.create_key("captioner up", UP_TENANT, KeyLimits(bulk_buckets=("*",)))
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(created.key)
        path.chmod(0o600)
        key = created.key
    return key, cast(str, store.webhook_secret(UP_TENANT))


def _credentials(env: dict[str, str], data_dir: Path) -> None:
    """Set up and print what this stack's users need: its API key (or that there is none) and the secret that
    signs their webhooks."""
    if env.get("CAPTIONER_AUTH", "on") == "off":
        print("captioner: no API keys (--no-auth): anyone who can reach the API may use it", flush=True)
        if not env.get("CAPTIONER_WEBHOOK_SECRET"):
            env["CAPTIONER_WEBHOOK_SECRET"] = local_webhook_secret(data_dir)
        webhook_secret = env["CAPTIONER_WEBHOOK_SECRET"]
    else:
        key, webhook_secret = local_api_key(data_dir, env["REDIS_URL"])
        print(f"captioner: API key {key} (kept in {data_dir / 'api_key'}): export CAPTIONER_API_KEY={key}",
              flush=True)
    print(f"captioner: webhooks are signed with {webhook_secret}", flush=True)


def run_up(port: int, model: str | None, data_dir: Path, host: str = "127.0.0.1", *, auth: bool = True) -> int:
    """`captioner up`; `auth` False is --no-auth (CAPTIONER_AUTH=off)."""
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    env = dict(os.environ)
    if model:
        env["CAPTIONER_MODEL"] = model
    if not auth:
        env["CAPTIONER_AUTH"] = "off"
    # Lines for people at this terminal, unless told otherwise (a collector that reads the files wants json).
    env.setdefault("CAPTIONER_LOG_FORMAT", "plain")
    started: list[ManagedProcess] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def launch(process: ManagedProcess, ready_timeout_s: float | None) -> None:
        print(f"captioner: starting {process.name} (log: {process.log_path})", flush=True)
        started.append(process.start())
        if ready_timeout_s is not None:
            process.wait_ready(ready_timeout_s)

    try:
        if not env.get("REDIS_URL"):
            (redis_port,) = free_ports(1)
            launch(redis_process(data_dir / "redis", redis_port, logs / "redis.log"), 30)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        if not env.get("S3_ENDPOINT_URL") and not env.get("AWS_ACCESS_KEY_ID"):
            (s3_port,) = free_ports(1)
            env |= {"AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY}
            launch(s3_process(data_dir / "s3", s3_port, logs / "s3.log", LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY),
                   60)
            env["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{s3_port}"
            # Printed so a user can put images there to caption in bulk, with any S3 client.
            print(f"captioner: S3 at {env['S3_ENDPOINT_URL']} (access key {LOCAL_ACCESS_KEY}, "
                  f"secret key {LOCAL_SECRET_KEY})", flush=True)
        _credentials(env, data_dir)
        me = [sys.executable, "-m", "cli.main"]
        # The worker loads its model while the API starts; jobs queue up until it consumes them.
        launch(ManagedProcess("worker", [*me, "worker"], logs / "worker.log", env=env), None)
        url = f"http://{host}:{port}"
        api = ManagedProcess(
            "api", [*me, "api", "--host", host, "--port", str(port)], logs / "api.log", env=env,
            ready=lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200,
        )
        launch(api, 60)
        print(f"captioner: ready at {url}  (Ctrl-C stops everything)", flush=True)
        served = Settings(model=env.get("CAPTIONER_MODEL", DEFAULT_MODEL), model_name=env.get("CAPTIONER_MODEL_NAME"))
        print(f"captioner: OpenAI-compatible at base_url {url}/v1, model {served.served_model_id!r}", flush=True)
        return _supervise(started, stop)
    except (RuntimeError, TimeoutError) as exc:
        print(f"captioner: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("captioner: stopping", flush=True)
        for process in reversed(started):
            process.stop()


@dataclass
class _Child:
    process: ManagedProcess
    started_at: float
    deaths: int = 0  # in a row: since it last ran STABLE_AFTER_S
    restart_at: float | None = None


def _supervise(started: list[ManagedProcess], stop: threading.Event) -> int:
    """Watch the children until `stop` (0): restart each one that dies, after a backoff, in place (the stack stops
    what runs). A worker whose device failed exits for exactly this: a fresh process gets a fresh device context."""
    children = [_Child(process, time.monotonic()) for process in started]
    while not stop.wait(POLL_S):
        now = time.monotonic()
        for child in children:
            process = child.process
            if process.alive():
                if child.deaths and now - child.started_at > STABLE_AFTER_S:
                    child.deaths = 0
                continue
            if child.restart_at is None:
                delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** child.deaths)
                code = process.returncode()
                why = "its device failed" if process.name == "worker" and code == EXIT_WORKER_FAILED else \
                    f"it exited (code {code})"
                print(f"captioner: {process.name}: {why}; starting it again in {delay:g} s. Its log ends:\n"
                      f"{process.log_tail()}", file=sys.stderr, flush=True)
                child.restart_at = now + delay
            elif now >= child.restart_at:
                process.stop()  # its process group's stragglers, and its log
                process.start()
                child.started_at, child.restart_at, child.deaths = now, None, child.deaths + 1
                print(f"captioner: {process.name} started again (pid {process.pid})", file=sys.stderr, flush=True)
    return 0
