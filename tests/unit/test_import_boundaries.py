"""The process boundaries of DESIGN.md, proven in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(output.split())


def test_the_api_never_imports_torch_or_the_worker() -> None:
    loaded = modules_after("import api.wsgi")
    assert "flask" in loaded and "api" in loaded  # the probe really imported the app
    assert not loaded & {"torch", "transformers", "worker", "PIL"}


def test_the_model_code_needs_only_torch_transformers_and_pillow() -> None:
    loaded = modules_after("import worker.captioner")
    assert "torch" in loaded and "transformers" in loaded
    service_only = {"celery", "kombu", "redis", "boto3", "botocore", "flask", "common", "pydantic_settings"}
    assert not loaded & service_only
