"""Fetching user URLs: caps on size, no redirects, and no private addresses unless allowed."""

from __future__ import annotations

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from common.errors import ImageFetchError, ImageTooLarge
from common.outbound import fetch_bytes


def fetch(url: str, max_bytes: int = 1000, allow_private: bool = True) -> bytes:
    return fetch_bytes(url, max_bytes=max_bytes, timeout_s=5, allow_private=allow_private)


def test_fetches_a_body(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a.png").respond_with_data(b"png-bytes")
    assert fetch(httpserver.url_for("/a.png")) == b"png-bytes"


def test_refuses_bodies_over_the_cap_declared_or_not(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/declared").respond_with_data(b"x" * 2000)
    httpserver.expect_request("/streamed").respond_with_handler(
        lambda request: Response(iter([b"x" * 600, b"x" * 600]), content_type="image/png")
    )
    with pytest.raises(ImageTooLarge):
        fetch(httpserver.url_for("/declared"))
    with pytest.raises(ImageTooLarge):
        fetch(httpserver.url_for("/streamed"))


def test_does_not_follow_redirects(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/moved").respond_with_data("", status=302, headers={"Location": "/a.png"})
    httpserver.expect_request("/a.png").respond_with_data(b"png-bytes")
    with pytest.raises(ImageFetchError, match="redirect"):
        fetch(httpserver.url_for("/moved"))
    assert [r.path for r, _ in httpserver.log] == ["/moved"]


def test_error_statuses_are_fetch_errors(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    with pytest.raises(ImageFetchError, match="404"):
        fetch(httpserver.url_for("/gone"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254"])
def test_private_addresses_are_refused_by_default(httpserver: HTTPServer, host: str) -> None:
    url = httpserver.url_for("/a.png").replace("localhost", host)
    with pytest.raises(ImageFetchError, match="non-public"):
        fetch(url, allow_private=False)
    assert httpserver.log == []


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "http://u:p@example.com/"])
def test_only_plain_http_urls(url: str) -> None:
    with pytest.raises(ImageFetchError):
        fetch(url)
