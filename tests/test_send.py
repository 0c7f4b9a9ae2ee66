"""Mail backends against real things: an SMTP server on loopback, files on disk, parsed back."""

from __future__ import annotations

import io
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from digest.send import (
    ConsoleSender,
    FileSender,
    OutgoingEmail,
    SendOutcome,
    SMTPSender,
    batch_sender,
    build_message,
    close_kept_sender,
    message_bytes,
    message_id_for,
    open_sender,
)
from digest.settings import Settings

from .conftest import make_settings
from .smtp_server import SMTPServer

SENT_AT = datetime(2026, 11, 23, 7, 0, 5, tzinfo=timezone.utc)
UNSUBSCRIBE = "https://digest.test/unsubscribe/one-click?token=abc.DEF-123"
MAILTO = "<mailto:unsubscribe@digest.test?subject=unsubscribe>"


def make_email(settings: Settings, n: int = 1, **overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        to=f"reader{n}@example.org",
        subject=f"Your papers for 23 Nov: β-OPSD and {n} more",
        text=f"Hello Jörg,\n\n1. β-OPSD: low-rank adapters, {n}\nhttps://arxiv.org/abs/2611.0{n}\n",
        html=f"<p>Hello Jörg,</p><ol><li>β-OPSD: low-rank adapters, {n}</li></ol>\n",
        message_id=message_id_for(settings, "digest", n, date(2026, 11, 23)),
        unsubscribe_url=f"{UNSUBSCRIBE}{n}",
        date=SENT_AT,
    )
    fields.update(overrides)
    return OutgoingEmail(**fields)


def parts(msg: EmailMessage) -> dict[str, str]:
    """Each part's decoded text, with the wire's CRLF line ends read as newlines."""
    return {
        p.get_content_type(): p.get_content().replace("\r\n", "\n")  # type: ignore[attr-defined]
        for p in msg.iter_parts()
    }


@pytest.fixture
def sender(smtp_settings: Settings) -> Iterator[SMTPSender]:
    with SMTPSender(smtp_settings) as s:
        yield s


# --- The message --------------------------------------------------------------------------


def test_smtp_delivers_every_message_over_one_connection(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    emails = [make_email(smtp_settings, n) for n in (1, 2, 3)]
    results = [sender.send(e) for e in emails]

    assert [r.outcome for r in results] == [SendOutcome.SENT] * 3
    assert sender.connections_opened == 1
    assert smtp_server.connections == 1
    assert [r.rcpt_tos for r in smtp_server.received] == [[e.to] for e in emails]
    assert {r.mail_from for r in smtp_server.received} == {"digest@digest.test"}
    for email, msg in zip(emails, smtp_server.messages, strict=True):
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert parts(msg) == {"text/plain": email.text, "text/html": email.html}
        assert msg["From"] == "Paper Digest <digest@digest.test>"
        assert msg["To"] == email.to
        assert msg["Subject"] == email.subject  # β survives RFC 2047
        assert msg["Date"].datetime == SENT_AT
        assert msg["Message-ID"] == email.message_id
        assert msg["List-Id"] == "Paper Digest <daily.digest.test>"
        assert msg["List-Unsubscribe"] == f"<{email.unsubscribe_url}>, {MAILTO}"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["X-Digest-Kind"] == "digest"
        assert msg["Reply-To"] is None
        assert msg["MIME-Version"] == "1.0"


def test_message_bytes_are_crlf_seven_bit_and_short_lined(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_reply_to="Editors <editors@digest.test>")
    long_html = "<p>" + "Jörg β " * 400 + "</p>"  # one 2,800-character line
    data = message_bytes(settings, make_email(settings, html=long_html))

    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(data) < 128  # no 8BITMIME needed
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["Reply-To"] == "Editors <editors@digest.test>"
    assert parts(msg)["text/html"] == long_html + "\n"  # type: ignore[arg-type]


def test_long_unsubscribe_url_stays_a_bare_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    url = "https://digest.test/u/" + "x" * 180 + "?t=" + "y" * 60
    data = message_bytes(settings, make_email(settings, unsubscribe_url=url))

    assert f"<{url}>".encode() in data  # not =?utf-8?q?...?= encoded-words
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["List-Unsubscribe"] == f"<{url}>, {MAILTO}"


def test_injected_subject_stays_one_subject_and_adds_no_header(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    email = make_email(
        settings, subject="Papers\r\nBcc: victim@x.org\r\n\r\nbody\x00\x1b!\u2028X-Evil: 1"
    )
    msg = message_from_bytes(message_bytes(settings, email), policy=policy.default)

    assert msg.get_all("Subject") == ["Papers Bcc: victim@x.org body ! X-Evil: 1"]
    assert "Bcc" not in msg and "X-Evil" not in msg
    assert sorted(msg.keys()) == sorted(
        [
            "From",
            "To",
            "Date",
            "Subject",
            "Message-ID",
            "List-Id",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Precedence",
            "X-Digest-Kind",
            "MIME-Version",
            "Content-Type",
        ]
    )


@pytest.mark.parametrize(
    "to",
    [
        "reader@example.org\r\nBcc: victim@x.org",
        "reader@example.org\nBcc: v@x.org",
        "Reader <reader@example.org>",
        "reader @example.org",
        "reader@exa\x00mple.org",
        "a@b.org, c@d.org",
        "no-at-sign",
        '"quoted"@example.org',
        "a@b@example.org",
        "reader@example..org",
    ],
)
def test_unsafe_recipient_is_refused(tmp_path: Path, to: str) -> None:
    with pytest.raises(ValueError, match="refusing recipient"):
        make_email(make_settings(tmp_path), to=to)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "mailto:x@y.org",
        "https://digest.test/u\r\nBcc: v@x.org",
        "https://digest.test/u>, <https://evil.test/",
        "//digest.test/u",
        "https://dígest.test/",
    ],
)
def test_unsafe_unsubscribe_url_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="refusing unsubscribe URL"):
        make_email(make_settings(tmp_path), unsubscribe_url=url)


