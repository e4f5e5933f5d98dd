"""What `captioner up` sets up for its users: a key made once and kept with its data, or the open mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.stack import UP_TENANT, _credentials
from common.settings import Settings
from common.tenants import TenantStore


def test_a_key_is_made_on_first_start_and_kept(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"REDIS_URL": settings.redis_url}
    _credentials(env, tmp_path)
    first = capsys.readouterr().out
    key = (tmp_path / "api_key").read_text()
    assert f"export CAPTIONER_API_KEY={key}" in first
    store = TenantStore.from_url(settings.redis_url)
    found = store.resolve(key)
    assert found is not None and found.tenant == UP_TENANT and found.limits.allows_bulk("any-bucket")
    assert f"signed with {store.webhook_secret(UP_TENANT)}" in first
    assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0  # the user's alone
    _credentials(env, tmp_path)  # a restart keeps the key
    assert (tmp_path / "api_key").read_text() == key
    assert "CAPTIONER_AUTH" not in env
    store.revoke(found.key_id)
    _credentials(env, tmp_path)  # a key Redis no longer honours is replaced
    assert (tmp_path / "api_key").read_text() != key


def test_no_auth_serves_openly_and_signs_with_a_local_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"CAPTIONER_AUTH": "off"}
    _credentials(env, tmp_path)
    out = capsys.readouterr().out
    assert "no API keys" in out and env["CAPTIONER_WEBHOOK_SECRET"].startswith("whsec_")
    assert env["CAPTIONER_WEBHOOK_SECRET"] in out and not (tmp_path / "api_key").exists()
