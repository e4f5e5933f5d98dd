"""`captioner up` replaces a worker whose device failed, and stops on any other child's exit."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from cli import stack
from cli.processes import ManagedProcess
from worker.health import EXIT_WORKER_FAILED


def child(name: str, code: int | None, tmp_path: Path) -> ManagedProcess:
    """A child that exits with `code` at once, or runs until stopped (None)."""
    body = f"import sys; sys.exit({code})" if code is not None else "import time; time.sleep(60)"
    return ManagedProcess(name, [sys.executable, "-c", body], tmp_path / f"{name}.log").start()


def test_a_failed_device_gets_a_fresh_worker_until_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "MAX_RESTARTS", 2)
    started = [child("api", None, tmp_path), child("worker", EXIT_WORKER_FAILED, tmp_path)]
    first_worker = started[1]
    try:
        assert stack._supervise(started, threading.Event()) == 1
    finally:
        for process in started:
            process.stop()
    assert started[1] is not first_worker  # replaced, and the replacement is what the stack stops
    err = capsys.readouterr().err
    assert err.count("starting a fresh worker") == 2 and f"worker exited (code {EXIT_WORKER_FAILED})" in err


def test_any_other_exit_stops_the_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = [child("api", None, tmp_path), child("worker", 1, tmp_path)]
    try:
        assert stack._supervise(started, threading.Event()) == 1
    finally:
        for process in started:
            process.stop()
    assert "starting a fresh worker" not in capsys.readouterr().err