def test_message_id_is_deterministic_and_distinct(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    day = date(2026, 11, 23)
    mid = message_id_for(settings, "digest", 42, day)

    assert mid == message_id_for(settings, "digest", 42, day)
    assert mid.startswith("<digest.2026-11-23.42.") and mid.endswith("@digest.test>")
    others = {
        message_id_for(settings, "digest", 43, day),
        message_id_for(settings, "digest", 42, day + timedelta(days=1)),
        message_id_for(settings, "welcome", 42, day),
        message_id_for(make_settings(tmp_path, secret_key="other-deployment"), "digest", 42, day),
    }
    assert mid not in others and len(others) == 4
    with pytest.raises(ValueError):
        message_id_for(settings, "digest\r\nBcc: x", 42, day)


# --- SMTP failures ------------------------------------------------------------------------


def test_rejected_recipient_is_permanent_and_the_connection_carries_on(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    smtp_server.reject_recipients.add("gone@example.org")

    refused = sender.send(make_email(smtp_settings, 1, to="gone@example.org"))
    after = sender.send(make_email(smtp_settings, 2))

    assert refused.outcome is SendOutcome.PERMANENT
    assert refused.detail == "550 5.1.1 No such user here"
    assert after.outcome is SendOutcome.SENT
    assert [r.rcpt_tos for r in smtp_server.received] == [["reader2@example.org"]]
    assert sender.connections_opened == 1


def test_try_later_reply_is_temporary(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    smtp_server.fail_next.append("451 4.3.0 Try again later")

    later = sender.send(make_email(smtp_settings, 1))
    after = sender.send(make_email(smtp_settings, 2))

    assert (later.outcome, later.detail) == (SendOutcome.TEMPORARY, "451 4.3.0 Try again later")
    assert after.outcome is SendOutcome.SENT
    assert len(smtp_server.received) == 1 and sender.connections_opened == 1


def test_content_refused_for_good_is_permanent(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    smtp_server.fail_next.append("554 5.6.0 Message rejected")
    assert sender.send(make_email(smtp_settings)).outcome is SendOutcome.PERMANENT


def test_stopped_server_is_temporary_not_an_exception(
    smtp_server: SMTPServer,
    sender: SMTPSender,
    smtp_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    smtp_server.stop()

    first = sender.send(make_email(smtp_settings, 1))
    second = sender.send(make_email(smtp_settings, 2))

    assert first.outcome is second.outcome is SendOutcome.TEMPORARY
    assert f"cannot reach SMTP server 127.0.0.1:{smtp_server.port}" in first.detail
    assert "check SMTP_HOST, SMTP_PORT" in first.detail
    assert second.detail == first.detail
    assert sender.connections_opened == 0
    assert "cannot reach SMTP server" in caplog.text


def test_silent_server_times_out_once_per_session(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts TCP connections, never says hello
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        settings = make_settings(
            tmp_path,
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=listener.getsockname()[1],
            smtp_timeout=0.3,
        )
        started = time.monotonic()
        with SMTPSender(settings) as sender:
            results = [sender.send(make_email(settings, n)) for n in range(5)]
        elapsed = time.monotonic() - started

    assert {r.outcome for r in results} == {SendOutcome.TEMPORARY}
    assert "timed out" in results[0].detail
    assert elapsed < 1.5  # one timeout, not five


def test_dropped_connection_is_reopened_and_the_message_delivered(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    assert sender.send(make_email(smtp_settings, 1)).sent
    smtp_server.drop_next_mail = 1  # the server hangs up on the idle connection

    result = sender.send(make_email(smtp_settings, 2))

    assert result.outcome is SendOutcome.SENT
    assert [r.rcpt_tos for r in smtp_server.received] == [
        ["reader1@example.org"],
        ["reader2@example.org"],
    ]
    assert sender.connections_opened == 2


def test_idle_timeout_421_is_reopened_and_the_message_delivered(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    assert sender.send(make_email(smtp_settings, 1)).sent
    smtp_server.mail_replies.append("421 4.4.2 Error: timeout exceeded")

    assert sender.send(make_email(smtp_settings, 2)).sent
    assert len(smtp_server.received) == 2 and sender.connections_opened == 2


def test_connection_lost_twice_is_temporary_then_recovers(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    smtp_server.drop_next_mail = 2

    lost = sender.send(make_email(smtp_settings, 1))
    after = sender.send(make_email(smtp_settings, 2))

    assert lost.outcome is SendOutcome.TEMPORARY and "connection lost twice" in lost.detail
    assert not lost.in_doubt
    assert after.sent
    assert [r.rcpt_tos for r in smtp_server.received] == [["reader2@example.org"]]


def test_no_reply_to_data_is_in_doubt_and_not_sent_twice(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    smtp_server.drop_next_data = 1  # the server takes the message, then hangs up

    doubtful = sender.send(make_email(smtp_settings, 1))
    after = sender.send(make_email(smtp_settings, 2))

    assert doubtful.outcome is SendOutcome.TEMPORARY and doubtful.in_doubt
    assert after.sent
    assert [r.rcpt_tos for r in smtp_server.received] == [
        ["reader1@example.org"],
        ["reader2@example.org"],
    ]


# --- SMTP security and login --------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _tls_server(certificate: tuple[Path, Path], implicit: bool = False) -> SMTPServer:
    """A server that requires login as digest/s3cret, over STARTTLS or TLS from the start."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*certificate)
    server = SMTPServer(credentials={"digest": "s3cret"})
    if implicit:
        server.implicit_tls_context = server_context
    else:
        server.tls_context = server_context
    server.start()
    return server


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_login(tmp_path: Path, certificate: tuple[Path, Path], security: str) -> None:
    server = _tls_server(certificate, implicit=security == "tls")
    try:
        settings = make_settings(
            tmp_path,
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_security=security,
            smtp_username="digest",
            smtp_password="s3cret",
        )
        client_context = ssl.create_default_context(cafile=str(certificate[0]))
        with SMTPSender(settings, ssl_context=client_context) as sender:
            results = [sender.send(make_email(settings, n)) for n in (1, 2)]
        assert [r.outcome for r in results] == [SendOutcome.SENT] * 2
        assert sender.connections_opened == 1
        assert parts(server.messages[1])["text/plain"] == make_email(settings, 2).text
    finally:
        server.stop()


def test_wrong_password_is_temporary_and_says_what_to_check(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    server = _tls_server(certificate)
    try:
        settings = make_settings(
            tmp_path,
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_security="starttls",
            smtp_username="digest",
            smtp_password="wrong",
        )
        client_context = ssl.create_default_context(cafile=str(certificate[0]))
        with SMTPSender(settings, ssl_context=client_context) as sender:
            result = sender.send(make_email(settings))
        assert result.outcome is SendOutcome.TEMPORARY
        assert "refused the login as 'digest'" in result.detail
        assert "check SMTP_USERNAME and SMTP_PASSWORD" in result.detail
        assert server.received == []
    finally:
        server.stop()


def test_untrusted_certificate_is_temporary_and_says_what_to_check(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    server = _tls_server(certificate)
    try:
        settings = make_settings(
            tmp_path,
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_security="starttls",
        )
        with SMTPSender(settings) as sender:  # the system trust store: self-signed is refused
            result = sender.send(make_email(settings))
        assert result.outcome is SendOutcome.TEMPORARY
        assert "certificate" in result.detail and "SMTP_SECURITY" in result.detail
    finally:
        server.stop()


# --- File outbox --------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [v for k, v in attrs if k == "href" and v]


def test_file_sender_writes_the_message_and_an_html_copy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    email = make_email(settings)
    with FileSender(settings) as sender:
        result = sender.send(email)

    eml = Path(result.detail)
    assert result.sent
    assert eml.parent == settings.outbox_dir.resolve() / "2026-11-23"
    assert eml.read_bytes() == message_bytes(settings, email)
    msg = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    expected = build_message(settings, email)
    assert [(k, str(v)) for k, v in msg.items()] == [(k, str(v)) for k, v in expected.items()]
    assert parts(msg) == {"text/plain": email.text, "text/html": email.html}  # type: ignore[arg-type]
    assert eml.with_suffix(".html").read_text(encoding="utf-8") == email.html


def test_file_sender_overwrites_a_resent_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        first = sender.send(make_email(settings, subject="first try"))
        second = sender.send(make_email(settings, subject="second try"))

    assert first.detail == second.detail
    assert list(settings.outbox_dir.glob("*/*.eml")) == [Path(second.detail)]
    assert b"Subject: second try" in Path(second.detail).read_bytes()


def test_outbox_index_lists_every_session_newest_day_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        sender.send(make_email(settings, 1, subject="Monday's papers"))
    later = SENT_AT + timedelta(days=1)
    with FileSender(settings) as sender:
        sender.send(make_email(settings, 2, subject="Tuesday's papers", date=later))
        sender.send(make_email(settings, 3, subject="Tuesday's other papers", date=later))

    page = sender.index_path.read_text(encoding="utf-8")
    assert sender.index_path == settings.outbox_dir.resolve() / "index.html"
    assert page.index("2026-11-24") < page.index("2026-11-23")
    for n, subject in ((1, "Monday&#39;s papers"), (2, "Tuesday&#39;s papers")):
        assert subject in page and f"reader{n}@example.org" in page
    links = _Links()
    links.feed(page)
    targets = {(sender.index_path.parent / unquote(href)).resolve() for href in links.hrefs}
    assert {t.suffix for t in targets} == {".eml", ".html"}
    assert len(targets) == 6 and all(t.is_file() for t in targets)


def test_html_copies_are_written_for_the_messages_the_index_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import digest.send

    monkeypatch.setattr(digest.send, "INDEX_ROWS", 2)
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        paths = [Path(sender.send(make_email(settings, n, date=SENT_AT + timedelta(minutes=n)))
                      .detail) for n in (1, 2, 3)]
    # A big day writes one file per message; the two the index lists get their copy.
    assert [p.with_suffix(".html").exists() for p in paths] == [False, True, True]
    with FileSender(settings) as sender:  # sent again, changed: the copy follows the .eml
        sender.send(make_email(settings, 3, date=SENT_AT + timedelta(minutes=3),
                               html="<p>second version</p>\n"))
    assert paths[2].with_suffix(".html").read_text(encoding="utf-8") == "<p>second version</p>\n"


def test_hostile_recipient_stays_inside_the_outbox(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        result = sender.send(make_email(settings, to="../../../../x@y.org"))

    written = Path(result.detail).resolve()
    assert written.is_relative_to(settings.outbox_dir.resolve())
    assert written.parent.name == "2026-11-23"
    assert not (tmp_path / "x@y.org.eml").exists()


def test_hostile_subject_is_escaped_in_the_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        sender.send(make_email(settings, subject='<script>alert("x")</script> & <b>papers</b>'))

    page = sender.index_path.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<b>papers" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;papers" in page


def test_empty_outbox_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    FileSender(settings).close()
    assert "The outbox is empty." in (settings.outbox_dir / "index.html").read_text()


# --- Console and the choice of backend ----------------------------------------------------


def test_console_sender_prints_a_summary(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_backend="console")
    out = io.StringIO()
    with open_sender(settings, stream=out) as sender:
        result = sender.send(make_email(settings))

    printed = out.getvalue()
    assert result.sent
    assert "reader1@example.org" in printed
    assert "Subject: Your papers for 23 Nov: β-OPSD and 1 more" in printed
    assert "Hello Jörg," in printed


@pytest.mark.parametrize(
    ("backend", "cls"), [("smtp", SMTPSender), ("file", FileSender), ("console", ConsoleSender)]
)
def test_open_sender_follows_mail_backend(tmp_path: Path, backend: str, cls: type) -> None:
    # No retry wrapper: this test is about the backend itself (see test_send_resilience.py).
    sender = open_sender(make_settings(tmp_path, mail_backend=backend, smtp_retry_attempts=1,
                                       smtp_connections=1))
    assert isinstance(sender, cls)
    sender.close()


def test_messages_go_out_over_several_connections_each_with_its_own_outcome(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings = make_settings(tmp_path, mail_backend="smtp", smtp_host="127.0.0.1",
                             smtp_port=smtp_server.port, smtp_connections=3)
    smtp_server.reject_recipients.add("reader7@example.org")
    emails = [make_email(settings, n) for n in range(1, 31)]
    with open_sender(settings) as sender:
        results = sender.send_many(emails)
    assert [r.outcome for r in results] == [
        SendOutcome.PERMANENT if n == 7 else SendOutcome.SENT for n in range(1, 31)]
    assert sorted(str(m["To"]) for m in smtp_server.messages) == sorted(
        f"reader{n}@example.org" for n in range(1, 31) if n != 7)
    assert 2 <= smtp_server.connections <= 3  # a few long-lived connections, many messages


def test_refused_sender_is_temporary_not_the_recipients_fault(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    smtp_server.mail_replies.append("553 5.7.1 Sender address rejected: not owned by you")

    refused = sender.send(make_email(smtp_settings, 1))
    after = sender.send(make_email(smtp_settings, 2))

    assert refused.outcome is SendOutcome.TEMPORARY
    assert refused.detail == (
        "sender digest@digest.test refused: 553 5.7.1 Sender address rejected: not owned by you"
    )
    assert after.sent and sender.connections_opened == 1


def test_international_addresses_are_delivered(
    smtp_server: SMTPServer, sender: SMTPSender, smtp_settings: Settings
) -> None:
    idn = sender.send(make_email(smtp_settings, 1, to="leser@bücher.de"))
    utf8 = sender.send(make_email(smtp_settings, 2, to="jörg@example.org"))

    assert idn.sent and utf8.sent
    assert [r.rcpt_tos for r in smtp_server.received] == [
        ["leser@xn--bcher-kva.de"],
        ["jörg@example.org"],
    ]
    first, second = smtp_server.messages
    assert first["To"] == "leser@xn--bcher-kva.de"
    assert max(smtp_server.received[0].data) < 128  # plain 7-bit mail
    assert second["To"] == "jörg@example.org"  # RFC 6532 UTF-8 header
    assert parts(second)["text/plain"] == make_email(smtp_settings, 2).text


def test_outbox_index_rereads_a_changed_file_and_lists_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        paths = [Path(sender.send(make_email(settings, n, subject=f"Papers {n}")).detail)
                 for n in range(1, 4)]
    assert (settings.outbox_dir / ".index-cache.json").is_file()
    # A file changed behind the index's back (another run, a hand edit) is read again.
    paths[0].write_bytes(paths[0].read_bytes().replace(b"Papers 1", b"Edited 1"))
    monkeypatch.setattr("digest.send.INDEX_ROWS", 2)
    FileSender(settings).close()
    page = (settings.outbox_dir / "index.html").read_text(encoding="utf-8")
    assert "3 messages" in page and "The newest 2 are listed here" in page
    assert page.count('download>.eml</a>') == 2
    monkeypatch.setattr("digest.send.INDEX_ROWS", 10)
    FileSender(settings).close()
    page = (settings.outbox_dir / "index.html").read_text(encoding="utf-8")
    assert "Edited 1" in page and "Papers 1" not in page and "Papers 3" in page


def test_lines_starting_with_a_dot_arrive_intact(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings = replace(make_settings(tmp_path), mail_backend="smtp", smtp_host="127.0.0.1",
                       smtp_port=smtp_server.port)
    text = ".starts with a dot\n..two dots\nmiddle . dot\n.\nend\n"
    with SMTPSender(settings) as sender:
        assert sender.send(make_email(settings, text=text)).sent
    (message,) = smtp_server.messages
    assert parts(message)["text/plain"] == text


# --- A worker's session, kept from batch to batch ----------------------------------------


@pytest.fixture
def kept_settings(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Settings]:
    yield make_settings(tmp_path, mail_backend="smtp", smtp_host="127.0.0.1",
                        smtp_port=smtp_server.port, smtp_connections=2)
    close_kept_sender()


def send_batch_of(settings: Settings, numbers: range) -> list[SendOutcome]:
    with batch_sender(settings) as sender:
        return [r.outcome for r in sender.send_many([make_email(settings, n) for n in numbers])]


def test_a_workers_next_batch_reuses_its_smtp_connections(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    for start in range(0, 50, 10):
        assert send_batch_of(kept_settings, range(start + 1, start + 11)) == [SendOutcome.SENT] * 10

    assert len(smtp_server.received) == 50
    assert 1 <= smtp_server.connections <= 2  # the first batch's, never reopened


def test_after_a_temporary_failure_the_next_batch_starts_afresh(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    settings = replace(kept_settings, smtp_retry_attempts=1)  # the failure reaches us
    assert send_batch_of(settings, range(1, 3)) == [SendOutcome.SENT] * 2
    opened = smtp_server.connections
    smtp_server.fail_next.append("451 4.3.0 Try again later")

    assert SendOutcome.TEMPORARY in send_batch_of(settings, range(3, 5))
    assert send_batch_of(settings, range(5, 7)) == [SendOutcome.SENT] * 2
    assert smtp_server.connections > opened


def test_an_idle_kept_session_is_closed_and_a_new_one_opened(
    kept_settings: Settings, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert send_batch_of(kept_settings, range(1, 2)) == [SendOutcome.SENT]
    monkeypatch.setattr("digest.send.KEEP_IDLE_SECONDS", 0.0)

    assert send_batch_of(kept_settings, range(2, 3)) == [SendOutcome.SENT]
    assert smtp_server.connections == 2


def test_a_server_that_dropped_a_kept_connection_costs_no_message(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    settings = replace(kept_settings, smtp_connections=1)
    assert send_batch_of(settings, range(1, 2)) == [SendOutcome.SENT]
    smtp_server.mail_replies.append("421 4.4.2 Idle timeout, closing")

    assert send_batch_of(settings, range(2, 4)) == [SendOutcome.SENT] * 2
    assert [r.rcpt_tos for r in smtp_server.received] == [
        [f"reader{n}@example.org"] for n in (1, 2, 3)]


def test_a_forked_child_never_uses_its_parents_connections(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    import multiprocessing

    assert send_batch_of(kept_settings, range(1, 2)) == [SendOutcome.SENT]
    context = multiprocessing.get_context("fork")
    child = context.Process(target=send_batch_of, args=(kept_settings, range(2, 3)))
    child.start()
    child.join(30)

    assert child.exitcode == 0
    assert send_batch_of(kept_settings, range(3, 4)) == [SendOutcome.SENT]
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        f"reader{n}@example.org" for n in (1, 2, 3)]
    assert smtp_server.connections == 2  # the parent's, kept; the child's own


def test_other_backends_are_opened_and_closed_per_batch(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_backend="file")
    send_batch_of(settings, range(1, 3))

    assert (settings.outbox_dir / "index.html").exists()  # written on close, as ever
    assert len(list(settings.outbox_dir.glob("*/*.eml"))) == 2
