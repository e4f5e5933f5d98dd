"""Where a bulk run's files go under its output prefix, and which source keys it takes.

    {output}manifest.json                          the latest complete run's manifest (the next run reads it)
    {output}runs/{bulk id}/manifest.json           this run's manifest: counts, result and error files
    {output}runs/{bulk id}/results/part-NNNNNN.jsonl   one file per chunk, written whole, so a chunk that runs
    {output}runs/{bulk id}/errors/part-NNNNNN.jsonl    twice replaces its file instead of adding lines
"""

from __future__ import annotations

import fnmatch

from common.bulk_schemas import BulkOutput, BulkSource


def run_prefix(output: BulkOutput, bulk_id: str) -> str:
    return f"{output.prefix}runs/{bulk_id}/"


def results_key(output: BulkOutput, bulk_id: str, chunk: int) -> str:
    return f"{run_prefix(output, bulk_id)}results/part-{chunk:06d}.jsonl"


def errors_key(output: BulkOutput, bulk_id: str, chunk: int) -> str:
    return f"{run_prefix(output, bulk_id)}errors/part-{chunk:06d}.jsonl"


def run_manifest_key(output: BulkOutput, bulk_id: str) -> str:
    return f"{run_prefix(output, bulk_id)}manifest.json"


def latest_manifest_key(output: BulkOutput) -> str:
    return f"{output.prefix}manifest.json"


class KeyFilter:
    """Which listed keys a run captions: those the include patterns match, outside the run's own output.

    A pattern without "/" matches the file name ("*.jpg"); one with "/" matches the key below the source
    prefix ("2024/*.png"; as in fnmatch, "*" matches "/" too). Case is ignored: "*.jpg" takes "IMG_1.JPG".
    """

    def __init__(self, source: BulkSource, output: BulkOutput) -> None:
        self._prefix = source.prefix
        self._patterns = [pattern.lower() for pattern in source.include]
        # Results written inside the listed prefix must not be listed as work by the next run.
        self._own_files = (
            (f"{output.prefix}runs/", latest_manifest_key(output)) if output.bucket == source.bucket else None
        )

    def __call__(self, key: str) -> bool:
        if self._own_files is not None and (key.startswith(self._own_files[0]) or key == self._own_files[1]):
            return False
        relative = key[len(self._prefix):].lower()
        name = relative.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(relative if "/" in p else name, p) for p in self._patterns)
