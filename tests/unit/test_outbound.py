"""Outbound requests: caps, no redirects, and SSRF refusals proven by canaries that must stay silent.

No test here may send a packet off the machine: the autouse `guard` refuses every connect() to a
non-local address (and records it), and public names resolve only through `fake_dns`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from werkzeug import Response

from common import outbound
from common.errors import ImageFetchError, ImageTooLarge, OutboundRequestError, UnsafeUrl
from common.outbound import OutboundPolicy, check_url, fetch_bytes, post
from common.settings import Settings

LOCAL = OutboundPolicy(allow_private=True, allowed_ports=None)
# Any port, so that only the address check stands between these tests and the canaries' random ports.
STRICT = OutboundPolicy(allow_private=False, allowed_ports=None)


def fetch(url: str, max_bytes: int = 1000, policy: OutboundPolicy = LOCAL, timeout_s: float = 5) -> bytes:
    return fetch_bytes(url, max_bytes, timeout_s, policy)


def _is_local(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback or (mapped or address).is_unspecified)


@dataclass
class Guard:
    attempts: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(autouse=True)
def guard(monkeypatch: pytest.MonkeyPatch) -> Guard:
    """Record every connect(); let local ones through (to the canaries) and refuse all others."""
    record = Guard()
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        record.attempts.append((address[0], address[1]))
        if not _is_local(address[0]):
            raise ConnectionRefusedError("test guard: no traffic to non-local addresses")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return record


@dataclass
class FakeDns:
    """getaddrinfo for made-up names: each name has a list of answers, one per lookup (the last repeats)."""

    real: Callable[..., Any]
    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        self.lookups.append(host)
        queue = self.answers[host]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return [info for address in answer for info in self.real(address, port, *args, **kwargs)]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    dns = FakeDns(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    return dns


def assert_refused(url: str, policy: OutboundPolicy = STRICT, match: str | None = "non-public") -> None:
    """check_url, fetch_bytes and post all refuse the URL."""
    with pytest.raises(UnsafeUrl, match=match) as refused:
        check_url(url, policy)
    assert refused.value.code == "unsafe_url"
    with pytest.raises(ImageFetchError, match=match):
        fetch_bytes(url, 1000, 5, policy)
    with pytest.raises(UnsafeUrl, match=match):
        post(url, b"{}", {"Content-Type": "application/json"}, 5, policy)


# Fetching images.


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
    assert fetch(httpserver.url_for("/declared"), max_bytes=2000) == b"x" * 2000


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


# Posting webhooks.


def test_post_sends_the_body_and_returns_the_answer(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/hook", method="POST", data=b'{"id": 1}', headers={"webhook-id": "msg_1"}
    ).respond_with_data("thanks", status=202, headers={"X-Reply": "yes"})
    response = post(httpserver.url_for("/hook?x=1"), b'{"id": 1}', {"webhook-id": "msg_1"}, 5, LOCAL)
    assert (response.status_code, response.body, response.headers["x-reply"]) == (202, b"thanks", "yes")
    (request, _), = httpserver.log
    assert request.query_string == b"x=1"
    assert request.headers["Host"] == f"localhost:{httpserver.port}"


def test_post_returns_redirects_without_following_them(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=307, headers={"Location": "/elsewhere"})
    response = post(httpserver.url_for("/hook"), b"{}", {}, 5, LOCAL)
    assert response.status_code == 307
    assert response.headers["location"].endswith("/elsewhere")
    assert [r.path for r, _ in httpserver.log] == ["/hook"]


def test_post_reads_only_a_prefix_of_the_answer(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data(b"y" * 100_000)
    assert post(httpserver.url_for("/hook"), b"{}", {}, 5, LOCAL, max_response_bytes=100).body == b"y" * 100


def test_post_network_failures_are_delivery_failures() -> None:
    with socket.socket() as unused:  # a port nobody listens on once this socket is closed
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OutboundRequestError) as failed:
        post(f"http://127.0.0.1:{port}/hook", b"{}", {}, 5, LOCAL)
    assert failed.value.code == "delivery_failed"


@pytest.fixture
def dripping_server() -> Iterator[tuple[int, Callable[[bytes, bytes], None]]]:
    """A raw server that sends `head` at once, then `tail` one byte every 50 ms."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    payload: list[tuple[bytes, bytes]] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            head, tail = payload[0]
            connection.sendall(head)
            for byte in tail:
                connection.sendall(bytes([byte]))
                time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], lambda head, tail: payload.append((head, tail))
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("head", "tail"),
    [(b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 30 + b"\r\n\r\n"),
     (b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n", b"z" * 30),
     (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"z" * 30)],  # cut short, it must not pass as whole
    ids=["headers", "body", "body-without-length"],
)
def test_a_slow_drip_is_cut_at_the_total_deadline(
    dripping_server: tuple[int, Callable[[bytes, bytes], None]], head: bytes, tail: bytes
) -> None:
    port, send = dripping_server
    send(head, tail)
    # Every byte comes well within any read timeout; only a deadline on the whole exchange stops it.
    started = time.monotonic()
    with pytest.raises(ImageFetchError, match="timed out"):
        fetch(f"http://127.0.0.1:{port}/slow", timeout_s=0.5)
    assert time.monotonic() - started < 1.0


