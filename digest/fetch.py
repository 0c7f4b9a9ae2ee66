"""Fetch one http(s) URL for ingest without trusting its server, its redirects or its DNS.

The operator names a source URL, but the bytes, the redirects and the DNS answers come from
strangers, and what a fetch returns is served again as "papers" (the digest, the public
preview). So a fetch has:

- one total deadline for everything (DNS, connect, TLS, every redirect, every byte), so a
  server that drips a byte at a time cannot hold ingest past it;
- a size cap on the body, and limits on the number and size of response headers;
- public destinations only: the host is resolved here, every address it resolves to is checked
  (on the first request and on each redirect), and the connection goes to the address that was
  checked, so a DNS answer that changes between the check and the connect (rebinding) cannot
  steer it. Loopback, private, link-local, reserved and multicast addresses are refused before
  any connection is made unless the operator allows them (INGEST_ALLOW_PRIVATE_NETWORKS).

HTTP itself (status line, headers, chunked bodies) is httpcore's; every way it can fail
becomes a one-line `FetchError` that names the URL.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpcore
import idna

SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
# The standard library's own limits (http.client); a papers feed needs a handful of headers.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_URL_CHARS = 2000
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = b"paper-digest ingest"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# An IPv6 address that carries an IPv4 one is judged by the IPv4 address it reaches.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class FetchError(Exception):
    """The URL could not be fetched; one line that names the URL and says what to do."""


@dataclass(frozen=True)
class FetchLimits:
    """How much one fetch may take: seconds in all, bytes of body, and where it may connect."""

    timeout: float
    max_bytes: int
    allow_private_networks: bool = False


def fetch(url: str, limits: FetchLimits) -> bytes:
    """The body of a 2xx answer to GET `url`, following up to 5 redirects, within `limits`.

    Every failure is one `FetchError` line that starts with `url` and names the redirect it
    happened after, if any.
    """
    deadline = Deadline(limits.timeout)
    backend = CheckedBackend(deadline, limits.allow_private_networks)
    hops = [url]
    try:
        pool = httpcore.ConnectionPool(
            ssl_context=tls_context(), network_backend=backend, retries=0
        )
        with pool:
            for _ in range(MAX_REDIRECTS + 1):
                body, location = _get(pool, hops[-1], limits.max_bytes, deadline)
                if location is None:
                    return body
                hops.append(_redirect_target(hops[-1], location))
        raise FetchError(f"more than {MAX_REDIRECTS} redirects; check the URL.")
    except FAILURES as exc:
        redirected = f"redirected to {_shown_url(hops[-1])}: " if len(hops) > 1 else ""
        raise FetchError(f"{_shown_url(url)}: {redirected}{_explain(exc, limits)}") from None


def _explain(failure: Exception, limits: FetchLimits) -> str:
    """What went wrong and what to do, in words for the operator."""
    if isinstance(failure, FetchError):
        return str(failure)
    if isinstance(failure, RefusedAddress):
        return f"refused: {failure}"
    if isinstance(failure, httpcore.TimeoutException):
        return (
            f"no answer within {limits.timeout:g} s (the whole download must finish in "
            "HTTP_TIMEOUT seconds); try again later."
        )
    if isinstance(failure, httpcore.ConnectError):
        return f"cannot connect ({_reason(failure)}); check the URL."
    if isinstance(failure, httpcore.NetworkError):
        return f"the connection broke during the download ({_reason(failure)}); try again later."
    return (
        f"the server sent a malformed HTTP response ({_reason(failure)}); check the URL or try "
        "again later."
    )


def tls_context() -> ssl.SSLContext:
    """The certificates a fetch trusts: the system's and certifi's bundle (httpcore's default)."""
    return httpcore.default_ssl_context()


def _get(
    pool: httpcore.ConnectionPool, url: str, max_bytes: int, deadline: Deadline
) -> tuple[bytes, str | None]:
    """One request: the body of a 2xx answer, or the Location of a redirect."""
    target, host_header = request_target(url)
    headers = [
        (b"Host", host_header),
        (b"User-Agent", USER_AGENT),
        (b"Accept-Encoding", b"identity"),
    ]
    extensions = {"timeout": deadline.timeouts()}
    with pool.stream("GET", target, headers=headers, extensions=extensions) as response:
        _check_headers(response.headers)
        if response.status in REDIRECTS:
            location = _header(response.headers, b"location")
            if location is None:
                raise FetchError("a redirect without a Location header; check the URL.")
            return b"", location
        if not 200 <= response.status < 300:
            reason = _reason(response.extensions.get("reason_phrase", b""))
            raise FetchError(f"the server answered HTTP {response.status} {reason}; "
                             "check the URL.")
        return _body(response, max_bytes), None


def _body(response: httpcore.Response, max_bytes: int) -> bytes:
    too_large = FetchError(f"the response is larger than {max_bytes:,} bytes.")
    length = _header(response.headers, b"content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise too_large
    body = bytearray()
    for chunk in response.iter_stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def _check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    if len(headers) > MAX_HEADERS:
        raise FetchError(
            f"the server sent {len(headers)} headers, more than the {MAX_HEADERS} allowed; "
            "check the URL."
        )
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > MAX_HEADER_BYTES:
        raise FetchError(
            f"the server sent {size:,} bytes of headers, more than the {MAX_HEADER_BYTES:,} "
            "allowed; check the URL."
        )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


# ---------------------------------------------------------------------------------------------
# URLs


def check_url(url: str) -> tuple[str, str, int]:
    """The scheme, ASCII host and port of an http(s) URL; anything else is a `FetchError`."""
    if len(url) > MAX_URL_CHARS:
        raise FetchError(f"a URL longer than {MAX_URL_CHARS:,} characters is refused.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FetchError("only http:// and https:// URLs can be fetched.")
    if not parts.hostname:
        raise FetchError("the URL has no host name.")
    host = parts.hostname
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise FetchError(f"the host name is not a valid domain name ({exc}).") from None
    return scheme, host, port or (443 if scheme == "https" else 80)


def request_target(url: str) -> tuple[httpcore.URL, bytes]:
    """httpcore's URL for `url` (host in ASCII, path percent-encoded) and its Host header."""
    scheme, host, port = check_url(url)
    parts = urlsplit(url)
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    target = path + (f"?{query}" if query else "")
    shown_host = f"[{host}]" if ":" in host else host
    default_port = 443 if scheme == "https" else 80
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    return (
        httpcore.URL(scheme=scheme, host=host, port=port, target=target),
        host_header.encode("ascii"),
    )


def _redirect_target(current: str, location: str) -> str:
    """The URL a redirect leads to, if it is one ingest may follow."""
    try:
        target = urljoin(current, location.strip())
    except ValueError:
        target = location
    if target.partition(":")[0].lower() not in SCHEMES:
        raise FetchError(f"redirected to {_shown_url(target)}, which is not http(s).")
    try:
        check_url(target)
    except FetchError as exc:
        raise FetchError(f"redirected to {_shown_url(target)}: {exc}") from None
    return target


def _shown_url(url: str) -> str:
    """A URL as it may appear in a one-line message: printable and at most 200 characters."""
    url = url if url.isprintable() else url.encode("unicode_escape").decode("ascii")
    return url if len(url) <= 200 else url[:197] + "..."


def _reason(value: object) -> str:
    """An error's or a server's words as one short printable line."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = " ".join(text.split())
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return (text if len(text) <= 160 else text[:157] + "...") or type(value).__name__


# ---------------------------------------------------------------------------------------------
# The deadline and the checked connection


class DeadlinePassed(httpcore.TimeoutException):
    """The fetch's total time is up (raised in place of a single operation's timeout)."""


class Deadline:
    """One clock for a whole fetch: every network operation gets only what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self, timeout: float | None = None) -> float:
        """Seconds the next operation may take: its own timeout, cut to what is left."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlinePassed(f"the {self.seconds:g} s deadline has passed")
        return left if timeout is None else min(timeout, left)

    def timeouts(self) -> dict[str, float]:
        left = self.left()
        return {"connect": left, "read": left, "write": left, "pool": left}


class RefusedAddress(Exception):
    """A host that resolves to an address ingest may not connect to; says which and why."""


# Every way a fetch can fail; each becomes one FetchError line.
FAILURES = (
    FetchError,
    RefusedAddress,
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


class CheckedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, connecting only to checked addresses, within the deadline."""

    def __init__(self, deadline: Deadline, allow_private_networks: bool) -> None:
        self._deadline = deadline
        self._allow_private = allow_private_networks
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port, self._deadline)
        if not self._allow_private:
            for address in addresses:
                if why := refusal(address):
                    raise RefusedAddress(_refusal_message(host, address, why))
        last = httpcore.ConnectError(f"cannot connect to {host}")
        for address in addresses:  # the checked addresses themselves, never the name again
            try:
                stream = self._sockets.connect_tcp(
                    str(address), port, self._deadline.left(timeout), local_address,
                    socket_options,
                )
            except httpcore.ConnectError as exc:
                last = exc
                continue
            return DeadlineStream(stream, self._deadline)
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("ingest fetches over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._deadline.left()))


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the fetch's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # server_hostname is the URL's host: TLS checks the certificate against the name,
        # while the socket stays connected to the address that was checked.
        secure = self._stream.start_tls(
            ssl_context, server_hostname, self._deadline.left(timeout)
        )
        return DeadlineStream(secure, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def resolve(host: str, port: int, deadline: Deadline) -> list[IPAddress]:
    """The addresses `host` names (an IP literal names itself), looked up within the deadline."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    answer: list[Any] = []
    failure: list[OSError] = []

    def look_up() -> None:
        try:
            answer.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failure.append(exc)

    # getaddrinfo takes no timeout; a thread lets the deadline stop waiting for it.
    lookup = threading.Thread(target=look_up, name=f"resolve {host}", daemon=True)
    lookup.start()
    lookup.join(deadline.left())
    if lookup.is_alive():
        raise DeadlinePassed(f"looking up {host} took longer than the deadline")
    if failure or not answer:
        reason = _reason(failure[0].strerror or failure[0]) if failure else "no addresses"
        raise httpcore.ConnectError(f"cannot resolve {host}: {reason}")
    addresses: list[IPAddress] = []
    for *_, sockaddr in answer:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def refusal(address: IPAddress) -> str | None:
    """Why ingest may not connect to `address` ("loopback", "private", ...); None if public."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal(embedded)
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not public", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refusal_message(host: str, address: IPAddress, why: str) -> str:
    named = "is" if host.strip("[]") == str(address) else f"resolves to {address}, which is"
    return (
        f"{host} {named} a {why} address, and ingest fetches only from public addresses; "
        "set INGEST_ALLOW_PRIVATE_NETWORKS=true to allow it."
    )
