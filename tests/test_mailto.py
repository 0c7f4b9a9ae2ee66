"""Unsubscribe by email: each digest's List-Unsubscribe mailto is its reader's own signed
address, and `digest unsubscribe-mail` stops exactly that reader, whatever From says."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from digest.cli import main
from digest.cli.subscribers import EX_TEMPFAIL
from digest.mail.mime import fast_message_bytes
from digest.mailto import (
    MAX_BASE_LOCAL_PART,
    MAX_MESSAGE_BYTES,
    MailOutcome,
    mailto_address,
    poll_mailbox,
)
from digest.models import EventKind, Subscriber, SubscriberEvent, SubscriberStatus
from digest.notices import LinkRef, Notice, compose_notice
from digest.pipeline import run_day
from digest.settings import UNSUBSCRIBE_LOCAL_PART_MAX, Settings, SettingsError

from .conftest import make_settings
from .factories import make_subscriber
from .imap_server import IMAPServer, make_server
from .smtp_server import SMTPServer
from .test_pipeline import DAY, seed_papers

TAGGED = re.compile(r"unsubscribe\+([0-9]+)-([a-z2-7]{16})@digest\.test")

Unsubscribe = Callable[..., Result]


@pytest.fixture
def smtp_settings(settings: Settings, smtp_server: SMTPServer) -> Settings:
    return replace(settings, mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, min_relevance=0.05)


def command_env(settings: Settings) -> dict[str, str]:
    """The environment an MTA pipe would give `digest`: the deployment's settings."""
    return {
        "DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key,
        "MAIL_FROM": settings.mail_from,
        "MAIL_BACKEND": "file",
        "PUBLIC_BASE_URL": settings.public_base_url,
        "UNSUBSCRIBE_MAILTO": "",
    }


