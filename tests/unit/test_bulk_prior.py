"""Reading the previous run's results beside the listing, on a real S3 server."""

from __future__ import annotations

from datetime import UTC, datetime

from common.bulk_schemas import BulkManifest, BulkOutput, BulkSource, BulkStatus, ChunkFiles, ManifestCounts, ResultLine
from common.schemas import GenerationOptions
from common.settings import Settings
from common.storage import ObjectStorage
from worker.bulk.prior import PriorResults


def line(key: str) -> ResultLine:
    return ResultLine(key=key, etag=f"etag-{key}", caption=f"caption of {key}", model="m", prompt=None,
                      options=GenerationOptions())


def manifest_with(storage: ObjectStorage, chunks: list[list[str]]) -> BulkManifest:
    files = []
    for index, keys in enumerate(chunks):
        key = f"runs/r/results/part-{index:06d}.jsonl"
        storage.put(key, "".join(line(k).model_dump_json() + "\n" for k in keys).encode())
        files.append(ChunkFiles(index=index, first_key=keys[0], last_key=keys[-1], results_key=key,
                                errors_key=None, captioned=len(keys), failed=0, skipped=0))
    now = datetime.now(UTC)
    return BulkManifest(
        bulk_id="r", status=BulkStatus.SUCCEEDED, complete=True, source=BulkSource(bucket="photos"),
        output=BulkOutput(bucket="photos"), model="m", prompt=None, options=GenerationOptions(), created_at=now,
        completed_at=now, counts=ManifestCounts(), result_files=[f.results_key or "" for f in files],
        error_files=[], chunks=files, manifest_key="runs/r/manifest.json",
    )


def test_lookups_in_key_order_find_every_earlier_result_and_nothing_else(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    manifest = manifest_with(storage, [["a", "c", "e"], ["g", "i"], ["k"]])
    prior = PriorResults(storage, manifest, start_after="")
    found = {key: prior.lookup(key) for key in ["a", "b", "c", "d", "e", "f", "g", "i", "j", "k", "z"]}
    assert {key for key, value in found.items() if value} == {"a", "c", "e", "g", "i", "k"}
    assert found["g"] == line("g")


def test_a_resumed_listing_starts_in_the_file_that_holds_its_next_key(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    manifest = manifest_with(storage, [["a", "c"], ["e", "g"], ["i"]])
    storage.put(manifest.chunks[0].results_key or "", b"this file must not be read\n")
    prior = PriorResults(storage, manifest, start_after="e")
    assert prior.lookup("e") is None  # at or before the cursor: listed by an earlier step
    assert prior.lookup("g") == line("g") and prior.lookup("i") == line("i")
