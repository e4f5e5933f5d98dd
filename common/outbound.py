"""Every request the service sends to a user-supplied URL (image fetches, webhooks) goes through here.

Rules: http(s) only; no credentials in the URL; only the allowed ports (80 and 443 by default); the host is
resolved once and EVERY address it resolves to must be public (see `_SPECIAL_RANGES`; embedded IPv4 in
mapped, compatible, 6to4 and NAT64 IPv6 forms is unwrapped first); the connection then goes to a checked
address, never through a second lookup (no DNS rebinding), while TLS still verifies the certificate and sends
SNI for the URL's host, and the Host header stays the URL's host. Redirects are never followed, the whole
exchange has one deadline, and a response body is read only up to a cap. `allow_private` admits loopback
and private (RFC 1918, ULA) addresses for local development; cloud-metadata, link-local and the other
special ranges stay refused.

Why not requests-hardened (1.3.0, read from its source): it pins the connection well (a requests adapter that
swaps the pool's host for the checked IP and keeps SNI and Host), but it checks only the first address
getaddrinfo returns, its filter is `is_private or is_multicast or a short extra list`, which on Python 3.11.7
lets IPv4-compatible loopback (`::127.0.0.1`), site-local `fec0::/10`, reserved IPv6 and Azure's 168.63.129.16
through, and it can allow loopback but not private networks, while turning the filter off also drops the
metadata protection. It has no total deadline or body cap either. So the ranges are an explicit `ipaddress`
table (not `is_global`, whose answer changes between 3.11 patch releases), and the pinning is urllib3 used
directly: a connection is opened to the checked IP with `server_hostname` set to the URL's host. Using
urllib3 without requests also leaves out proxies from the environment and credentials from ~/.netrc.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import quote, urlsplit

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from common.errors import ImageFetchError, ImageTooLarge, OutboundRequestError, UnsafeUrl
from common.settings import Settings

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CONNECT_TIMEOUT_S = 3.0
_CHUNK = 64 * 1024
_CA_BUNDLE = certifi.where()
_URL_SAFE = "!$&'()*+,/:;=?@~%"  # percent-encode only what may not appear in a request target

_METADATA = "a cloud metadata address"
_LOOPBACK = "a loopback address"
_PRIVATE = "a private address"
# Checked in order (metadata before the ranges that contain it); anything listed here is refused, and
# `allow_private` admits only the loopback and private kinds.
_SPECIAL_RANGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (_METADATA, (
        "169.254.169.254/32",  # AWS, GCP, Azure, DigitalOcean, OpenStack ...
        "169.254.170.2/32",  # AWS ECS task credentials
        "fd00:ec2::254/128",  # AWS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
        "168.63.129.16/32",  # Azure wire server (a public address)
        "192.0.0.192/32",  # Oracle Cloud
    )),
    ("an unspecified address", ("0.0.0.0/8", "::/128")),  # 0.0.0.0 reaches the local host on Linux
    (_LOOPBACK, ("127.0.0.0/8", "::1/128")),
    (_PRIVATE, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("a carrier-grade NAT address", ("100.64.0.0/10",)),
    ("a link-local address", ("169.254.0.0/16", "fe80::/10")),
    ("a site-local address", ("fec0::/10",)),
    ("a multicast address", ("224.0.0.0/4", "ff00::/8")),
    ("a broadcast address", ("255.255.255.255/32",)),
    ("a reserved address", ("240.0.0.0/4",)),
    ("a benchmarking address", ("198.18.0.0/15", "2001:2::/48")),
    ("a documentation address",
     ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")),
    ("a protocol-assignment address", ("192.0.0.0/24",)),
    ("a 6to4 relay address", ("192.88.99.0/24",)),
)
_SPECIAL_NETWORKS = tuple(
    (ipaddress.ip_network(network), kind) for kind, networks in _SPECIAL_RANGES for network in networks
)
_PRIVATE_KINDS = frozenset({_LOOPBACK, _PRIVATE})
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class OutboundPolicy:
    """What outbound requests may reach; `allowed_ports=None` means any port."""

    allow_private: bool = False
    allowed_ports: frozenset[int] | None = frozenset({80, 443})

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        """The policy the service's settings describe."""
        return cls(settings.allow_private_networks, _parse_ports(settings.outbound_allowed_ports))


@dataclass(frozen=True)
class OutboundResponse:
    """A response: status, headers (names lower-cased) and the first bytes of the body."""

    status_code: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    host_header: str
    request_target: str