# URL rules.


@pytest.mark.parametrize("userinfo", ["user:pw@", "user@", ":pw@", "@"])
def test_credentials_are_refused(httpserver: HTTPServer, userinfo: str) -> None:
    assert_refused(f"http://{userinfo}localhost:{httpserver.port}/a.png", LOCAL, match="credentials")
    assert httpserver.log == []


@pytest.mark.parametrize(
    "url",
    ["ftp://localhost:{port}/a.png", "file:///etc/passwd", "gopher://localhost:{port}/_x",
     "ws://localhost:{port}/", "data:image/png;base64,AAAA", "javascript:alert(1)",
     "//localhost:{port}/a.png", "localhost:{port}/a.png", "http:///a.png", "http://[::1/",
     "http://localhost:99999/", "http://localhost:0/", "http://a..b/"],
)
def test_only_well_formed_http_urls(httpserver: HTTPServer, url: str) -> None:
    assert_refused(url.format(port=httpserver.port), LOCAL, match=None)
    assert httpserver.log == []


def test_ports_other_than_the_allowed_ones_are_refused(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a.png").respond_with_data(b"png-bytes")
    url = httpserver.url_for("/a.png")
    assert_refused(url, OutboundPolicy(allow_private=True), match=f"Port {httpserver.port}")
    assert httpserver.log == []
    opened = OutboundPolicy(allow_private=True, allowed_ports=frozenset({httpserver.port}))
    assert fetch(url, policy=opened) == b"png-bytes"


def test_policy_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CAPTIONER_ALLOW_PRIVATE_NETWORKS", "CAPTIONER_OUTBOUND_ALLOWED_PORTS"):
        monkeypatch.delenv(name, raising=False)
    assert OutboundPolicy.from_settings(Settings()) == OutboundPolicy(False, frozenset({80, 443}))
    assert OutboundPolicy.from_settings(
        Settings(allow_private_networks=True, outbound_allowed_ports="*")
    ) == LOCAL
    assert OutboundPolicy.from_settings(
        Settings(outbound_allowed_ports="443, 8443")
    ).allowed_ports == frozenset({443, 8443})
    with pytest.raises(ValidationError):
        Settings(outbound_allowed_ports="http")


# The SSRF matrix: every form is refused by all three entry points, and no canary hears a thing.

# Forms that reach 127.0.0.1 (or would, through a gateway): aimed at the IPv4 canary's port.
LOOPBACK_V4 = ["127.0.0.1", "localhost", "127.0.0.2", "2130706433", "0x7f.1", "0x7f000001", "017700000001",
               "127.1", "0177.0.0.1", "0x7f.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]",
               "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "0.0.0.0", "0", "0x0"]
# Forms that reach ::1: aimed at the IPv6 canary's port.
LOOPBACK_V6 = ["[::1]", "[0:0:0:0:0:0:0:1]", "[::]"]
# Everything else: aimed at port 80, which the guard would refuse anyway.
OTHERS = ["10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "[fd12:3456::1]", "[fc00::1]",
          "100.64.0.1", "100.127.255.254", "169.254.169.254", "0xa9fea9fe", "2852039166",
          "0251.0376.0251.0376",
          "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::]",
          "[fd00:ec2::254]", "100.100.100.200", "168.63.129.16", "169.254.170.2", "169.254.1.1", "[fe80::1]",
          "[fec0::1]", "224.0.0.1", "239.255.255.250", "[ff02::1]", "255.255.255.255", "240.0.0.1",
          "198.18.0.1", "192.0.2.1", "192.0.0.1", "[2001:db8::1]", "[::ffff:10.0.0.1]", "[::ffff:0:7f00:1]",
          "[64:ff9b:1::1]", "[2001::1]", "[100::1]", "[4000::1]"]


@pytest.fixture
def canaries(request: pytest.FixtureRequest, httpserver_ipv4: HTTPServer) -> dict[str, HTTPServer]:
    """pytest-httpserver on 127.0.0.1 and, where the machine has IPv6 loopback, on ::1."""
    servers = {"v4": httpserver_ipv4}
    with contextlib.suppress(OSError):
        servers["v6"] = request.getfixturevalue("httpserver_ipv6")
    return servers


def assert_silent(canaries: dict[str, HTTPServer], guard: Guard) -> None:
    """No canary received a request, and no connection was even attempted."""
    assert [server.log for server in canaries.values()] == [[] for _ in canaries]
    assert guard.attempts == []


@pytest.mark.parametrize(
    ("host", "canary"),
    [(host, "v4") for host in LOOPBACK_V4] + [(host, "v6") for host in LOOPBACK_V6]
    + [(host, None) for host in OTHERS],
)
def test_non_public_addresses_are_refused(
    canaries: dict[str, HTTPServer], guard: Guard, host: str, canary: str | None
) -> None:
    if canary is not None and canary not in canaries:
        pytest.skip("this machine has no IPv6 loopback")
    port = canaries[canary].port if canary else 80
    assert_refused(f"http://{host}:{port}/hook")
    assert_silent(canaries, guard)


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "[fd00:ec2::254]", "100.100.100.200", "[::ffff:169.254.169.254]", "[fe80::1]",
     "0.0.0.0", "[::]", "224.0.0.1", "100.64.0.1", "255.255.255.255"],
)
def test_allowing_private_networks_still_refuses_metadata_and_special_addresses(
    canaries: dict[str, HTTPServer], guard: Guard, host: str
) -> None:
    assert_refused(f"http://{host}:{canaries['v4'].port}/hook", LOCAL)
    assert_silent(canaries, guard)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1", "[::ffff:127.0.0.1]",
             "[::ffff:7f00:1]"],
)
def test_the_odd_forms_really_reach_loopback_when_allowed(httpserver_ipv4: HTTPServer, host: str) -> None:
    """The matrix's control: these forms do reach the canary, so refusing them is what keeps it quiet."""
    httpserver_ipv4.expect_request("/a.png").respond_with_data(b"png-bytes")
    assert fetch(f"http://{host}:{httpserver_ipv4.port}/a.png") == b"png-bytes"


