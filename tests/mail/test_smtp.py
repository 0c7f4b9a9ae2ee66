"""SMTP against a real server on loopback: delivery, every failure classified, TLS and login."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from digest.mail.backend import SendOutcome
from digest.mail.senders import (
    open_sender,
)
from digest.mail.smtp import SMTPSender, _pipelinable
from digest.settings import Settings

from ..conftest import make_settings
from ..smtp_server import SMTPServer
from .emails import MAILTO, SENT_AT, make_email, parts


@pytest.fixture(params=[True, False], ids=["pipelined", "one-at-a-time"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    """Every test here against a server that offers PIPELINING and one that does not."""
    server = SMTPServer(pipelining=request.param)
    server.start()
    yield server
    server.stop()


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




# --- PIPELINING (RFC 2920) -------------------------------------------------------------------


class _ScriptedServer:
    """A bare SMTP server on a socket that notes, when MAIL is to be answered, what else the
    client had sent by then: whether it waited for the reply before its next command."""

    def __init__(self, offer_pipelining: bool) -> None:
        self.offer = offer_pipelining
        self.waiting_at_mail: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        buffer = b""

        def line() -> bytes:
            nonlocal buffer
            while b"\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return b""
                buffer += chunk
            first, buffer = buffer.split(b"\r\n", 1)
            return first

        with conn, self.listener:
            conn.sendall(b"220 scripted ESMTP\r\n")
            line()  # EHLO
            offer = b"250-PIPELINING\r\n" if self.offer else b""
            conn.sendall(b"250-scripted\r\n" + offer + b"250 8BITMIME\r\n")
            while command := line()[:4].upper():
                if command == b"MAIL":
                    time.sleep(0.2)  # time enough for whatever the client sends unasked
                    conn.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        buffer += conn.recv(65536)
                    conn.setblocking(True)
                    self.waiting_at_mail.append(buffer)
                if command == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                if command == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while line() != b".":
                        pass
                conn.sendall(b"250 ok\r\n")


@pytest.mark.parametrize("offered, setting, pipelined", [
    (True, True, True),  # offered and allowed: one write, then the replies
    (False, True, False),  # not offered: one command at a time, as RFC 2920 requires
    (True, False, False),  # SMTP_PIPELINING=false, for a relay that mishandles it
])
def test_envelope_and_data_go_in_one_write_only_when_the_server_offers_pipelining(
    tmp_path: Path, offered: bool, setting: bool, pipelined: bool
) -> None:
    server = _ScriptedServer(offer_pipelining=offered)
    settings = make_settings(tmp_path, mail_backend="smtp", smtp_host="127.0.0.1",
                             smtp_port=server.port, smtp_timeout=5.0, smtp_pipelining=setting)
    with SMTPSender(settings) as sender:
        results = [sender.send(make_email(settings, n)) for n in (1, 2)]
    server.thread.join(5)

    assert [r.outcome for r in results] == [SendOutcome.SENT] * 2
    expected = [b"RCPT TO:<reader1@example.org>\r\nDATA\r\n",
                b"RCPT TO:<reader2@example.org>\r\nDATA\r\n"] if pipelined else [b"", b""]
    assert server.waiting_at_mail == expected


@pytest.mark.parametrize("address, plain", [
    ("reader@example.org", True),
    ("a@example.org>\r\nRCPT TO:<b@example.org", False),  # would smuggle in a command
    ("a@example.org\nRSET", False),
    ('"john doe"@example.org', True),  # a quoted local part, worded as smtplib does
    ("John <john@example.org>", False),  # smtplib would send only the address: its way
    ("rédacteur@example.org", False),
])
def test_only_a_plain_address_is_written_into_pipelined_commands(
    address: str, plain: bool
) -> None:
    assert _pipelinable(address) is plain