def _parse_ports(spec: str) -> frozenset[int] | None:
    """'80,443' -> {80, 443}; '*' -> None (any port)."""
    if spec.strip() == "*":
        return None
    ports = frozenset(int(part) for part in spec.split(",") if part.strip())
    if not all(0 < port < 65536 for port in ports):
        raise ValueError(f"Ports must be between 1 and 65535: {spec!r}")
    return ports


def check_url(url: str, policy: OutboundPolicy) -> None:
    """Raise UnsafeUrl unless the URL may be requested now (its host is resolved and checked too)."""
    target = _parse(url, policy)
    try:
        _checked_addresses(target, policy)
    except OSError as exc:
        raise UnsafeUrl(f"The host {target.host!r} could not be resolved.") from exc


def fetch_bytes(url: str, max_bytes: int, timeout_s: float, policy: OutboundPolicy) -> bytes:
    """GET an image URL and return its body, or raise ImageFetchError / ImageTooLarge."""
    try:
        with _exchange("GET", url, None, {}, timeout_s=timeout_s, policy=policy) as response:
            if 300 <= response.status < 400:
                raise ImageFetchError(f"The URL answered a redirect ({response.status}); not followed.")
            if response.status != 200:
                raise ImageFetchError(f"The URL answered HTTP {response.status}.")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageTooLarge(f"The image is {declared} bytes; the limit is {max_bytes}.")
            body = _read_capped(response, max_bytes)
    except (UnsafeUrl, OutboundRequestError) as exc:
        raise ImageFetchError(exc.message) from exc
    if len(body) > max_bytes:
        raise ImageTooLarge(f"The image is larger than {max_bytes} bytes.")
    return body


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    policy: OutboundPolicy,
    *,
    max_response_bytes: int = 64 * 1024,
) -> OutboundResponse:
    """POST a body; any answer (a 3xx too: redirects are not followed) comes back as the response.

    Raises UnsafeUrl if the URL is refused, OutboundRequestError if the network fails or time runs out.
    """
    with _exchange("POST", url, body, headers, timeout_s=timeout_s, policy=policy) as response:
        prefix = _read_capped(response, max_response_bytes)[:max_response_bytes]
        names = {name.lower(): response.headers[name] for name in response.headers}
        return OutboundResponse(response.status, names, prefix)


def _parse(url: str, policy: OutboundPolicy) -> _Target:
    """Split and vet the URL itself: scheme, credentials, host and port."""
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise UnsafeUrl("The URL is malformed.") from exc
    if parts.scheme not in _DEFAULT_PORTS:
        raise UnsafeUrl("Only http and https URLs are allowed.")
    if "@" in parts.netloc:
        raise UnsafeUrl("URLs with credentials are refused.")
    if not parts.hostname:
        raise UnsafeUrl("The URL has no host.")
    try:
        # One ASCII form for resolution, SNI and the Host header alike.
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UnsafeUrl("The URL's host name is invalid.") from exc
    port = _DEFAULT_PORTS[parts.scheme] if explicit_port is None else explicit_port
    if port == 0 or (policy.allowed_ports is not None and port not in policy.allowed_ports):
        raise UnsafeUrl(f"Port {port} is not allowed.")
    host_header = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[parts.scheme]:
        host_header += f":{port}"
    request_target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_URL_SAFE)
    return _Target(parts.scheme, host, port, host_header, request_target)


def _checked_addresses(target: _Target, policy: OutboundPolicy) -> list[_IPAddress]:
    """Resolve once and return the addresses, or raise UnsafeUrl if ANY of them is refused."""
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses = list(
        dict.fromkeys(
            ipaddress.ip_address(info[4][0])
            for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)
        )
    )
    if not addresses:
        raise UnsafeUrl(f"The host {target.host!r} has no IP address.")
    for address in addresses:
        kind = _classify(address)
        if kind is not None and not (policy.allow_private and kind in _PRIVATE_KINDS):
            raise UnsafeUrl(f"The host {target.host!r} resolves to a non-public address ({kind}); refused.")
    return addresses


