"""The pieces that reach into libraries' private parts: the lock holds versions they were checked on, and on any
other version they step aside for the library's own code."""

from __future__ import annotations

import pytest
from packaging.specifiers import SpecifierSet

from common import compat
from common.broker import KOMBU_TRANSPORT, TRANSPORT, transport


@pytest.mark.parametrize("package", sorted(compat.CHECKED))
def test_the_installed_version_is_one_the_private_parts_were_checked_on(package: str) -> None:
    # Fails after a lock refresh to a version outside the range: check the piece (docs/operations.md), then widen it.
    assert compat.unchecked_reason(package) is None


def test_an_unchecked_kombu_gets_kombus_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    assert transport() == TRANSPORT
    monkeypatch.setitem(compat.CHECKED, "kombu", SpecifierSet("<1"))
    reason = compat.unchecked_reason("kombu")
    assert reason is not None and "kombu" in reason and "<1" in reason
    assert transport() == KOMBU_TRANSPORT