def test_every_resolved_address_must_pass(canaries: dict[str, HTTPServer], guard: Guard,
                                          fake_dns: FakeDns) -> None:
    fake_dns.answers["mixed.example"] = [["8.8.8.8", "127.0.0.1"]]
    fake_dns.answers["mixed-too.example"] = [["127.0.0.1", "8.8.8.8"]]
    for name in ("mixed.example", "mixed-too.example"):
        assert_refused(f"http://{name}:{canaries['v4'].port}/hook")
    assert_silent(canaries, guard)


def test_an_unresolvable_host_is_refused_at_submit_and_retryable_at_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_answer(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_answer)
    with pytest.raises(UnsafeUrl, match="could not be resolved"):
        check_url("https://hooks.example/in", STRICT)
    with pytest.raises(ImageFetchError, match="could not be resolved"):
        fetch("https://images.example/a.png", policy=STRICT)
    with pytest.raises(OutboundRequestError, match="could not be resolved"):
        post("https://hooks.example/in", b"{}", {}, 5, STRICT)


# Pinning: one lookup, and the connection goes to the address that was checked.


def test_a_rebinding_name_cannot_reach_loopback(canaries: dict[str, HTTPServer], guard: Guard,
                                                fake_dns: FakeDns) -> None:
    # The first answer is public and passes; any later lookup would answer loopback.
    fake_dns.answers["rebind.example"] = [["8.8.8.8"], ["127.0.0.1"]]
    port = canaries["v4"].port
    with pytest.raises(ImageFetchError):
        fetch(f"http://rebind.example:{port}/a.png", policy=STRICT)
    fake_dns.answers["rebind.example"] = [["8.8.8.8"], ["127.0.0.1"]]
    with pytest.raises(OutboundRequestError):
        post(f"http://rebind.example:{port}/hook", b"{}", {}, 5, STRICT)
    assert fake_dns.lookups == ["rebind.example", "rebind.example"]
    assert guard.attempts == [("8.8.8.8", port), ("8.8.8.8", port)]  # refused by the guard: never sent
    assert canaries["v4"].log == []


