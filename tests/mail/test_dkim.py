"""DKIM: a digest sent through the real pipeline and a real SMTP server is signed over the
headers mailbox providers require, and verifies with the public key published in DNS."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from digest import db
from digest.deliverability import dkim_public_key
from digest.mail.dkim import dkim_sign
from digest.mail.message import OutgoingEmail
from digest.mail.mime import message_bytes
from digest.pipeline import run_day
from digest.settings import Settings

from ..conftest import lexical_only, make_settings
from ..factories import make_paper, make_subscriber
from ..smtp_server import SMTPServer

DAY = date(2026, 11, 23)
SELECTOR = "pd2026"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())
DNS_TXT = f"v=DKIM1; k=rsa; p={dkim_public_key(PEM)}".encode()


def dns(name: bytes, timeout: int = 5) -> bytes | None:
    """The TXT record a receiver would find: ours at <selector>._domainkey.digest.test only."""
    return DNS_TXT if name.rstrip(b".") == f"{SELECTOR}._domainkey.digest.test".encode() else None


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "dkim.pem"
    path.write_bytes(PEM)
    return path


def replace_header(data: bytes, name: str, value: str) -> bytes:
    """`data` with header `name` (folded over any number of lines) set to `value`."""
    pattern = re.compile(rb"^" + name.encode() + rb":.*?\r\n(?![ \t])", re.M | re.S)
    return pattern.sub(f"{name}: {value}\r\n".encode(), data, count=1)


def signed_headers(data: bytes) -> list[str]:
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = re.sub(r"\r\n[ \t]+", " ", header)
    signature = re.search(r"^DKIM-Signature: (.*)$", unfolded, re.M)
    assert signature, "no DKIM-Signature header"
    tags = dict(t.strip().split("=", 1) for t in signature.group(1).split(";") if "=" in t)
    assert tags["d"] == "digest.test" and tags["s"] == SELECTOR and tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    return [h.strip().lower() for h in tags["h"].split(":")]


def test_a_digest_from_the_pipeline_is_signed_and_verifies(
    sqlite_settings: Settings, smtp_server: SMTPServer, key_path: Path
) -> None:
    settings = replace(lexical_only(sqlite_settings), mail_backend="smtp",
                       smtp_host="127.0.0.1", smtp_port=smtp_server.port,
                       dkim_private_key_path=str(key_path), dkim_selector=SELECTOR)
    morning = datetime(2026, 11, 23, 6, tzinfo=timezone.utc)
    with db.session_scope(settings) as s:
        make_subscriber(s, email="ada@example.org")
        make_paper(s, title="LoRA for everyone", first_seen_at=morning, published_at=morning)
    assert run_day(settings, DAY).sent == ["ada@example.org"]
    [received] = smtp_server.received
    data = received.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=dns)
    headers = signed_headers(data)
    for name in ("from", "subject", "date", "message-id", "list-unsubscribe",
                 "list-unsubscribe-post"):
        assert headers.count(name) == 2, f"{name} is not signed (and oversigned)"

    # What a man in the middle might change, each breaks the signature.
    for header, value in (("Subject", "Buy now"), ("List-Unsubscribe", "<https://evil.test/u>"),
                          ("From", "Paper Digest <digest@evil.test>")):
        tampered = replace_header(data, header, value)
        assert tampered != data and not dkim.verify(tampered, dnsfunc=dns), header
    added = data.replace(b"\r\nFrom: ", b"\r\nFrom: Mallory <m@evil.test>\r\nFrom: ", 1)
    assert not dkim.verify(added, dnsfunc=dns)  # a second From is caught (oversigned)
    body_changed = data.replace(b"LoRA for everyone", b"LoRA for nobody!!")
    assert body_changed != data and not dkim.verify(body_changed, dnsfunc=dns)


def test_without_a_key_mail_goes_out_unsigned(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    email = OutgoingEmail(
        to="ada@example.org", subject="Hello", html="<p>Hi</p>", text="Hi\n",
        message_id="<x.1@digest.test>", unsubscribe_url="https://digest.test/unsubscribe/t",
        date=datetime(2026, 11, 23, tzinfo=timezone.utc),
    )
    assert b"DKIM-Signature" not in message_bytes(settings, email)
    assert dkim_sign(settings, b"From: a@b.c\r\n\r\nx\r\n") == b"From: a@b.c\r\n\r\nx\r\n"


def test_an_unreadable_key_says_how_to_make_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, dkim_private_key_path=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="openssl genrsa"):
        dkim_sign(settings, b"From: a@b.c\r\n\r\nx\r\n")