@pytest.fixture
def unsubscribe_mail(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Unsubscribe:
    """`digest unsubscribe-mail [args] < message` against the test's database."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout

    def invoke(message: bytes, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(main, ["unsubscribe-mail", *args], input=message,
                                  env=env or command_env(settings), catch_exceptions=False)

    return invoke


def mailto_of(message: EmailMessage) -> str:
    """The address of a message's List-Unsubscribe mailto, as a mail client reads it."""
    found = re.search(r"<mailto:([^?>]+)\?subject=unsubscribe>", str(message["List-Unsubscribe"]))
    assert found, message["List-Unsubscribe"]
    return found[1]


def reply(to: str, sender: str = "ada@example.org", **headers: str) -> bytes:
    """What a mail client sends for "unsubscribe" via the mailto."""
    message = EmailMessage()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "unsubscribe"
    message.set_content("Please stop.\n")
    return bytes(message)


def statuses(session: Session) -> dict[str, SubscriberStatus]:
    session.expire_all()
    found = {s.email: s.status for s in session.scalars(select(Subscriber))}
    session.rollback()  # no open transaction while the command writes (SQLite would wait)
    return found


def unsubscribe_events(session: Session) -> list[tuple[int, str]]:
    rows = session.execute(
        select(SubscriberEvent.subscriber_id, SubscriberEvent.source)
        .where(SubscriberEvent.kind == EventKind.UNSUBSCRIBED)).all()
    session.rollback()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def send_digests(session: Session, smtp_settings: Settings,
                 smtp_server: SMTPServer) -> dict[str, EmailMessage]:
    """ada and grace each get today's digest through the real SMTP server."""
    seed_papers(session)
    make_subscriber(session, email="ada@example.org", topics="LoRA, low-rank adaptation")
    make_subscriber(session, email="grace@example.org", topics="diffusion models")
    session.commit()
    run_day(smtp_settings, DAY)
    received = smtp_server.by_recipient()
    assert sorted(received) == ["ada@example.org", "grace@example.org"]
    return {email: messages[0] for email, messages in received.items()}


# --- The address in every email -----------------------------------------------------------


def test_each_digest_carries_its_readers_own_signed_mailto(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    digests = send_digests(session, smtp_settings, smtp_server)
    ids = {s.email: s.id for s in session.scalars(select(Subscriber))}
    addresses = {email: mailto_of(message) for email, message in digests.items()}
    for email, address in addresses.items():
        tagged = TAGGED.fullmatch(address)
        assert tagged, address
        assert int(tagged[1]) == ids[email]
        assert len(address.rpartition("@")[0]) <= 64  # RFC 5321
        assert digests[email]["List-Unsubscribe"].startswith("<https://digest.test/unsubscribe/")
    assert addresses["ada@example.org"] != addresses["grace@example.org"]


def test_the_longest_address_keeps_its_local_part_within_64_characters(tmp_path: Path) -> None:
    assert MAX_BASE_LOCAL_PART == UNSUBSCRIBE_LOCAL_PART_MAX
    longest = make_settings(tmp_path, unsubscribe_mailto="u" * MAX_BASE_LOCAL_PART + "@x.org")
    address = mailto_address(longest, LinkRef(2**31 - 1, "k" * 22))
    assert len(address.rpartition("@")[0]) == 64
    with pytest.raises(SettingsError, match=r"UNSUBSCRIBE_MAILTO.*at most 64"):
        make_settings(tmp_path, unsubscribe_mailto="u" * (MAX_BASE_LOCAL_PART + 1) + "@x.org")
    with pytest.raises(SettingsError, match="UNSUBSCRIBE_MAILTO"):
        make_settings(tmp_path, unsubscribe_mailto="no-at-sign")


def test_a_notice_carries_its_subscribers_mailto(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    notice = Notice(template="already_subscribed", to="ada@example.org",
                    subscriber=LinkRef(7, "a" * 22), request=LinkRef(3, "b" * 22),
                    topics="LoRA", time_zone="UTC", send_hour=7, papers_per_digest=5)
    email = compose_notice(settings, notice)
    assert email.unsubscribe_mailto == mailto_address(settings, notice.subscriber)
    assert TAGGED.fullmatch(email.unsubscribe_mailto)
    assert f"<mailto:{email.unsubscribe_mailto}?subject=unsubscribe>".encode() \
        in fast_message_bytes(settings, email)


# --- Replying to it -----------------------------------------------------------------------


def test_a_reply_to_that_address_unsubscribes_exactly_that_reader(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer,
    unsubscribe_mail: Unsubscribe,
) -> None:
    digests = send_digests(session, smtp_settings, smtp_server)
    ada = mailto_of(digests["ada@example.org"])
    message = reply(ada, In_Reply_To=str(digests["ada@example.org"]["Message-ID"]))

    result = unsubscribe_mail(message, "--recipient", ada)
    assert result.exit_code == 0
    assert re.fullmatch(r"unsubscribed: ada@example\.org \(subscriber \d+\)\n", result.stdout)
    assert statuses(session) == {"ada@example.org": SubscriberStatus.UNSUBSCRIBED,
                                 "grace@example.org": SubscriberStatus.ACTIVE}
    ada_id = int(TAGGED.fullmatch(ada)[1])  # type: ignore[index]
    assert unsubscribe_events(session) == [(ada_id, "mailto")]

    again = unsubscribe_mail(message, "--recipient", ada)  # the MTA delivered it twice
    assert again.exit_code == 0 and again.stdout.startswith("already unsubscribed: ada@")
    assert unsubscribe_events(session) == [(ada_id, "mailto")]

    # Without --recipient the To header names the address; a later digest is not sent.
    grace = mailto_of(digests["grace@example.org"])
    assert unsubscribe_mail(reply(grace, sender="grace@example.org")).exit_code == 0
    assert set(statuses(session).values()) == {SubscriberStatus.UNSUBSCRIBED}


def test_no_forged_stale_or_plain_address_changes_anything(
    session: Session, settings: Settings, unsubscribe_mail: Unsubscribe
) -> None:
    ada = make_subscriber(session, email="ada@example.org")
    grace = make_subscriber(session, email="grace@example.org")
    session.commit()
    ada_tag = TAGGED.fullmatch(mailto_address(settings, ada))[2]  # type: ignore[index]
    other_key = replace(settings, secret_key="another deployment's key")
    attempts = {
        "a forged tag": reply(f"unsubscribe+{grace.id}-aaaaaaaaaaaaaaaa@digest.test"),
        "grace's id with ada's tag": reply(f"unsubscribe+{grace.id}-{ada_tag}@digest.test"),
        "grace's id with a guessed link key":
            reply(mailto_address(settings, LinkRef(grace.id, "A" * 22))),
        "a tag signed with another SECRET_KEY": reply(mailto_address(other_key, grace)),
        "no such subscriber": reply(mailto_address(settings, LinkRef(987654, "k" * 22))),
        "a malformed tag": reply(f"unsubscribe+{grace.id}-short@digest.test"),
        "the plain address": reply("unsubscribe@digest.test"),
        "From spoofing grace, to the plain address":
            reply("unsubscribe@digest.test", sender="grace@example.org"),
        "From spoofing grace, to a forged tag":
            reply(f"unsubscribe+{grace.id}-bbbbbbbbbbbbbbbb@digest.test",
                  sender="Grace <grace@example.org>", Reply_To="grace@example.org"),
        "another local part": reply(
            mailto_address(settings, grace).replace("unsubscribe+", "postmaster+")),
    }
    for what, message in attempts.items():
        result = unsubscribe_mail(message)
        assert result.exit_code == 0, what  # handled: the MTA drops it, nobody gets a bounce
        assert result.stdout == "", what
        assert result.stderr.startswith("refused: ") and result.stderr.count("\n") == 1, what
        assert set(statuses(session).values()) == {SubscriberStatus.ACTIVE}, what
    assert unsubscribe_events(session) == []
    # And a forged tag on the command line (the envelope) is refused just the same.
    forged = unsubscribe_mail(reply("unsubscribe@digest.test"), "--recipient",
                              f"unsubscribe+{ada.id}-cccccccccccccccc@digest.test")
    assert forged.exit_code == 0 and "has no valid unsubscribe tag" in forged.stderr
    assert set(statuses(session).values()) == {SubscriberStatus.ACTIVE}


def test_the_address_of_a_deleted_reader_does_not_stop_whoever_took_their_id(
    session: Session, settings: Settings, unsubscribe_mail: Unsubscribe
) -> None:
    gone = make_subscriber(session, email="ada@example.org")
    old_address, old_id = mailto_address(settings, gone), gone.id
    session.delete(gone)
    session.commit()
    # The worst case: a new row with the same id (SQLite before migration 0005 did that).
    newcomer = Subscriber(id=old_id, email="ada@example.org", status=SubscriberStatus.ACTIVE)
    session.add(newcomer)
    session.commit()

    stale = unsubscribe_mail(reply(old_address), "--recipient", old_address)
    assert stale.exit_code == 0 and "has no valid unsubscribe tag" in stale.stderr
    assert statuses(session) == {"ada@example.org": SubscriberStatus.ACTIVE}
    own = mailto_address(settings, newcomer)
    assert own != old_address
    assert unsubscribe_mail(reply(own), "--recipient", own).stdout.startswith("unsubscribed:")
    assert statuses(session) == {"ada@example.org": SubscriberStatus.UNSUBSCRIBED}


# --- Where the address is found, and what is refused --------------------------------------


@pytest.fixture
def ada(sqlite_settings: Settings) -> Iterator[tuple[Settings, str, Callable[[], bool]]]:
    """One active reader on SQLite: (settings, her signed address, "is she still active?")."""
    from digest import db

    with db.session_scope(sqlite_settings) as session:
        subscriber = make_subscriber(session, email="ada@example.org")
        address, ada_id = mailto_address(sqlite_settings, subscriber), subscriber.id

    def active() -> bool:
        with db.session_scope(sqlite_settings) as session:
            return session.get(Subscriber, ada_id).status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]

    yield sqlite_settings, address, active


def run_command(settings: Settings, message: bytes, *args: str,
                env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["unsubscribe-mail", *args], input=message,
                              env=env or command_env(settings), catch_exceptions=False)


@pytest.mark.parametrize("how", ["delivered-to", "x-original-to", "upper-case",
                                 "after-a-malformed-one"])
def test_the_address_is_found_where_an_mta_puts_it(
    ada: tuple[Settings, str, Callable[[], bool]], how: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, address, active = ada
    monkeypatch.chdir(tmp_path)
    # Postfix's local delivery to a command: a "From " line, then the headers it prepends;
    # the reader's client wrote the plain address (an old digest, a forward) into To.
    if how == "upper-case":
        message = reply(address.upper())
    elif how == "after-a-malformed-one":
        message = b"Delivered-To: unsubscribe+junk@digest.test\n" + reply(address)
    else:
        header = "Delivered-To" if how == "delivered-to" else "X-Original-To"
        message = (b"From ada@example.org  Mon Nov 23 07:00:00 2026\n"
                   + f"{header}: {address}\n".encode()
                   + reply("unsubscribe@digest.test"))
    result = run_command(settings, message)
    assert result.exit_code == 0 and result.stdout.startswith("unsubscribed: ada@"), result.output
    assert not active()


def test_the_envelope_recipient_overrides_the_headers(
    ada: tuple[Settings, str, Callable[[], bool]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, address, active = ada
    monkeypatch.chdir(tmp_path)
    result = run_command(settings, reply(address), "--recipient", "unsubscribe@digest.test")
    assert result.exit_code == 0 and "is not a signed unsubscribe address" in result.stderr
    assert active()


def test_a_huge_or_unreadable_message_is_refused_in_one_line(
    ada: tuple[Settings, str, Callable[[], bool]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, address, active = ada
    monkeypatch.chdir(tmp_path)
    huge = reply(address) + b"x" * MAX_MESSAGE_BYTES
    cases = {
        huge: "larger than 1,000,000 bytes",
        bytes(range(256)) * 64: "no recipient address",
        b"": "no recipient address",
        b"To: =?utf-8?q?\xff\xfe?= <<<@@>>>, \x00\r\nSubject: \xff\r\n\r\n":
            "is not a signed unsubscribe address",
    }
    for message, reason in cases.items():
        result = run_command(settings, message)
        assert result.exit_code == 0 and result.stdout == ""
        assert result.stderr.startswith("refused: ") and reason in result.stderr
        assert result.stderr.count("\n") == 1
        assert active()


def test_a_database_that_cannot_be_used_means_try_again_later(
    ada: tuple[Settings, str, Callable[[], bool]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, address, _ = ada
    monkeypatch.chdir(tmp_path)
    env = command_env(settings) | {
        "DATABASE_URL": "postgresql+psycopg://digest@127.0.0.1:1/digest"}  # nothing listens
    result = run_command(settings, reply(address), env=env)
    assert result.exit_code == EX_TEMPFAIL == 75  # the MTA keeps the message and tries again
    assert result.stderr.startswith("try again later: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_the_command_reads_a_real_pipe(
    ada: tuple[Settings, str, Callable[[], bool]], tmp_path: Path
) -> None:
    settings, address, active = ada
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    done = subprocess.run(
        [sys.executable, "-m", "digest.cli", "unsubscribe-mail", "--recipient", address],
        input=reply(address), env=env | command_env(settings), cwd=tmp_path,
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("unsubscribed: ada@example.org")
    assert not active()


# --- A mailbox over IMAP (a test server on loopback) --------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate and key for 127.0.0.1 in one PEM file."""
    folder = tmp_path_factory.mktemp("imap-tls")
    pem = folder / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True)
    pem.write_bytes((folder / "cert.pem").read_bytes() + (folder / "key.pem").read_bytes())
    return pem


def server_context(certificate: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate)
    return context


@pytest.fixture
def mailbox(certificate: Path) -> Iterator[IMAPServer]:
    server = make_server(tls_context=server_context(certificate))
    yield server
    server.stop()


def imap_env(settings: Settings, server: IMAPServer, certificate: Path,
             **overrides: str) -> dict[str, str]:
    return command_env(settings) | {
        "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(server.port), "IMAP_SECURITY": "tls",
        "IMAP_USERNAME": "digest", "IMAP_PASSWORD": "s3cret", "IMAP_MAILBOX": "INBOX",
        "SSL_CERT_FILE": str(certificate),  # OpenSSL's default trust: our test certificate
    } | overrides


def test_imap_answers_each_unseen_message_once_and_marks_it_seen(
    session: Session, settings: Settings, mailbox: IMAPServer, certificate: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    ada = make_subscriber(session, email="ada@example.org")
    grace = make_subscriber(session, email="grace@example.org")
    session.commit()
    grace_address = mailto_address(settings, grace)
    to_ada = mailbox.add(reply(mailto_address(settings, ada)))
    mailbox.add(reply("unsubscribe@digest.test", sender="grace@example.org"))
    mailbox.add(reply(f"unsubscribe+{grace.id}-aaaaaaaaaaaaaaaa@digest.test"))
    read_before = mailbox.add(reply(grace_address), seen=True)  # a person handled it already
    huge = mailbox.add(reply(grace_address) + b"x" * MAX_MESSAGE_BYTES)

    result = run_command(settings, b"", "--imap", env=imap_env(settings, mailbox, certificate))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"unsubscribed: ada@example.org (subscriber {ada.id})",
        "4 message(s): 1 unsubscribed, 3 refused."]
    assert "larger than 1,000,000 bytes" in result.stderr and result.stderr.count("\n") == 3
    assert statuses(session) == {"ada@example.org": SubscriberStatus.UNSUBSCRIBED,
                                 "grace@example.org": SubscriberStatus.ACTIVE}
    assert all(m.seen for m in mailbox.messages)
    assert to_ada.fetched and not huge.fetched and not read_before.fetched
    assert ("LOGIN", True) in mailbox.commands  # the password went over TLS

    again = run_command(settings, b"", "--imap", env=imap_env(settings, mailbox, certificate))
    assert again.exit_code == 0 and again.stdout == "0 message(s): nothing unseen.\n"
    assert unsubscribe_events(session) == [(ada.id, "mailto")]


def test_imap_over_starttls_logs_in_only_after_tls(
    sqlite_settings: Settings, certificate: Path
) -> None:
    server = make_server(starttls_context=server_context(certificate))
    try:
        server.add(reply("unsubscribe@digest.test"))
        settings = replace(sqlite_settings, imap_host="127.0.0.1", imap_port=server.port,
                           imap_security="starttls", imap_username="digest",
                           imap_password="s3cret")
        report = poll_mailbox(settings, ssl.create_default_context(cafile=str(certificate)))
        assert [r.outcome for r in report.results] == [MailOutcome.REFUSED]
        assert server.messages[0].seen
        commands = [c for c, _ in server.commands]
        assert commands.index("STARTTLS") < commands.index("LOGIN")
        assert all(tls for c, tls in server.commands if c == "LOGIN")
    finally:
        server.stop()


def test_a_mailbox_that_cannot_be_read_is_a_one_line_error(
    sqlite_settings: Settings, mailbox: IMAPServer, certificate: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    mailbox.add(reply("unsubscribe@digest.test"))
    env = imap_env(sqlite_settings, mailbox, certificate)
    cases = {
        "wrong password": env | {"IMAP_PASSWORD": "wrong"},
        "no such mailbox": env | {"IMAP_MAILBOX": "Unsubscribe requests"},
        "untrusted certificate": {k: v for k, v in env.items() if k != "SSL_CERT_FILE"},
        "IMAP_HOST unset": env | {"IMAP_HOST": ""},
    }
    for what, case_env in cases.items():
        result = run_command(sqlite_settings, b"", "--imap", env=case_env)
        assert result.exit_code == 1, what
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, what
        assert "IMAP_" in result.stderr, what
        assert "Traceback" not in result.output
    assert not mailbox.messages[0].seen
    # The certificate was refused before any password was sent.
    assert [c for c, _ in mailbox.commands].count("LOGIN") == 2


def test_a_message_stays_unseen_when_the_database_fails(
    sqlite_settings: Settings, mailbox: IMAPServer, certificate: Path
) -> None:
    spam = mailbox.add(reply("unsubscribe@digest.test"))
    request = mailbox.add(reply(mailto_address(sqlite_settings, LinkRef(1, "k" * 22))))
    settings = replace(sqlite_settings, database_url="postgresql+psycopg://d@127.0.0.1:1/d",
                       imap_host="127.0.0.1", imap_port=mailbox.port, imap_username="digest",
                       imap_password="s3cret")
    with pytest.raises(SQLAlchemyError):
        poll_mailbox(settings, ssl.create_default_context(cafile=str(certificate)))
    assert spam.seen and not request.seen  # the next run answers it
