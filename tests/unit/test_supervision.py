"""`captioner up` supervises: a child that dies is started again, with backoff and a word on why, and only a stop
ends the stack."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest

from cli import stack
from cli.processes import ManagedProcess
from worker.health import EXIT_WORKER_FAILED


def child(name: str, code: int | None, tmp_path: Path) -> ManagedProcess:
    """A child that exits with `code` at once, or runs until stopped (None)."""
    body = f"import sys; print('{name} ran'); sys.exit({code})" if code is not None else "import time; time.sleep(60)"
    return ManagedProcess(name, [sys.executable, "-c", body], tmp_path / f"{name}.log").start()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "POLL_S", 0.02)
    monkeypatch.setattr(stack, "FIRST_BACKOFF_S", 0.1)


def supervise_for(started: list[ManagedProcess], seconds: float) -> int:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    try:
        return stack._supervise(started, stop)
    finally:
        for process in started:
            process.stop()


def test_a_child_that_dies_is_started_again_with_growing_backoff_until_the_stack_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api, worker = child("api", None, tmp_path), child("worker", 1, tmp_path)
    first_api_pid = api.pid
    assert supervise_for([api, worker], 2.0) == 0
    err = capsys.readouterr().err
    delays = [float(d) for d in re.findall(r"worker: it exited \(code 1\); starting it again in ([\d.]+) s", err)]
    # 0.1, 0.2, 0.4, 0.8 s: four or five deaths in two seconds, each waited for twice as long as the one before.
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8], err
    assert err.count("worker started again") >= 3 and "worker ran" in err  # its log's tail says why
    assert "api:" not in err and api.pid == first_api_pid  # a child that runs is left alone


def test_a_worker_whose_device_failed_is_said_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert supervise_for([child("worker", EXIT_WORKER_FAILED, tmp_path)], 0.5) == 0
    assert "worker: its device failed; starting it again in 0.1 s" in capsys.readouterr().err


def test_a_child_that_ran_long_enough_is_forgiven_its_deaths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "STABLE_AFTER_S", 0.3)
    script = tmp_path / "flaky.py"
    # Dies at once on its first two starts, runs longer than STABLE_AFTER_S on the third then dies, then runs.
    script.write_text(f"import pathlib, sys, time\np = pathlib.Path({str(tmp_path / 'starts')!r})\n"
                      "n = int(p.read_text()) if p.exists() else 0\np.write_text(str(n + 1))\n"
                      "time.sleep(0.6 if n == 2 else 60 if n > 2 else 0)\nsys.exit(1)\n")
    flaky = ManagedProcess("api", [sys.executable, str(script)], tmp_path / "api.log").start()
    stop = threading.Event()
    threading.Timer(2.5, stop.set).start()
    children: list[ManagedProcess] = [flaky]
    try:
        assert stack._supervise(children, stop) == 0
        assert flaky.alive()
    finally:
        flaky.stop()
    delays = re.findall(r"starting it again in ([\d.]+) s", capsys.readouterr().err)
    assert delays == ["0.1", "0.2", "0.1"]  # the third death comes after a stable run: back to the first delay
