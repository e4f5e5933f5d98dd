"""The process and package boundaries of docs/design.md, proven in fresh interpreters and in the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The only worker code that may import torch: the model, the JPEG decoder that works on the model's device, and
# the sizing of "auto" settings, which reads the GPU's memory.
TORCH_ALLOWED = ("worker/model/", "worker/decode/gpu_jpeg.py", "worker/sizing.py")
TRANSFORMERS_ALLOWED = ("worker/model/",)


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`: top-level names, and common's own."""
    probe = (f"{code}\nimport sys\n"
             "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules} | "
             "{m for m in sys.modules if m.startswith('common.')})))")
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(output.split())


def test_the_api_never_imports_torch_or_the_worker() -> None:
    loaded = modules_after("import api.wsgi")
    assert "flask" in loaded and "api" in loaded  # the probe really imported the app
    assert not loaded & {"torch", "transformers", "worker", "PIL"}


def test_the_python_client_needs_neither_torch_nor_the_service_s_processes() -> None:
    loaded = modules_after("import captioner.client")
    assert not loaded & {"torch", "transformers", "PIL", "flask", "celery", "worker", "api"}


def test_the_model_code_needs_only_torch_transformers_and_pillow() -> None:
    loaded = modules_after("import worker.model.captioner")
    assert "torch" in loaded and "transformers" in loaded
    service_only = {"celery", "kombu", "redis", "boto3", "botocore", "flask", "pydantic_settings", "pydantic"}
    assert not loaded & service_only
    # Of the service, only its plain-Python errors and version checks.
    assert {m for m in loaded if m.startswith("common.")} <= {"common.errors", "common.compat"}


@pytest.mark.parametrize("module", [
    "worker.jobs.pipeline", "worker.jobs.tasks", "worker.jobs.batches", "worker.bulk.runner",
    "worker.decode.threads", "worker.decode.processes", "worker.health",
])
def test_serving_jobs_and_decoding_on_the_cpu_never_load_torch(module: str) -> None:
    loaded = modules_after(f"import {module}")
    assert "worker" in loaded  # the probe really imported it
    assert not loaded & {"torch", "transformers"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages `path` imports at run time (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for stmt in block.body for node in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_model_package_imports_transformers_and_torch() -> None:
    offenders = []
    for path in sorted((ROOT / "worker").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        packages = imported_packages(path)
        if "torch" in packages and not name.startswith(TORCH_ALLOWED):
            offenders.append(f"{name} imports torch")
        if "transformers" in packages and not name.startswith(TRANSFORMERS_ALLOWED):
            offenders.append(f"{name} imports transformers")
    assert not offenders
    # The check sees imports: the model package's do count.
    assert "transformers" in imported_packages(ROOT / "worker" / "model" / "captioner.py")
