"""S3 storage on a real S3 server (weed mini)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from common.errors import ImageTooLarge
from common.settings import Settings
from common.storage import ObjectStorage


def test_put_creates_the_bucket_and_get_reads_back(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    storage.put("uploads/a/0", b"\x89PNG payload", "image/png")
    assert storage.get("uploads/a/0", max_bytes=1024) == b"\x89PNG payload"


def test_get_refuses_objects_over_the_cap(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    storage.put("big", b"x" * 2048)
    with pytest.raises(ImageTooLarge):
        storage.get("big", max_bytes=1024)


def test_missing_key_raises_client_error(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    storage.ensure_bucket()
    with pytest.raises(ClientError):
        storage.get("nope", max_bytes=10)


def test_concurrent_first_use_creates_the_bucket_once(settings: Settings) -> None:
    """Several processes may race to create the bucket; every one of them must succeed."""
    stores = [ObjectStorage.from_settings(settings) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: s.put("k", b"v"), stores))
    assert stores[0].ping()


def test_lines_stream_with_their_offsets_whole_or_a_range(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    long_line = b"x" * (3 << 20)  # longer than one read of the stream
    content = b"first\n\n" + long_line + b"\nlast without a newline"
    storage.put("lines.jsonl", content)
    whole = list(storage.lines("lines.jsonl"))
    assert [line for _, line in whole] == content.split(b"\n")
    assert all(content[offset:offset + len(line)] == line for offset, line in whole)
    start, end = whole[2][0], whole[3][0]
    assert list(storage.lines("lines.jsonl", start, end)) == [(start, long_line)]
    assert list(storage.lines("lines.jsonl", end, len(content))) == [(end, b"last without a newline")]
    assert list(storage.lines("lines.jsonl", end, end)) == []
