"""The library versions that the pieces reaching into libraries' private parts were checked on.

`common/broker.py` overrides kombu's Redis client creation; `worker/model/fast_blip.py` and
`worker/model/generation.py` reproduce BLIP's forward pass and `generate()` from transformers' weights. On a
version outside its range, each steps aside for the library's own code (slower, never wrong) and says so in the
log; tests/unit/test_compat.py fails when the lock holds such a version, so a lock refresh cannot slip past them.
Widen a range only after the suite passes on the new version.

Standard library and `packaging` only: the model code, which imports nothing else of the service, uses it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet

CHECKED: dict[str, SpecifierSet] = {
    "kombu": SpecifierSet(">=5.7,<5.8"),
    "transformers": SpecifierSet(">=5.17,<5.26"),
}


def unchecked_reason(package: str) -> str | None:
    """Why `package`'s installed version is not one its private parts were checked on, or None if it is."""
    try:
        installed = version(package)
    except PackageNotFoundError:
        return f"{package} is not installed"
    if CHECKED[package].contains(installed, prereleases=True):
        return None
    return f"{package} {installed} is not a version this was checked on ({package}{CHECKED[package]})"
