"""The previous run's results, read in key order beside the listing, so unchanged objects are not redone.

Both the listing and a complete run's result files are in key order (a run's chunks are consecutive
stretches of the listing), so one forward pass over each finds every reusable result with one results
file in memory at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from common.bulk_schemas import BulkManifest, ResultLine
from common.storage import ObjectStorage


class PriorResults:
    """Looks up keys in ascending order; each lookup moves the reader forward."""

    def __init__(self, storage: ObjectStorage, manifest: BulkManifest, start_after: str) -> None:
        chunks = [c for c in manifest.chunks if c.results_key]
        # Skip straight to the first file that can hold keys after start_after (a resumed listing).
        first = bisect.bisect_right([c.last_key for c in chunks], start_after)
        self._files = [c.results_key for c in chunks[first:] if c.results_key]
        self._storage = storage
        self._lines = self._read(start_after)
        self._head = next(self._lines, None)

    def _read(self, start_after: str) -> Iterator[ResultLine]:
        for key in self._files:
            text = self._storage.get_text(key)
            for raw in (text or "").splitlines():
                line = ResultLine.model_validate_json(raw)
                if line.key > start_after:
                    yield line

    def lookup(self, key: str) -> ResultLine | None:
        """The previous result for `key`, if it had one; keys must come in ascending order."""
        while self._head is not None and self._head.key < key:
            self._head = next(self._lines, None)
        return self._head if self._head is not None and self._head.key == key else None
