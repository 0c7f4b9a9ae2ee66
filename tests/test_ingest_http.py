"""Ingest from URLs under attack and faults: hostile servers, slow drips, SSRF, DNS rebinding.

Every server here is a tiny raw-socket server on 127.0.0.1 written for one fault. Refusals are
proved to happen before any connection: `socket.create_connection` (what the HTTP client
connects with) is replaced by a recorder that lets only 127.0.0.1 through, and tests assert it
was never called for the refused address. A test that needs a "public" server marks 127.0.0.1
as public with `loopback_counts_as_public`: the public internet is the one thing we cannot
run here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import db, fetch
from digest.ingest import IngestError, ingest, read_source
from digest.models import Paper
from digest.settings import Settings

DATA = Path(__file__).parent / "data" / "ingest"
GOOD_FILE = str(DATA / "arxiv_one_bad.xml")  # 3 papers and one rejected entry
DAILY_JSON = (DATA / "daily_papers_one_bad.json").read_bytes()

Respond = Callable[[socket.socket, threading.Event], None]


@pytest.fixture
def sqlite_session(sqlite_settings: Settings) -> Iterator[Session]:
    """HTTP faults do not depend on the database: SQLite alone keeps these tests quick."""
    with db.session_factory(sqlite_settings)() as session:
        yield session


def paper_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Paper)) or 0


class RawServer:
    """A TCP server on 127.0.0.1 that reads each request and hands the socket to `respond`.

    It stops by itself at teardown: its loops check `stop` and are bounded in count.
    """

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.requests.append(request)
            with contextlib.suppress(OSError):  # the client gave up, as it should
                self.respond(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], RawServer]]:
    servers: list[RawServer] = []

    def start(respond: Respond) -> RawServer:
        servers.append(RawServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def sends(raw: bytes) -> Respond:
    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(raw)

    return respond


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def redirect(location: str) -> bytes:
    return f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()


def drip(raw: bytes, every: float) -> Respond:
    """Send `raw` one byte at a time, `every` seconds apart (at most 100 bytes)."""

    def respond(conn: socket.socket, stop: threading.Event) -> None:
        for byte in raw[:100]:
            conn.sendall(bytes([byte]))
            if stop.wait(every):
                return

    return respond


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address the HTTP client connects to; anything but 127.0.0.1 fails the test."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> object:
        made.append(address)
        if address[0] != "127.0.0.1":
            pytest.fail(f"connected to {address}: it should have been refused before connecting")
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return made


class FakeDNS:
    """Answers for made-up names (name -> addresses); other names go to the real resolver."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.lookups: list[str] = []
        self._real = socket.getaddrinfo

    def __setitem__(self, name: str, addresses: list[str]) -> None:
        self.answers[name] = addresses

    def getaddrinfo(self, host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        self.lookups.append(host)
        if host not in self.answers:
            return self._real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.answers[host]
        ]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.fixture
