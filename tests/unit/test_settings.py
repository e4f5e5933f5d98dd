"""Settings: environment names, and the README and docker-compose.yml agreeing with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def test_the_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in env_names() if f"`{name}`" not in readme)
    assert not missing, f"README.md does not document {missing}"


def test_docker_compose_sets_only_settings_the_code_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in ("api", "worker"):
        environment = compose["services"][service]["environment"]
        unknown = set(environment) - env_names()
        assert not unknown, f"docker-compose.yml's {service} sets unknown settings {unknown}"
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert environment["S3_ENDPOINT_URL"] == "http://minio:9000"


def test_a_child_gets_these_settings_and_none_of_the_parent_s_own() -> None:
    settings = Settings(batch_size=3)
    env = settings.child_env({"PATH": "/bin", "CAPTIONER_MAX_PROMPT_CHARS": "5", "AWS_PROFILE": "x", "S3_X": "y"})
    assert env["PATH"] == "/bin" and env["CAPTIONER_BATCH_SIZE"] == "3"
    assert env["CAPTIONER_MAX_PROMPT_CHARS"] == str(settings.max_prompt_chars) != "5"  # ours, not the parent's
    assert "AWS_PROFILE" not in env and "S3_X" not in env