def test_the_host_header_keeps_the_name(httpserver: HTTPServer, fake_dns: FakeDns) -> None:
    fake_dns.answers["images.example"] = [["127.0.0.1"], []]
    fake_dns.answers["xn--bcher-kva.example"] = [["127.0.0.1"], []]
    httpserver.expect_request("/a.png").respond_with_data(b"png-bytes")
    assert fetch(f"http://images.example:{httpserver.port}/a.png") == b"png-bytes"
    assert fetch(f"http://bücher.example:{httpserver.port}/a.png") == b"png-bytes"
    assert [r.headers["Host"] for r, _ in httpserver.log] == [
        f"images.example:{httpserver.port}", f"xn--bcher-kva.example:{httpserver.port}"]
    assert fake_dns.lookups == ["images.example", "xn--bcher-kva.example"]


@dataclass
class TlsServer:
    server: HTTPServer
    ca_file: Path
    sni: list[str | None]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """An HTTPS pytest-httpserver on 127.0.0.1 whose self-signed certificate names images.example."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=images.example", "-addext", "subjectAltName=DNS:images.example",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sni: list[str | None] = []

    def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        sni.append(name)

    context.sni_callback = record_sni
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    try:
        yield TlsServer(server, cert, sni)
    finally:
        server.stop()


def test_https_verifies_the_certificate_and_sends_sni_for_the_name(
    tls_server: TlsServer, fake_dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbound, "_CA_BUNDLE", str(tls_server.ca_file))
    server = tls_server.server
    server.clear()
    tls_server.sni.clear()
    server.expect_request("/a.png").respond_with_data(b"png-bytes")
    fake_dns.answers["images.example"] = [["127.0.0.1"]]
    fake_dns.answers["other.example"] = [["127.0.0.1"]]
    assert fetch(f"https://images.example:{server.port}/a.png") == b"png-bytes"
    assert [r.headers["Host"] for r, _ in server.log] == [f"images.example:{server.port}"]
    # The same address under a name the certificate does not carry: the handshake fails, nothing is sent.
    with pytest.raises(ImageFetchError):
        fetch(f"https://other.example:{server.port}/a.png")
    assert tls_server.sni == ["images.example", "other.example"]
    assert len(server.log) == 1