def loopback_counts_as_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 stands in for a public server; every other address is judged as usual."""
    real = fetch.refusal

    def refusal(address: fetch.IPAddress) -> str | None:
        return None if str(address) == "127.0.0.1" else real(address)

    monkeypatch.setattr(fetch, "refusal", refusal)


# --- HTTP faults: one line for that source, the other sources still ingest -------------------


FAULTS = {
    "malformed status line": (sends(b"HTTP/1.1 two hundred OK\r\n\r\n[]"), "malformed HTTP"),
    "garbage instead of HTTP": (sends(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), "malformed HTTP"),
    "broken chunked encoding": (
        sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n0\r\n\r\n"),
        "malformed HTTP",
    ),
    "chunked body cut short": (
        sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n[{\"paper\""),
        "malformed HTTP",
    ),
    "a 65 KB header": (sends(ok(b"[]", "X-Big: " + "a" * 65 * 1024)), "bytes of headers"),
    "101 headers": (sends(ok(b"[]", *(f"X-H{i}: v" for i in range(100)))), "101 headers"),
    "a 1 MB header": (sends(ok(b"[]", "X-Big: " + "a" * 1024 * 1024)), "malformed HTTP"),
    "body shorter than Content-Length": (
        sends(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n[{}]"),
        "malformed HTTP",
    ),
    "connection closed at once": (sends(b""), "malformed HTTP"),
    "HTTP 500": (sends(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"),
                 "answered HTTP 500 Internal Server Error"),
    "a reason phrase with escapes": (
        sends(b"HTTP/1.1 503 \x1b[31mDown\r\nContent-Length: 0\r\n\r\n"), "answered HTTP 503"
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_http_fault_fails_its_source_alone_with_one_line(
    sqlite_session: Session, serve: Callable[[Respond], RawServer], fault: str
) -> None:
    respond, message = FAULTS[fault]
    url = f"{serve(respond).url}/papers.json"

    report = ingest(sqlite_session, [url, GOOD_FILE], timeout=5, allow_private_networks=True)

    error = report.sources[0].error
    assert error is not None and error.startswith(f"{url}: ") and message in error
    assert "\n" not in error and error.isprintable() and len(error) <= 500
    assert report.sources[1].error is None and report.sources[1].inserted == 3
    assert paper_count(sqlite_session) == 3


@pytest.mark.parametrize(("every", "deadline"), [(2.0, 1.0), (0.1, 1.0)])
def test_a_slow_drip_is_stopped_at_the_total_deadline(
    sqlite_session: Session, serve: Callable[[Respond], RawServer], every: float, deadline: float
) -> None:
    # At 0.1 s a byte no single read ever waits long: only a total deadline stops it.
    server = serve(drip(ok(DAILY_JSON), every))

    started = time.monotonic()
    report = ingest(
        sqlite_session, [f"{server.url}/papers.json", GOOD_FILE], timeout=deadline,
        allow_private_networks=True,
    )
    elapsed = time.monotonic() - started

    assert elapsed < deadline + 1.0  # the whole drip would take minutes
    assert f"no answer within {deadline:g} s" in str(report.sources[0].error)
    assert report.sources[1].inserted == 3


def test_a_body_dripping_after_quick_headers_is_stopped_too(
    serve: Callable[[Respond], RawServer],
) -> None:
    body = b"[" + b" " * 200

    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 201\r\n\r\n")
        drip(body, 0.05)(conn, stop)

    server = serve(respond)

    started = time.monotonic()
    with pytest.raises(IngestError, match=r"no answer within 0.6 s"):
        read_source(f"{server.url}/", timeout=0.6, allow_private_networks=True)
    assert time.monotonic() - started < 1.6  # the whole drip: 10 s


def test_an_endless_body_stops_at_the_size_cap(serve: Callable[[Respond], RawServer]) -> None:
    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            if stop.is_set():
                return
            conn.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")

    server = serve(respond)

    with pytest.raises(IngestError, match=r"larger than 10,000 bytes"):
        read_source(server.url, timeout=5, max_bytes=10_000, allow_private_networks=True)


def test_a_good_url_still_ingests(
    sqlite_session: Session, serve: Callable[[Respond], RawServer]
) -> None:
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (DAILY_JSON[:100], DAILY_JSON[100:])
    ) + b"0\r\n\r\n"
    server = serve(sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked))

    report = ingest(
        sqlite_session, [f"{server.url}/daily.json"], timeout=5, allow_private_networks=True
    )

    assert report.ok and report.inserted == 3
    assert server.requests[0].startswith(b"GET /daily.json HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]


# --- where a fetch may go: public addresses only, checked before connecting -----------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.1/papers.json", "private"),
        ("http://192.168.1.20:8080/feed", "private"),
        ("http://172.16.5.4/", "private"),
        ("https://127.0.0.1/", "loopback"),
        ("http://127.1.2.3:9/", "loopback"),
        ("http://[::1]:8000/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.64.0.1/", "not public"),
        ("http://[fc00::1]/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[64:ff9b::a00:1]/", "private"),
    ],
)
def test_urls_naming_non_public_addresses_are_refused_before_connecting(
    connections: list[tuple[str, int]], url: str, kind: str
) -> None:
    with pytest.raises(IngestError, match=f"is a {kind} address") as refused:
        read_source(url, timeout=5)

    assert connections == []
    assert "INGEST_ALLOW_PRIVATE_NETWORKS=true" in str(refused.value)


def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(
    connections: list[tuple[str, int]], dns: FakeDNS
) -> None:
    dns["papers.example"] = ["10.0.0.1"]
    dns["mixed.example"] = ["93.184.215.14", "127.0.0.1"]

    with pytest.raises(IngestError, match=r"papers.example resolves to 10.0.0.1, which is a "
                                          r"private address"):
        read_source("https://papers.example/daily.json", timeout=5)
    with pytest.raises(IngestError, match=r"mixed.example resolves to 127.0.0.1, which is a "
                                          r"loopback address"):
        read_source("http://mixed.example/", timeout=5)
    assert connections == []


def test_localhost_is_refused_by_default(connections: list[tuple[str, int]]) -> None:
    with pytest.raises(IngestError, match=r"localhost resolves to .*loopback address"):
        read_source("http://localhost:8000/papers.json", timeout=5)
    assert connections == []


def test_a_redirect_is_checked_again_and_refused_before_connecting(
    sqlite_session: Session,
    serve: Callable[[Respond], RawServer],
    connections: list[tuple[str, int]],
    dns: FakeDNS,
    loopback_counts_as_public: None,
) -> None:
    dns["metadata.example"] = ["169.254.169.254"]
    to_ip = serve(sends(redirect("http://10.0.0.1:8080/admin")))
    to_name = serve(sends(redirect("http://metadata.example/latest/meta-data/")))

    report = ingest(sqlite_session, [f"{to_ip.url}/feed", f"{to_name.url}/feed", GOOD_FILE])

    first, second, good = report.sources
    assert first.error == (
        f"{to_ip.url}/feed: redirected to http://10.0.0.1:8080/admin: refused: 10.0.0.1 is a "
        "private address, and ingest fetches only from public addresses; set "
        "INGEST_ALLOW_PRIVATE_NETWORKS=true to allow it."
    )
    assert "metadata.example resolves to 169.254.169.254, which is a link-local" in str(
        second.error
    )
    assert connections == [("127.0.0.1", to_ip.port), ("127.0.0.1", to_name.port)]
    assert good.inserted == 3 and paper_count(sqlite_session) == 3


def test_the_connection_goes_to_the_address_that_was_checked(
    sqlite_session: Session,
    serve: Callable[[Respond], RawServer],
    connections: list[tuple[str, int]],
    dns: FakeDNS,
) -> None:
    # DNS rebinding: were the name looked up again to connect, the second answer would win.
    server = serve(sends(ok(DAILY_JSON)))
    dns["papers.example"] = ["127.0.0.1"]
    url = f"http://papers.example:{server.port}/daily.json"

    report = ingest(sqlite_session, [url], timeout=5, allow_private_networks=True)

    assert report.ok and report.inserted == 3
    assert dns.lookups.count("papers.example") == 1
    assert connections == [("127.0.0.1", server.port)]
    assert f"Host: papers.example:{server.port}\r\n".encode() in server.requests[0]


def test_allowing_private_networks_lets_a_loopback_feed_in(
    sqlite_session: Session, serve: Callable[[Respond], RawServer]
) -> None:
    server = serve(sends(ok(DAILY_JSON)))

    refused = ingest(sqlite_session, [server.url])
    allowed = ingest(sqlite_session, [server.url], allow_private_networks=True)

    assert "is a loopback address" in str(refused.sources[0].error)
    assert server.requests[1:] == [] and len(server.requests) == 1
    assert allowed.ok and allowed.inserted == 3


def test_redirects_are_followed_a_few_times_only(serve: Callable[[Respond], RawServer]) -> None:
    looping = serve(sends(redirect("/again")))
    to_file = serve(sends(redirect("file:///etc/passwd")))
    broken = serve(sends(redirect("http://[::1/feed")))
    no_location = serve(sends(b"HTTP/1.1 301 Moved\r\nContent-Length: 0\r\n\r\n"))

    with pytest.raises(IngestError, match=r"more than 5 redirects"):
        read_source(looping.url, timeout=5, allow_private_networks=True)
    with pytest.raises(IngestError, match=r"redirected to file:///etc/passwd, which is not http"):
        read_source(to_file.url, timeout=5, allow_private_networks=True)
    with pytest.raises(IngestError, match=r"redirected to http://\[::1/feed: not a valid URL"):
        read_source(broken.url, timeout=5, allow_private_networks=True)
    with pytest.raises(IngestError, match=r"a redirect without a Location header"):
        read_source(no_location.url, timeout=5, allow_private_networks=True)
    assert len(looping.requests) == 6


def test_an_error_after_a_redirect_names_the_source_and_the_redirect(
    serve: Callable[[Respond], RawServer],
) -> None:
    missing = serve(sends(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    source = serve(sends(redirect(f"{missing.url}/moved.json")))

    with pytest.raises(IngestError) as failed:
        read_source(f"{source.url}/feed", timeout=5, allow_private_networks=True)

    assert str(failed.value) == (
        f"{source.url}/feed: redirected to {missing.url}/moved.json: the server answered "
        "HTTP 404 Not Found; check the URL."
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ftp://127.0.0.1/papers.json", "only http:// and https:// URLs can be fetched"),
        ("gopher://127.0.0.1:70/", "only http:// and https:// URLs can be fetched"),
        ("http:///papers.json", "the URL has no host name"),
        ("http://127.0.0.1:99999/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("https://example.org/" + "a" * 3000, "longer than 2,000 characters"),
    ],
)
def test_malformed_urls_are_refused_with_a_reason(
    connections: list[tuple[str, int]], source: str, message: str
) -> None:
    with pytest.raises(IngestError, match=message):
        read_source(source, timeout=5, allow_private_networks=True)
    assert connections == []


# --- TLS to a pinned address ------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 whose certificate names papers.example, trusted by fetch."""
    cert, key = _self_signed(tmp_path, "papers.example")
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(fetch, "tls_context", lambda: client_side)

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with server_side.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(2)
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += conn.recv(4096) or b"\r\n\r\n"
                    conn.sendall(ok(DAILY_JSON))
            except (OSError, ssl.SSLError):
                raw.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_checks_the_certificate_against_the_name_not_the_pinned_address(
    tls_server: int, connections: list[tuple[str, int]], dns: FakeDNS
) -> None:
    dns["papers.example"] = ["127.0.0.1"]
    dns["other.example"] = ["127.0.0.1"]

    data = read_source(
        f"https://papers.example:{tls_server}/daily.json", timeout=5, allow_private_networks=True
    )
    assert data == DAILY_JSON
    with pytest.raises(IngestError, match=r"cannot connect \(.*certificate"):
        read_source(
            f"https://other.example:{tls_server}/", timeout=5, allow_private_networks=True
        )
    assert connections == [("127.0.0.1", tls_server)] * 2
