"""`captioner keys` on real Redis: create (once shown), list (never shown), revoke (at once)."""

from __future__ import annotations

import json
import uuid

import pytest

from cli.main import main
from common.settings import Settings
from common.tenants import TenantStore


@pytest.fixture(autouse=True)
def service_redis(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_and_revoke(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    code, out, _ = run(capsys, "create", "--name", name, "--bulk-bucket", "photos", "--bulk-bucket",
                       "exports/captions/", "--max-in-flight", "64", "--rate-limit", "600/minute", "--json")
    assert code == 0
    made = json.loads(out)
    assert made["key"].startswith("cap_") and made["key_id"].startswith("key_")
    assert made["tenant"] == name and made["webhook_secret"].startswith("whsec_")
    assert made["bulk_buckets"] == ["photos", "exports/captions/"] and made["max_in_flight"] == 64
    store = TenantStore.from_url(settings.redis_url)
    assert store.resolve(made["key"]) is not None

    code, out, _ = run(capsys, "create", "--name", f"{name}-ci", "--tenant", name)
    assert code == 0 and f"tenant     {name}" in out and "shown only now" in out

    code, out, _ = run(capsys, "list", "--json")
    listed = {key["key_id"]: key for key in json.loads(out)}
    assert listed[made["key_id"]]["tenant"] == name and listed[made["key_id"]]["revoked_at"] is None
    assert made["key"] not in out  # never shown again

    code, out, _ = run(capsys, "revoke", made["key_id"])
    assert code == 0 and made["key_id"] in out
    assert store.resolve(made["key"]) is None
    code, out, _ = run(capsys, "list")
    assert f"{made['key_id']}  {name}" in out and "revoked" in out


def test_mistakes_are_said_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    assert run(capsys, "create", "--name", name)[0] == 0
    code, _, err = run(capsys, "create", "--name", name)
    assert code == 2 and "--tenant" in err  # joining an existing tenant is explicit
    code, _, err = run(capsys, "revoke", "key_nothere")
    assert code == 1 and "no key" in err


def test_rotating_a_webhook_secret_keeps_the_old_one_signing_for_the_overlap(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    code, out, _ = run(capsys, "create", "--name", name, "--json")
    old = json.loads(out)["webhook_secret"]
    code, out, _ = run(capsys, "rotate-webhook-secret", name, "--overlap-hours", "2", "--json")
    assert code == 0
    rotated = json.loads(out)
    assert rotated["tenant"] == name and rotated["webhook_secret"].startswith("whsec_")
    assert TenantStore.from_url(settings.redis_url).signing_secrets(name) == [rotated["webhook_secret"], old]

    code, out, _ = run(capsys, "rotate-webhook-secret", name, "--overlap-hours", "0")
    assert code == 0 and "signed with whsec_" in out
    assert TenantStore.from_url(settings.redis_url).signing_secrets(name) == [out.split()[3]]

    code, _, err = run(capsys, "rotate-webhook-secret", f"nobody-{uuid.uuid4().hex[:6]}")
    assert code == 2 and "no tenant" in err
    assert run(capsys, "rotate-webhook-secret", name, "--overlap-hours", "-1")[0] == 2
