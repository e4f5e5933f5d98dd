"""The running stack (gunicorn, a worker, Redis, S3) driven from its own /openapi.json by schemathesis: for every
operation, the description's examples (which caption a real image), boundary cases and random data, valid and
not. Every answer must be documented (its status code, content type, headers and body schema, each server-sent
event of a stream included), and none may be a 5xx.

schemathesis runs as its command line (`st run`) rather than its pytest plugin, whose fixture-based loading reads a
private attribute that pytest 9 removed. It runs as a tenant of its own, so that the jobs and files it makes disturb
no other test, with one worker thread (two raced inside Hypothesis here) and a fixed seed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from common.tenants import TenantStore
from tests.conftest import GENEROUS
from tests.integration.conftest import Stack

ST = Path(sys.executable).parent / "st"
# What an answer must meet. Not negative_data_rejection: pydantic's lax coercions (0 for false, say) accept some
# values the JSON Schema calls invalid, on purpose.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")
# Random cases per operation, beside every example and boundary case (the suite's time is short: 30 took 25 s).
MAX_EXAMPLES = 15


def conformance_run(url: str, key: str, junit: Path) -> subprocess.CompletedProcess[str]:
    """One schemathesis run against the API at `url`; its exit code is 0 only if every check held."""
    command = [str(ST), "run", f"{url}/openapi.json", "--header", f"Authorization: Bearer {key}",
               "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing",
               "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", "17", "--request-timeout", "60",
               "--continue-on-failure", "--report", "junit", "--report-junit-path", str(junit)]
    # In the report's folder: schemathesis keeps a cache (.schemathesis/) where it runs.
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=junit.parent)


def test_every_answer_is_documented_and_none_is_a_server_error(stack: Stack, tmp_path: Path) -> None:
    key = TenantStore.from_url(stack.settings.redis_url).create_key("conformance", "conformance", GENEROUS).key
    run = conformance_run(stack.url, key, tmp_path / "junit.xml")
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    paths = stack.http.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]
    # Every operation but the description's own, which schemathesis leaves out.
    described = {f"{method.upper()} {path}" for path, item in paths.items() for method in item} - {"GET /openapi.json"}
    tested = set(re.findall(r'<testcase name="([^"]+)"', (tmp_path / "junit.xml").read_text()))
    assert tested == described
