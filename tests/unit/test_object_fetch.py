"""Fetching S3 objects from presigned URLs (what decoding processes do for bulk images), on a real S3 server:
the bytes, and errors that mean what ObjectStorage.get's callers make of boto3's."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import threading
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from common.errors import UPLOAD, ImageFetchError, ImageTooLarge
from common.settings import Settings
from common.storage import ObjectStorage
from worker.decode.fetch import fetch_object


def test_a_presigned_get_gives_the_object_s_bytes(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    payload = bytes(range(256)) * 400
    storage.put("fetch/one", payload)
    assert fetch_object(storage.presigned_get("fetch/one"), max_bytes=len(payload)) == payload


def test_an_object_over_the_limit_is_too_large(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    storage.put("fetch/big", b"x" * 2048)
    with pytest.raises(ImageTooLarge):
        fetch_object(storage.presigned_get("fetch/big"), max_bytes=1024)


def test_a_missing_object_is_a_per_image_error(settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    storage.ensure_bucket()
    with pytest.raises(ImageFetchError, match="NoSuchKey"):
        fetch_object(storage.presigned_get("fetch/nope"), max_bytes=1024)


@contextlib.contextmanager
def s3_answering(status: int, code: str) -> Iterator[tuple[str, list[str]]]:
    """A server that answers every GET with `status` and an S3 error document naming `code`: its URL, and the
    paths it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = f"<Error><Code>{code}</Code><Message>as S3 says it</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/bucket/key", asked
    finally:
        server.shutdown()
        thread.join()


def test_s3_failing_past_the_retries_is_s3_s_problem_not_the_image_s() -> None:
    with s3_answering(503, "SlowDown") as (url, asked):
        with pytest.raises(RuntimeError, match=r"S3 answered 503 \(SlowDown\)"):
            fetch_object(url, max_bytes=1024)
        assert len(asked) == 4  # the first try and 3 retries


def test_s3_away_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="could not be reached"):
        fetch_object("http://127.0.0.1:9/bucket/key", max_bytes=1024)


def test_the_stored_bytes_come_back_as_stored_even_when_marked_gzip(settings: Settings) -> None:
    """boto3 does not gunzip what an uploader marked Content-Encoding: gzip; neither does the fetch."""
    storage = ObjectStorage.from_settings(settings)
    storage.ensure_bucket()
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.aws_region,
                          aws_access_key_id=settings.aws_access_key_id,
                          aws_secret_access_key=settings.aws_secret_access_key,
                          config=Config(s3={"addressing_style": "path"}))
    packed = gzip.compress(b"an image's bytes, as the uploader gzipped them")
    client.put_object(Bucket=settings.s3_bucket, Key="fetch/gzipped", Body=packed, ContentEncoding="gzip")
    assert fetch_object(storage.presigned_get("fetch/gzipped"), max_bytes=1024) == packed
    assert storage.get("fetch/gzipped", max_bytes=1024) == packed


def test_a_forbidden_object_is_the_image_s_problem_in_a_user_s_bucket_and_ours_in_our_own() -> None:
    with s3_answering(403, "AccessDenied") as (url, _):
        with pytest.raises(ImageFetchError, match=r"could not be read \(AccessDenied\)"):
            fetch_object(url, max_bytes=1024)  # a bulk job's source bucket
        with pytest.raises(RuntimeError, match="S3 answered 403"):
            fetch_object(url, max_bytes=1024, unreadable=UPLOAD)  # the service's own bucket: a job retry
