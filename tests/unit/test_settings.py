"""Settings: environment names, and docs/settings.md, .env.example and docker-compose.yml agreeing with them; Redis's
persistence as deployed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cli.processes import REDIS_PERSISTENCE, redis_process
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def env_names() -> set[str]:
    """Every environment variable Settings reads."""
    return {name for field in Settings.model_fields for name in Settings.env_names(field)}


def test_reads_prefixed_and_conventional_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONER_BATCH_SIZE", "7")
    monkeypatch.setenv("REDIS_URL", "redis://example:1/2")
    monkeypatch.setenv("S3_ENDPOINT_URL", "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_REGION", raising=False)
    settings = Settings()
    assert settings.batch_size == 7 and settings.redis_url == "redis://example:1/2"
    assert settings.s3_endpoint_url is None  # empty means AWS itself
    assert settings.aws_region == "eu-west-3"


def test_settings_survive_the_trip_through_a_child_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(redis_url="redis://r:1/0", batch_size=3, allow_private_networks=True,
                        webhook_secret="whsec_c2VjcmV0", s3_endpoint_url=None, webhook_first_retry_seconds=0.25,
                        decode_processes=3)
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONER_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="batch_size"):
        Settings()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        *[("decode_processes", value, expected) for value, expected in [("auto", "auto"), ("3", 3), ("0", 0)]],
        ("batch_size", "auto", "auto"),
        ("batch_size", "64", 64),
        ("worker_concurrency", "auto", "auto"),
        ("worker_concurrency", "200", 200),
        *[(field, None, "auto") for field in ("decode_processes", "batch_size", "worker_concurrency")],
    ],
)
def test_settings_that_default_to_auto_take_a_count_too(monkeypatch: pytest.MonkeyPatch, field: str,
                                                        value: str | None, expected: int | str) -> None:
    variable = f"CAPTIONER_{field.upper()}"
    if value is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, value)
    assert getattr(Settings(), field) == expected


@pytest.mark.parametrize("value", ["-1", "many", "257"])
def test_a_bad_decode_processes_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CAPTIONER_DECODE_PROCESSES", value)
    with pytest.raises(ValueError, match="decode_processes"):
        Settings()


def documented_rows(page: str) -> set[str]:
    """The variables that head a row of the page's tables: the names in each row's first cell."""
    rows = (line.split("|")[1] for line in page.splitlines() if line.startswith("| `"))
    return {name for cell in rows for name in re.findall(r"`([A-Z0-9_]+)`", cell)}


def test_the_settings_page_documents_every_setting() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    rows = documented_rows(page)
    # Every field has a row of its own, under its preferred name; other names it is read from are mentioned.
    missing = sorted(Settings.env_names(field)[0] for field in Settings.model_fields
                     if Settings.env_names(field)[0] not in rows)
    assert not missing, f"docs/settings.md has no row for {missing}"
    unmentioned = sorted(name for name in env_names() if f"`{name}`" not in page)
    assert not unmentioned, f"docs/settings.md does not mention {unmentioned}"
    unknown = sorted(rows - env_names())
    assert not unknown, f"docs/settings.md documents settings the code does not read: {unknown}"


def test_env_example_sets_only_settings_the_code_reads() -> None:
    lines = [line.strip() for line in (ROOT / ".env.example").read_text().splitlines()]
    assignments = [line for line in lines if line and not line.startswith("#")]
    assert assignments, ".env.example sets nothing"
    names = [line.split("=", 1)[0] for line in assignments]
    assert all("=" in line for line in assignments), assignments
    unknown = sorted(set(names) - env_names())
    assert not unknown, f".env.example sets unknown settings {unknown}"
    assert len(names) == len(set(names)), f".env.example sets a variable twice: {names}"


def test_docker_compose_sets_only_settings_the_code_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in ("api", "worker"):
        environment = compose["services"][service]["environment"]
        unknown = set(environment) - env_names()
        assert not unknown, f"docker-compose.yml's {service} sets unknown settings {unknown}"
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert environment["S3_ENDPOINT_URL"] == "http://minio:9000"


def test_redis_runs_append_only_and_never_evicts_in_compose_and_the_local_stack(tmp_path: Path) -> None:
    """The persistence docs/reliability.md's guarantee rests on ("Redis dies"), deployed and local alike."""
    assert REDIS_PERSISTENCE == ("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")
    redis = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    assert redis["command"] == ["redis-server", *REDIS_PERSISTENCE]
    assert redis["volumes"] == ["redis-data:/data"] and redis["restart"] == "unless-stopped"
    argv = redis_process(tmp_path, 6379, tmp_path / "redis.log").argv
    assert " ".join(REDIS_PERSISTENCE) in " ".join(argv)


def test_a_child_gets_these_settings_and_none_of_the_parent_s_own() -> None:
    settings = Settings(batch_size=3)
    env = settings.child_env({"PATH": "/bin", "CAPTIONER_MAX_PROMPT_CHARS": "5", "AWS_PROFILE": "x", "S3_X": "y"})
    assert env["PATH"] == "/bin" and env["CAPTIONER_BATCH_SIZE"] == "3"
    assert env["CAPTIONER_MAX_PROMPT_CHARS"] == str(settings.max_prompt_chars) != "5"  # ours, not the parent's
    assert "AWS_PROFILE" not in env and "S3_X" not in env
