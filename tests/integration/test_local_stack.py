"""`captioner up` as a user runs it, driven by the README's own curl examples, then stopped with SIGTERM."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import torch
from botocore.config import Config
from pytest_httpserver import HTTPServer

from cli.processes import ManagedProcess, free_ports
from tests.conftest import TINY_MODEL
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import CAPTIONER, ROOT
from worker.model.captioner import pick_dtype

pytestmark = pytest.mark.integration

CAT = Scene("circle", "red", "blue")
DOG = Scene("triangle", "yellow", "black")


def descendants(pid: int) -> set[int]:
    """Every process below pid, read from /proc (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def readme_commands(program: str) -> list[str]:
    """The README's example commands of one program, joined across their line continuations."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    commands = [block.replace("\\\n", " ") for block in blocks]
    lines = [line.strip() for block in commands for line in block.splitlines()]
    return [line for line in lines if line.startswith(f"{program} ")]


def png(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, (320, 240)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_curl(command: str, cwd: Path) -> dict[str, Any]:
    """Run an example as a user would, with the key `captioner up` printed exported (as it tells them to)."""
    output = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=30,
                            check=True, env=user_env()).stdout
    parsed: dict[str, Any] = json.loads(output)
    return parsed


# What the user exported after reading `captioner up`'s output: its API key.
EXPORTED: dict[str, str] = {}


def user_env() -> dict[str, str]:
    return {**os.environ, **EXPORTED}


def test_captioner_up_serves_the_readme_examples_and_stops_cleanly(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONER_", "AWS_", "S3_", "REDIS_"))}
    env |= {"CAPTIONER_ALLOW_PRIVATE_NETWORKS": "true", "CAPTIONER_OUTBOUND_ALLOWED_PORTS": "*",
            "CAPTIONER_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "up.log"
    up = ManagedProcess(
        "captioner up",
        [*CAPTIONER, "up", "--port", str(port), "--model", str(TINY_MODEL),
         "--data-dir", str(tmp_path / "data")],
        log, env=env, cwd=ROOT, ready=lambda: "captioner: ready at" in log.read_text(),
    ).start()
    try:
        up.wait_ready(180)
        assert f"ready at http://127.0.0.1:{port}" in log.read_text()
        exported = re.search(r"export CAPTIONER_API_KEY=(cap_\S+)", log.read_text())
        assert exported, log.read_text()
        EXPORTED["CAPTIONER_API_KEY"] = exported[1]
        assert (tmp_path / "data" / "api_key").read_text() == exported[1]
        without_key = requests.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=5)
        assert without_key.status_code == 401  # the stack is not open

        httpserver.expect_request("/cat.jpg").respond_with_data(png(CAT), content_type="image/png")
        (tmp_path / "cat.jpg").write_bytes(png(CAT))
        (tmp_path / "dog.png").write_bytes(png(DOG))
        commands = readme_commands("curl")
        submits = [c for c in commands if "/v1/jobs " in c or c.endswith("/v1/jobs")]
        assert len(submits) == 2, commands  # the JSON example and the multipart example
        expectations = [[f"a picture of {CAT.caption}"], [CAT.caption, DOG.caption]]
        for example, expected in zip(submits, expectations, strict=True):
            command = example.replace("localhost:8000", f"127.0.0.1:{port}").replace(
                "https://example.com/cat.jpg", httpserver.url_for("/cat.jpg"))
            job = run_curl(command, tmp_path)
            assert job["status"] in ("queued", "running", "succeeded")
            poll = next(c for c in commands if "/v1/jobs/<id>" in c)
            deadline = time.monotonic() + 60
            while job["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, up.log_tail()
                time.sleep(0.2)
                job = run_curl(poll.replace("localhost:8000", f"127.0.0.1:{port}").replace("<id>", job["id"]),
                               tmp_path)
            assert [r.get("caption") for r in job["results"]] == expected

        # The submit-and-wait example answers with the finished job, no poll needed.
        (waiting,) = [c for c in commands if "/v1/jobs?wait=" in c]
        job = run_curl(waiting.replace("localhost:8000", f"127.0.0.1:{port}"), tmp_path)
        assert job["status"] == "succeeded" and [r["caption"] for r in job["results"]] == [CAT.caption], job
        # CAPTIONER_DTYPE=auto: bf16 on CPUs that compute it, which the captions above survived.
        assert f"on cpu ({pick_dtype(torch.device('cpu'))})" in (tmp_path / "data" / "logs" / "worker.log").read_text()

        caption_as_the_readme_shows_from_python(port, tmp_path, log.read_text())
        caption_a_bucket_as_the_readme_shows(log.read_text(), port, tmp_path, up)
        caption_a_folder_as_the_readme_shows(port, tmp_path)
        serves_on_after_its_worker_and_api_are_killed(up, log, port, tmp_path, waiting)

        stops_cleanly_on_sigterm(up, port)
    finally:
        up.stop()


def stops_cleanly_on_sigterm(up: ManagedProcess, port: int) -> None:
    children = descendants(up.pid)
    assert len(children) >= 4  # redis, weed, gunicorn (+ its workers), the worker
    up.signal(signal.SIGTERM)
    assert up.process is not None
    assert up.process.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], "children outlived captioner up"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def serves_on_after_its_worker_and_api_are_killed(
    up: ManagedProcess, log: Path, port: int, cwd: Path, waiting: str
) -> None:
    """A supervisor: the worker and the API SIGKILLed, each is started again, and the README's example works."""
    for words in ((b"cli.main", b"worker"), (b"gunicorn",)):  # `captioner api` execs gunicorn
        os.kill(child_running(up.pid, words), signal.SIGKILL)
    deadline = time.monotonic() + 60
    for said in ("worker: it exited (code -9)", "api: it exited (code -9)", "worker started again",
                 "api started again"):
        while said not in log.read_text():
            assert time.monotonic() < deadline, f"{said!r} not in:\n{log.read_text()}"
            time.sleep(0.1)
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                break
        except (requests.ConnectionError, requests.Timeout):  # a process just started may be slow to answer
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    job = run_curl(waiting.replace("localhost:8000", f"127.0.0.1:{port}"), cwd)
    assert job["status"] == "succeeded" and [r["caption"] for r in job["results"]] == [CAT.caption], job


def child_running(parent: int, words: tuple[bytes, ...]) -> int:
    """The pid of `parent`'s child whose command line holds these words."""
    for pid in descendants(parent):
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            stat = (Path("/proc") / str(pid) / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and all(word in argv for word in words):
            return pid
    raise AssertionError(f"no child of {parent} runs {words}")


def caption_as_the_readme_shows_from_python(port: int, cwd: Path, up_log: str) -> None:
    """The README's Python examples (the client's, then the OpenAI SDK's), as written but for the address and the
    served model (here the tiny one), which `captioner up` prints."""
    assert f"OpenAI-compatible at base_url http://127.0.0.1:{port}/v1, model 'tiny_blip'" in up_log
    examples = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert [("captioner.client" in e, "openai" in e) for e in examples] == [(True, False), (False, True)]
    for example in examples:
        script = example.replace("localhost:8000", f"127.0.0.1:{port}").replace(
            "Salesforce/blip-image-captioning-base", TINY_MODEL.name)
        output = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                                timeout=60, check=True, env=user_env()).stdout
        assert output.strip() == CAT.caption


def caption_a_folder_as_the_readme_shows(port: int, cwd: Path) -> None:
    """The README's `captioner caption` example, as written, on a folder of two images."""
    (cwd / "photos").mkdir()
    (cwd / "photos" / "cat.png").write_bytes(png(CAT))
    (cwd / "photos" / "dog.png").write_bytes(png(DOG))
    (example,) = readme_commands("captioner caption")
    _, *args = shlex.split(example)
    env = user_env() | {"CAPTIONER_API_URL": f"http://127.0.0.1:{port}"}
    done = subprocess.run([*CAPTIONER, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
                          env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (cwd / "captions.jsonl").read_text().splitlines()]
    assert {line["path"]: line["caption"] for line in lines} == {"photos/cat.png": CAT.caption,
                                                                 "photos/dog.png": DOG.caption}


def caption_a_bucket_as_the_readme_shows(up_log: str, port: int, cwd: Path, up: ManagedProcess) -> None:
    """Put two images in the local S3 that `captioner up` printed, then run the README's bulk examples."""
    endpoint = re.search(r"S3 at (http://\S+) \(access key (\S+), secret key (\S+)\)", up_log)
    assert endpoint, up_log
    s3 = boto3.client("s3", endpoint_url=endpoint[1], region_name="us-east-1", aws_access_key_id=endpoint[2],
                      aws_secret_access_key=endpoint[3], config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="photos")
    s3.put_object(Bucket="photos", Key="2024/cat.jpg", Body=png(CAT))
    s3.put_object(Bucket="photos", Key="2024/dog.png", Body=png(DOG))
    local = f"127.0.0.1:{port}"
    commands = readme_commands("curl")
    submit = next(c for c in commands if "/v1/bulk " in c).replace("localhost:8000", local)
    poll = next(c for c in commands if "/v1/bulk/<id>" in c).replace("localhost:8000", local)
    job = run_curl(submit, cwd)
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, up.log_tail()
        time.sleep(0.2)
        job = run_curl(poll.replace("<id>", job["id"]), cwd)
    assert job["status"] == "succeeded", job
    manifest = json.loads(s3.get_object(Bucket="photos", Key="captioner-results/2024/manifest.json")["Body"].read())
    lines = [json.loads(line) for key in manifest["result_files"]
             for line in s3.get_object(Bucket="photos", Key=key)["Body"].read().decode().splitlines()]
    assert {line["key"]: line["caption"] for line in lines} == {"2024/cat.jpg": CAT.caption,
                                                               "2024/dog.png": DOG.caption}

    (cli_example,) = readme_commands("captioner bulk")
    _, *args = shlex.split(cli_example.replace("localhost:8000", local))
    done = subprocess.run([*CAPTIONER, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False, env=user_env())
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout)
    # Its options differ from the curl example's (default max_new_tokens), so both images are captioned again.
    assert again["status"] == "succeeded" and again["progress"]["captioned"] == 2, again