def _classify(address: _IPAddress) -> str | None:
    """Why an address must not be reached ('a loopback address', ...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    for network, kind in _SPECIAL_NETWORKS:
        if address in network:
            return kind
    if isinstance(address, ipaddress.IPv6Address) and address not in _IPV6_GLOBAL_UNICAST:
        return "a reserved address"
    # Backstop for special-purpose ranges the table leaves out (Teredo, ORCHID, AS112 ...).
    if not address.is_global or address.is_reserved:
        return "a special-purpose address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, compatible, 6to4 or NAT64 IPv6 address, which is what is reached."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    # :: and ::1 are in ::/96 too, but they are IPv6's own unspecified and loopback addresses.
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class _Deadline:
    """Shuts a request's sockets down when time is up: a socket timeout bounds one read, not a slow drip."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        """Seconds left, never below a millisecond (a zero timeout would mean non-blocking)."""
        return max(self._end - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        """Cut this socket at the deadline; a duplicate survives the TLS wrap that detaches the original."""
        with self._lock:
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self.expired:
                _shut(duplicate)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def close(self) -> None:
        """Stop the timer and release the duplicates."""
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    # Shutting a socket down wakes any thread blocked on it; it may already be closed.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTPConnection(HTTPConnection):
    """An HTTP connection to a checked IP whose socket the deadline watches."""

    deadline: _Deadline | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if self.deadline is not None:
            self.deadline.watch(sock)
        return sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection, HTTPSConnection):
    """An HTTPS connection to a checked IP: SNI and certificate checks use `server_hostname`."""


@contextlib.contextmanager
def _exchange(
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    policy: OutboundPolicy,
) -> Iterator[urllib3.HTTPResponse]:
    """Send a request to a checked address and yield the unread response; failures -> OutboundRequestError."""
    target = _parse(url, policy)
    try:
        addresses = _checked_addresses(target, policy)
    except OSError as exc:
        raise OutboundRequestError(f"The host {target.host!r} could not be resolved.") from exc
    request_headers = {name: value for name, value in headers.items() if name.lower() != "host"}
    request_headers.setdefault("User-Agent", "captioner")
    # Bytes on the wire are what the caps count: no decompression, so no compression bombs.
    request_headers |= {"Host": target.host_header, "Accept-Encoding": "identity", "Connection": "close"}
    deadline = _Deadline(timeout_s)
    connection: HTTPConnection | None = None
    try:
        connection = _connect(target, addresses, deadline)
        connection.request(
            method, target.request_target, body=body, headers=request_headers,
            preload_content=False, decode_content=False,
        )
        yield connection.getresponse()
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        reason = "timed out" if deadline.expired else f"failed ({type(exc).__name__})"
        raise OutboundRequestError(f"The request to {target.host!r} {reason}.") from exc
    finally:
        deadline.close()
        if connection is not None:
            connection.close()
    # A body that ends when the connection closes looks complete when the deadline cut it short.
    if deadline.expired:
        raise OutboundRequestError(f"The request to {target.host!r} timed out.")


def _connect(target: _Target, addresses: list[_IPAddress], deadline: _Deadline) -> HTTPConnection:
    """Open a connection to the first checked address that answers, as a browser tries each in turn."""
    error: Exception | None = None
    for address in addresses:
        timeout = min(_CONNECT_TIMEOUT_S, deadline.remaining())
        connection: _PinnedHTTPConnection | _PinnedHTTPSConnection
        if target.scheme == "https":
            connection = _PinnedHTTPSConnection(
                str(address), target.port, timeout=timeout, server_hostname=target.host,
                cert_reqs="CERT_REQUIRED", ca_certs=_CA_BUNDLE,
            )
        else:
            connection = _PinnedHTTPConnection(str(address), target.port, timeout=timeout)
        connection.deadline = deadline
        try:
            connection.connect()
        except Exception as exc:
            connection.close()
            # Only a refused or unanswered connection moves on to the next address; a TLS failure does not.
            if isinstance(exc, urllib3.exceptions.ConnectTimeoutError) and not deadline.expired:
                error = exc
                continue
            raise
        # Reads wait at most until the deadline; the deadline itself cuts a slow drip.
        connection.timeout = deadline.remaining()
        return connection
    raise OutboundRequestError(f"Could not connect to {target.host!r}.") from error


def _read_capped(response: urllib3.HTTPResponse, cap: int) -> bytes:
    """Read at most cap + 1 bytes, so the caller can tell a body over the cap from one at it."""
    body = bytearray()
    while len(body) <= cap:
        chunk = response.read(min(_CHUNK, cap + 1 - len(body)), decode_content=False)
        if not chunk:
            break
        body += chunk
    return bytes(body)
