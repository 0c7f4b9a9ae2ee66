"""Turn a rendered digest into a MIME message and hand it to the configured mail backend.

`build_message` makes the one message format every backend sends; `open_sender(settings)`
returns the backend chosen by MAIL_BACKEND:

- `smtp`: `SMTPSender`, one reused connection, every failure classified into a `SendResult`;
- `file` (the embedded default): `FileSender`, `.eml` + `.html` files and a browsable index;
- `console`: `ConsoleSender`, a short summary per message on stdout.

A sender never raises for one recipient's failure: it answers SENT, TEMPORARY or PERMANENT
and the pipeline decides what to record and whether to retry.

Wrappers add resilience around any backend: `RetryingSender` retries a temporary failure a
few times with backoff (SMTP_RETRY_*), `RateLimitedSender` holds every worker to one shared
send rate kept in Redis (SEND_RATE_PER_SECOND). `open_sender` composes them from settings.
"""

from __future__ import annotations

import atexit
import binascii
import contextlib
import functools
import hashlib
import heapq
import hmac
import json
import logging
import os
import random as random_module
import re
import smtplib
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import EmailPolicy
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from enum import Enum
from itertools import groupby
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TextIO
from urllib.parse import quote, unquote, urlsplit

import idna
import redis
from jinja2 import Environment, FileSystemLoader
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import metrics
from .journal import Journal, mark_for
from .settings import PROJECT_DIR, Settings

log = logging.getLogger(__name__)

TEMPLATES_DIR = PROJECT_DIR / "templates"

# An unquoted addr-spec (what email-validator's normalised form is): no quotes, brackets,
# commas, whitespace or controls, so it can go into a header and an SMTP command as it is.
# Letters beyond ASCII are allowed: domains are sent as punycode, local parts need SMTPUTF8.
_SPECIALS = r"\s\x00-\x1f\x7f-\x9f\"(),:;<>@\[\\\]"
_LOCAL, _LABEL = rf"[^{_SPECIALS}]+", rf"[^{_SPECIALS}.]+"
_ADDRESS = re.compile(rf"{_LOCAL}@{_LABEL}(\.{_LABEL})*")
_KIND = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x20\x7f-\x9f]")
_UNSAFE_IN_URL = re.compile(r"[^\x21-\x7e]|[<>\"\\]")


# --- The message --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingEmail:
    """One rendered email for one recipient; validated on construction."""

    to: str
    subject: str
    html: str
    text: str
    message_id: str
    unsubscribe_url: str
    date: datetime
    kind: str = "digest"
    # The recipient's own signed address (mailto.mailto_address); empty: UNSUBSCRIBE_MAILTO.
    unsubscribe_mailto: str = ""

    def __post_init__(self) -> None:
        check_address(self.to, "recipient")
        check_url(self.unsubscribe_url, "unsubscribe URL")
        if self.unsubscribe_mailto:
            check_address(self.unsubscribe_mailto, "unsubscribe mailto")
        if not _MESSAGE_ID.fullmatch(self.message_id):
            raise ValueError(
                f"refusing Message-ID {self.message_id!r}: it must look like <id@domain> "
                "with no spaces or control characters (make it with message_id_for)"
            )
        if not _KIND.fullmatch(self.kind):
            raise ValueError(
                f"refusing email kind {self.kind!r}: use lower-case letters, digits, - and _"
            )


def check_address(address: str, what: str = "address") -> str:
    """Return `address` if it is a plain addr-spec safe to put in a header; else ValueError."""
    if _UNSAFE_IN_HEADER.search(address):
        raise ValueError(
            f"refusing {what} {address!r}: it contains whitespace or control characters, "
            "which could inject mail headers"
        )
    if not _ADDRESS.fullmatch(address):
        raise ValueError(
            f"refusing {what} {address!r}: expected a bare address like reader@example.org "
            "(no display name, no quoting)"
        )
    return address


def check_url(url: str, what: str = "URL") -> str:
    """Return `url` if it is an absolute http(s) URL safe inside <...> in a header."""
    if _UNSAFE_IN_URL.search(url):
        raise ValueError(
            f'refusing {what} {url!r}: it contains whitespace, control, non-ASCII or <>"\\ '
            "characters (percent-encode them)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"refusing {what} {url!r}: it must be an absolute https:// URL")
    return url


def wire_address(address: str) -> str:
    """The address as headers and SMTP carry it: an internationalised domain in punycode."""
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise ValueError(f"refusing address {address!r}: its domain is not valid IDNA") from exc


def needs_smtputf8(address: str) -> bool:
    """A non-ASCII local part can only travel with SMTPUTF8 and UTF-8 headers (RFC 6531/6532)."""
    return not wire_address(address).isascii()


def clean_subject(subject: str) -> str:
    """One line of text: every run of whitespace or control characters becomes one space."""
    if subject.isprintable() and "  " not in subject and subject.strip(" ") == subject:
        return subject  # no control character, no other space than single inner ones
    return " ".join(_UNSAFE_IN_HEADER.sub(" ", subject).split())


def message_id_for(settings: Settings, kind: str, subscriber_id: int, day: date) -> str:
    """The Message-ID of one subscriber's email of one kind for one day.

    Deterministic, so a retried send carries the same id and receivers (and our file outbox)
    treat it as the same message; the keyed hash keeps ids from different deployments that
    share a mail domain (say, localhost) from colliding.
    """
    if not _KIND.fullmatch(kind):
        raise ValueError(f"refusing email kind {kind!r}: use lower-case letters, digits, - and _")
    local = f"{kind}.{day.isoformat()}.{int(subscriber_id)}"
    tag = hmac.new(settings.signing_key().encode(), local.encode(), hashlib.sha256)
    return f"<{local}.{tag.hexdigest()[:16]}@{settings.mail_domain}>"


class _MailPolicy(EmailPolicy):
    """`email.policy.SMTP` with 7-bit bodies, and URL headers folded only between items.

    The email package RFC 2047-encodes any header word longer than a line, which turns a long
    unsubscribe URL into =?utf-8?q?...?= that no mail client reads as a URL (RFC 2369 wants the
    bare <URL>). Bodies are 7-bit (quoted-printable or base64) because we do not ask the
    server for 8BITMIME.
    """

    _VERBATIM = frozenset({"list-unsubscribe", "list-unsubscribe-post", "message-id"})

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in self._VERBATIM and str(value).isascii():
            return self._fold_at_commas(name, str(value))
        return super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in self._VERBATIM and str(value).isascii():
            return self._fold_at_commas(name, str(value)).encode("ascii")
        return super().fold_binary(name, value)

    def _fold_at_commas(self, name: str, value: str) -> str:
        limit = self.max_line_length or 998
        lines = [f"{name}:"]
        items = value.split(", ")
        for i, item in enumerate(items):
            piece = item + ("," if i < len(items) - 1 else "")
            if len(lines[-1]) + 1 + len(piece) > limit and lines[-1] != f"{name}:":
                lines.append("")
            lines[-1] += " " + piece
        return self.linesep.join(lines) + self.linesep


MAIL_POLICY = _MailPolicy(linesep="\r\n", cte_type="7bit")
UTF8_MAIL_POLICY = MAIL_POLICY.clone(utf8=True)  # only for recipients that need SMTPUTF8


def build_message(settings: Settings, email: OutgoingEmail) -> EmailMessage:
    """The MIME message for `email`: multipart/alternative, text then HTML, UTF-8."""
    unsubscribe_mailto = email.unsubscribe_mailto or check_address(
        settings.unsubscribe_address, "UNSUBSCRIBE_MAILTO"
    )
    sent_at = email.date if email.date.tzinfo else email.date.replace(tzinfo=timezone.utc)

    msg = EmailMessage(policy=UTF8_MAIL_POLICY if needs_smtputf8(email.to) else MAIL_POLICY)
    msg["From"] = settings.mail_from
    msg["To"] = wire_address(email.to)
    if settings.mail_reply_to:
        msg["Reply-To"] = settings.mail_reply_to
    msg["Date"] = format_datetime(sent_at)
    msg["Subject"] = clean_subject(email.subject)
    msg["Message-ID"] = email.message_id
    msg["List-Id"] = settings.list_id
    # RFC 8058 one-click: mail providers POST "List-Unsubscribe=One-Click" to the https URL;
    # the mailto is the RFC 2369 fallback for clients that only send mail.
    msg["List-Unsubscribe"] = (
        f"<{email.unsubscribe_url}>, <mailto:{unsubscribe_mailto}?subject=unsubscribe>"
    )
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Precedence"] = "bulk"
    msg["X-Digest-Kind"] = email.kind
    msg.set_content(email.text, charset="utf-8")
    msg.add_alternative(email.html, subtype="html", charset="utf-8")
    # A boundary made from the content keeps the bytes of a message the same on every build.
    # "=_" never occurs in quoted-printable or base64 text, and 7-bit text does not contain
    # its own hash.
    msg.set_boundary(_boundary(email))
    for part in msg.iter_parts():
        del part["MIME-Version"]  # only the top level carries it
    return msg


def _boundary(email: OutgoingEmail) -> str:
    """A boundary that is the same on every build of a message and never occurs in its parts:
    "=_" cannot occur in quoted-printable or base64, and 7-bit parts are our own short text."""
    return "=_" + hashlib.sha1(email.message_id.encode("ascii", "replace")).hexdigest()[:32]


def message_bytes(settings: Settings, email: OutgoingEmail) -> bytes:
    """The message exactly as sent: CRLF line endings, bodies 7-bit (headers too, unless the
    recipient's address needs SMTPUTF8)."""
    if needs_smtputf8(email.to):
        msg = build_message(settings, email)  # rare: the email package handles SMTPUTF8
        return dkim_sign(settings, msg.as_bytes(policy=msg.policy))
    return dkim_sign(settings, fast_message_bytes(settings, email))


# --- Building the bytes directly: what build_message makes, at a fraction of the cost ---------

_CRLF = b"\r\n"


def fast_message_bytes(settings: Settings, email: OutgoingEmail) -> bytes:
    """multipart/alternative bytes built directly: headers folded per RFC 5322 (RFC 2047 for
    non-ASCII), both parts UTF-8 quoted-printable. The email package parses them to the same
    headers and parts as `build_message` (a test checks); it is ~10x faster, which matters at
    100,000 messages a day.
    """
    boundary = _boundary(email)
    sent_at = email.date if email.date.tzinfo else email.date.replace(tzinfo=timezone.utc)
    head = b"".join((
        _header("From", settings.mail_from),
        _header("To", wire_address(email.to)),
        _constant_headers(settings)[0],
        _header("Date", format_datetime(sent_at)),
        _subject_header(clean_subject(email.subject)),
        _verbatim_header("Message-ID", email.message_id),
        _constant_headers(settings)[1],
        _verbatim_header(
            "List-Unsubscribe",
            f"<{email.unsubscribe_url}>, "
            f"<mailto:{email.unsubscribe_mailto or _unsubscribe_mailto(settings)}"
            "?subject=unsubscribe>",
        ),
        _constant_headers(settings)[2],
        _header("X-Digest-Kind", email.kind),
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode("ascii"),
    ))
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), not to the part.
    marker = f"\r\n--{boundary}\r\n".encode("ascii")
    return b"".join((
        head, _CRLF,
        marker[2:], _text_part("plain", email.text),
        marker, _html_part(email.html),
        f"\r\n--{boundary}--\r\n".encode("ascii"),
    ))


_MAX_LINE = 998  # RFC 5322: no line of a message is longer, CRLF aside


def _html_part(html: str) -> bytes:
    """The HTML part as 7-bit lines, not quoted-printable, when that means the same page.

    Compiled MJML puts a whole body on one line, and quoting 30 KB of it (every "=" of every
    attribute becomes "=3D") was the costliest step of building a digest. Instead the
    characters beyond ASCII become character references, and a line too long breaks between
    two tags: `><` occurs in our HTML only there (text and attributes are escaped), where a
    line break is whitespace the page does not show (a test renders both in a browser).
    Lines are as long as allowed, not one per tag: a receiving server reads a message line
    by line (the bench's sink took 1.6x longer over one line per tag).
    <head> holds raw text (<style>), where references do not apply, so it must be ASCII;
    if it is not, or a line cannot be broken short enough, the part goes quoted-printable.
    """
    if "\r" in html:
        html = html.replace("\r\n", "\n").replace("\r", "\n")
    head_end = html.find("<body")
    if html[: head_end if head_end >= 0 else len(html)].isascii():
        lines: list[bytes] = []
        for line in html.encode("ascii", "xmlcharrefreplace").split(b"\n"):
            if len(line) <= _HTML_LINE:
                lines.append(line)
            elif not _break_between_tags(line, lines):
                return _text_part("html", html)
        if lines[-1]:
            lines.append(b"")  # the part ends with a line break
        return (b'Content-Type: text/html; charset="utf-8"\r\n'
                b"Content-Transfer-Encoding: 7bit\r\n\r\n" + b"\r\n".join(lines))
    return _text_part("html", html)


_HTML_LINE = _MAX_LINE - 8  # room for a dot-stuffing dot, and then some


def _break_between_tags(line: bytes, into: list[bytes]) -> bool:
    """Append `line` to `into` as pieces of at most _HTML_LINE, each broken at the last `><`
    that fits (C-speed rfind, a few times per line); False if some stretch has none."""
    start = 0
    while len(line) - start > _HTML_LINE:
        cut = line.rfind(b"><", start, start + _HTML_LINE)
        if cut <= start:
            return False
        into.append(line[start : cut + 1])  # ends with ">"; the next piece starts with "<"
        start = cut + 1
    into.append(line[start:])
    return True


def _text_part(subtype: str, body: str) -> bytes:
    data = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    content_type = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode("ascii")
    # As the email package does: short ASCII lines go as they are, anything else as QP.
    if data.isascii() and max(map(len, data.split(b"\n"))) <= 78:
        return content_type + b"Content-Transfer-Encoding: 7bit\r\n\r\n" + data.replace(
            b"\n", b"\r\n"
        )
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return (
        content_type
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + encoded.replace(b"\n", b"\r\n")
    )


@functools.lru_cache(maxsize=8)
def _constant_headers(settings: Settings) -> tuple[bytes, bytes, bytes]:
    """Headers that are the same for every message of a deployment, encoded once."""
    reply_to = _header("Reply-To", settings.mail_reply_to) if settings.mail_reply_to else b""
    return (
        reply_to,
        _header("List-Id", settings.list_id),
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nPrecedence: bulk\r\n",
    )


@functools.lru_cache(maxsize=8)
def _unsubscribe_mailto(settings: Settings) -> str:
    return check_address(settings.unsubscribe_address, "UNSUBSCRIBE_MAILTO")


def _header(name: str, value: str) -> bytes:
    """One header line, folded at spaces under 78 characters; RFC 2047 words if not ASCII."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{name} contains a line break")
    if not value.isascii() or "=?" in value:  # "=?" would read as an encoded word
        return _encoded_header(name, value)
    line = f"{name}: {value}"
    if len(line) <= 78:
        return line.encode("ascii") + _CRLF
    return _fold(line).encode("ascii") + _CRLF


def _fold(line: str, limit: int = 78) -> str:
    words = line.split(" ")
    lines = [" ".join(words[:2])]  # never fold between the name and the first word
    for word in words[2:]:
        if len(lines[-1]) + 1 + len(word) > limit and lines[-1].strip():
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return "\r\n".join(lines)


# RFC 2047 "Q" encoding: what may stand as itself in an encoded word of a header's text.
_Q_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = [chr(b) if b in _Q_PLAIN else "_" if b == 0x20 else f"={b:02X}" for b in range(256)]
_Q_WORD_TEXT = 75 - len("=?utf-8?q??=")  # an encoded word is at most 75 characters


def _subject_header(subject: str) -> bytes:
    """The Subject line. Every digest's subject differs, so a non-ASCII one (an ellipsis, a
    "β" in a topic) is encoded here directly rather than by the email package (~0.1 ms each):
    runs of words that need it become RFC 2047 Q-encoded words, the rest stays readable."""
    if subject.isascii() and "=?" not in subject:
        return _header("Subject", subject)
    words = subject.split(" ")
    if "" in words:  # clean_subject leaves single spaces; anything else, the slow way
        return _encoded_header("Subject", subject)
    out: list[str] = []
    for encode, group in groupby(words, key=lambda w: not w.isascii() or "=?" in w):
        run = list(group)
        out += _q_words(" ".join(run), first=not out) if encode else run
    return _fold(" ".join(["Subject:", *out])).encode("ascii") + _CRLF


def _q_words(text: str, first: bool = False) -> list[str]:
    """`text` as encoded words of at most 75 characters, never splitting a character; the
    `first` word of the header is shorter, as it shares its line with "Subject: ".

    A decoder joins adjacent encoded words and drops the folding space between them, so the
    spaces inside `text` travel encoded (as "_")."""
    words: list[str] = []
    chunk = ""
    room = _Q_WORD_TEXT - len("Subject: ") if first else _Q_WORD_TEXT
    for ch in text:
        encoded = "".join(_Q_BYTE[b] for b in ch.encode("utf-8"))
        if len(chunk) + len(encoded) > room:
            room = _Q_WORD_TEXT
            words.append(f"=?utf-8?q?{chunk}?=")
            chunk = ""
        chunk += encoded
    words.append(f"=?utf-8?q?{chunk}?=")
    return words


@functools.lru_cache(maxsize=4096)
def _encoded_header(name: str, value: str) -> bytes:
    """Non-ASCII headers (a subject with "β" or "—"): the email package's own RFC 2047
    folding, which is slow, so each distinct value is encoded once."""
    header = MAIL_POLICY.header_factory(name, value)
    return header.fold(policy=MAIL_POLICY).encode("ascii")


def _verbatim_header(name: str, value: str) -> bytes:
    return MAIL_POLICY.fold_binary(name, value) if len(value) > 70 else (
        f"{name}: {value}".encode("ascii") + _CRLF
    )


# --- The sender interface -----------------------------------------------------------------


class SendOutcome(str, Enum):
    SENT = "sent"
    TEMPORARY = "temporary"  # try again later; nothing says the address is bad
    PERMANENT = "permanent"  # the server refused this message or recipient for good


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    detail: str = ""  # the server's reply or the error, e.g. "550 5.1.1 No such user"
    # The server may have accepted the message but we never saw its answer (the connection
    # broke after the body went out), so sending again may deliver it twice.
    in_doubt: bool = False
    # For TEMPORARY only: False when trying again within seconds cannot help, because the
    # failure is about this session rather than this message (the server is unreachable, or
    # refuses our login or sender address); retrying wrappers then leave it to the next run.
    retry_now: bool = True

    @property
    def sent(self) -> bool:
        return self.outcome is SendOutcome.SENT


class Sender(Protocol):
    """A mail backend: send messages one by one, then close (or use as a context manager)."""

    def send(self, email: OutgoingEmail) -> SendResult: ...

    def close(self) -> None: ...

    def send_many(
        self, emails: Sequence[OutgoingEmail], journal: Journal | None = None
    ) -> list[SendResult]:
        """Send each; the results in the same order. With a `journal`, each message is
        written to it as it is handed over and again with the backend's answer."""
        return [journaled_send(self.send, email, journal) for email in emails]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def journaled_send(
    send: Callable[[OutgoingEmail], SendResult], email: OutgoingEmail, journal: Journal | None
) -> SendResult:
    """`send(email)`, written to the attempt's journal before and after (see journal.py)."""
    if journal is None:
        return send(email)
    journal.handing(email.message_id)
    result = send(email)
    journal.answered(email.message_id, mark_for(result.in_doubt, result.sent,
                                                result.outcome is SendOutcome.PERMANENT))
    return result


def open_sender(
    settings: Settings, stream: TextIO | None = None, *, outbox_index: bool = True
) -> Sender:
    """The backend MAIL_BACKEND names, wrapped as the settings ask.

    smtp: `SMTPSender` in a `RetryingSender` (if SMTP_RETRY_ATTEMPTS > 1); any backend: in a
    `RateLimitedSender` sharing SEND_RATE_PER_SECOND through Redis (if it is > 0). Closing the
    result closes the backend. With SMTP_CONNECTIONS > 1, smtp is that many of these in a
    `ParallelSender`. `stream` is where the console backend prints. Without
    `outbox_index`, the file backend leaves the index to whoever gathers `outbox_rows`.
    """
    if settings.mail_backend == "smtp" and settings.smtp_connections > 1:
        return ParallelSender(lambda: _one_sender(settings, stream, outbox_index),
                              settings.smtp_connections)
    return _one_sender(settings, stream, outbox_index)


# --- A worker's mail session, kept from one batch to the next -----------------------------

KEEP_IDLE_SECONDS = 20.0  # well inside servers' idle timeouts (RFC 5321 asks them for 5 min)


class _KeptSender(Sender):
    """A sender that notes whether every message got a definite answer (sent or refused)."""

    def __init__(self, inner: Sender, settings: Settings) -> None:
        self.inner = inner
        self.settings = settings
        self.clean = True
        self.pid = os.getpid()

    def send(self, email: OutgoingEmail) -> SendResult:
        return self._note([self.inner.send(email)])[0]

    def send_many(
        self, emails: Sequence[OutgoingEmail], journal: Journal | None = None
    ) -> list[SendResult]:
        return self._note(self.inner.send_many(emails, journal))

    def _note(self, results: list[SendResult]) -> list[SendResult]:
        if any(result.outcome is SendOutcome.TEMPORARY for result in results):
            self.clean = False
        return results

    def close(self) -> None:
        self.inner.close()


_kept: dict[str, tuple[_KeptSender, float]] = {}
_kept_lock = threading.Lock()


@contextlib.contextmanager
def batch_sender(settings: Settings) -> Iterator[Sender]:
    """The mail session of one batch in a long-lived worker process.

    SMTP connections outlive the batch: the worker's next batch, usually milliseconds later,
    sends over them instead of each of a day's thousand batches opening SMTP_CONNECTIONS
    connections and closing them again, round trips the workers and the server both paid
    for. A session is kept only after a batch in which every message got a definite answer
    (after a temporary failure or an unreachable server the next batch starts afresh), and
    only for KEEP_IDLE_SECONDS; a connection the server dropped anyway is reopened by
    `SMTPSender`. Other backends are opened and closed per batch, as `open_sender` does.
    """
    if settings.mail_backend != "smtp":
        with open_sender(settings) as plain:
            yield plain
        return
    sender = _take_kept(settings) or _KeptSender(open_sender(settings), settings)
    try:
        yield sender
    except BaseException:
        sender.close()
        raise
    _keep(sender)


def _take_kept(settings: Settings) -> _KeptSender | None:
    with _kept_lock:
        kept = _kept.pop("smtp", None)
    if kept is None:
        return None
    sender, since = kept
    if sender.settings == settings and time.monotonic() - since < KEEP_IDLE_SECONDS:
        return sender
    sender.close()
    return None


def _keep(sender: _KeptSender) -> None:
    if sender.clean and sender.pid == os.getpid():
        with _kept_lock:
            if "smtp" not in _kept:
                _kept["smtp"] = (sender, time.monotonic())
                return
    sender.close()


def close_kept_sender() -> None:
    """Close the kept session, if any (at exit; tests)."""
    with _kept_lock:
        kept = _kept.pop("smtp", None)
    if kept is not None and kept[0].pid == os.getpid():
        kept[0].close()


def _forget_kept_sender() -> None:
    # A forked child must not talk over its parent's connections, nor QUIT them.
    _kept.clear()


atexit.register(close_kept_sender)
os.register_at_fork(after_in_child=_forget_kept_sender)


def _one_sender(settings: Settings, stream: TextIO | None, outbox_index: bool) -> Sender:
    sender: Sender
    if settings.mail_backend == "smtp":
        sender = SMTPSender(settings)
        if settings.smtp_retry_attempts > 1:
            sender = RetryingSender(
                sender,
                attempts=settings.smtp_retry_attempts,
                base_delay=settings.smtp_retry_base_delay,
                max_delay=settings.smtp_retry_max_delay,
            )
    elif settings.mail_backend == "file":
        sender = FileSender(settings, write_index_on_close=outbox_index)
    elif settings.mail_backend == "console":
        sender = ConsoleSender(settings, stream)
    else:
        raise ValueError(
            f"MAIL_BACKEND={settings.mail_backend!r} is not one of file, smtp, console"
        )
    if settings.send_rate_per_second > 0:
        limiter = RedisRateLimiter(settings.redis_url, settings.send_rate_per_second)
        sender = RateLimitedSender(sender, limiter)
    return sender


class ParallelSender(Sender):
    """Several connections to the server, each with its own thread and sender (`make()`).

    Each message waits for the server's replies to MAIL, RCPT and DATA; over one
    connection the server and we take turns, and the server idles while we build the next
    message. `send_many` spreads the messages over the connections (results in order); a
    message's outcome, in doubt included, is its own connection's, as with one.
    """

    def __init__(self, make: Callable[[], Sender], connections: int) -> None:
        self._make = make
        self._local = threading.local()
        self._senders: list[Sender] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="smtp-connection")

    def send(self, email: OutgoingEmail) -> SendResult:
        return self._own().send(email)

    def send_many(
        self, emails: Sequence[OutgoingEmail], journal: Journal | None = None
    ) -> list[SendResult]:
        return list(self._pool.map(
            lambda email: journaled_send(self._own().send, email, journal), emails
        ))

    def _own(self) -> Sender:
        """This thread's sender, made on its first message."""
        sender: Sender | None = getattr(self._local, "sender", None)
        if sender is None:
            sender = self._local.sender = self._make()
            with self._lock:
                self._senders.append(sender)
        return sender

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            senders, self._senders = self._senders, []
        for sender in senders:
            sender.close()


# --- SMTP ---------------------------------------------------------------------------------


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """The system's CAs, loaded once per process: a worker opens a connection per batch, and
    loading the certificate store took longer than sending the batch's first message."""
    return ssl.create_default_context()


@functools.cache
def _local_hostname() -> str:
    # smtplib calls getfqdn() (a DNS lookup) for every connection unless told the name.
    return socket.getfqdn()


class _Unreachable(Exception):
    """Could not open a usable session; the message says what to check."""


class _Dropped(Exception):
    """The connection broke before the message body went out: safe to send again."""


class SMTPSender(Sender):
    """Send over one SMTP connection, opened on the first message and reused for the rest.

    A connection that broke while idle (the server's timeout, a "421" on MAIL) is reopened
    once and the message retried. If the server cannot be reached at all, this and every
    later message of this sender answer TEMPORARY at once, so an unreachable host costs one
    timeout per session rather than one per message.
    """

    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.connections_opened = 0
        self._ssl_context = ssl_context
        self._smtp: smtplib.SMTP | None = None
        self._unreachable: str | None = None
        self._envelope_from = check_address(parseaddr(settings.mail_from)[1], "MAIL_FROM")

    def send(self, email: OutgoingEmail) -> SendResult:
        data = message_bytes(self.settings, email)
        try:
            return self._attempt(email.to, data)
        except _Dropped as exc:
            log.info("SMTP connection lost (%s); reconnecting to retry %s", exc, email.to)
        try:
            return self._attempt(email.to, data)
        except _Dropped as exc:
            return SendResult(SendOutcome.TEMPORARY, f"connection lost twice: {exc}")

    def _attempt(self, to: str, data: bytes) -> SendResult:
        if self._unreachable is not None:
            return SendResult(SendOutcome.TEMPORARY, self._unreachable, retry_now=False)
        try:
            smtp = self._connection()
        except _Unreachable as exc:
            self._unreachable = str(exc)
            log.warning("%s", exc)
            metrics.count_smtp_unreachable()
            return SendResult(SendOutcome.TEMPORARY, str(exc), retry_now=False)
        try:
            return self._transaction(smtp, wire_address(to), data)
        except _Dropped:
            self._discard()
            raise

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._discard()

    @metrics.timed_smtp_transaction
    def _transaction(self, smtp: smtplib.SMTP, to: str, data: bytes) -> SendResult:
        """MAIL, RCPT, DATA by hand, so a failure can be told apart by stage."""
        options: list[str] = []
        if not to.isascii():
            if not smtp.has_extn("smtputf8"):
                # Retrying cannot help while the relay stays the same.
                return SendResult(
                    SendOutcome.PERMANENT,
                    f"the SMTP server does not offer SMTPUTF8, needed for {to}",
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        try:
            code, reply = smtp.mail(self._envelope_from, options)
            if code != 250:
                return self._refused(smtp, code, reply, f"sender {self._envelope_from} refused")
            code, reply = smtp.rcpt(to)
            if code not in (250, 251):
                return self._refused(smtp, code, reply)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Dropped(_describe(exc)) from exc
        try:
            code, reply = _data(smtp, data)
        except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
            return self._refused(smtp, exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Whether the server queued the message is unknown: do not send it again here.
            self._discard()
            return SendResult(
                SendOutcome.TEMPORARY, f"no reply to DATA: {_describe(exc)}", in_doubt=True
            )
        if code != 250:
            return self._refused(smtp, code, reply)
        return SendResult(SendOutcome.SENT, _reply_text(code, reply))

    def _refused(
        self, smtp: smtplib.SMTP, code: int, reply: bytes | str, context: str = ""
    ) -> SendResult:
        if code == 421:  # "closing the channel": typically the server's idle timeout
            raise _Dropped(_reply_text(code, reply))
        detail = _reply_text(code, reply)
        if context or code == 530:
            # A refused MAIL FROM or "530 authentication required" is about our configuration,
            # not the recipient: never PERMANENT, which would mark a good address as bad.
            log.error(
                "%s: %s; check MAIL_FROM, SMTP_USERNAME and the server's relay rules",
                context or "the SMTP server refused to relay",
                detail,
            )
            self._reset(smtp)
            return SendResult(
                SendOutcome.TEMPORARY,
                f"{context or 'not relayed'}: {detail}",
                retry_now=not 500 <= code <= 599,  # a 5xx stays until the settings change
            )
        self._reset(smtp)
        outcome = SendOutcome.PERMANENT if 500 <= code <= 599 else SendOutcome.TEMPORARY
        return SendResult(outcome, detail)

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a refusal so the connection is clean for the next message."""
        try:
            code, _ = smtp.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._discard()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = self._connect()
            self.connections_opened += 1
        return self._smtp

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        where = f"SMTP server {s.smtp_host}:{s.smtp_port} (SMTP_SECURITY={s.smtp_security})"
        context = self._ssl_context or _default_ssl_context()
        smtp: smtplib.SMTP | None = None
        try:
            if s.smtp_security == "tls":
                smtp = smtplib.SMTP_SSL(
                    s.smtp_host,
                    s.smtp_port,
                    local_hostname=_local_hostname(),
                    timeout=s.smtp_timeout,
                    context=context,
                )
            else:
                smtp = smtplib.SMTP(
                    s.smtp_host,
                    s.smtp_port,
                    local_hostname=_local_hostname(),
                    timeout=s.smtp_timeout,
                )
            smtp.ehlo()
            if s.smtp_security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            return smtp
        except smtplib.SMTPAuthenticationError as exc:
            problem = (
                f"{where} refused the login as {s.smtp_username!r}: {_describe(exc)}; "
                "check SMTP_USERNAME and SMTP_PASSWORD"
            )
        except smtplib.SMTPNotSupportedError as exc:
            problem = (
                f"{where} cannot do what the settings ask ({exc}); check SMTP_SECURITY "
                "(starttls needs the server to offer STARTTLS) and SMTP_USERNAME (login needs "
                "the server to offer AUTH, usually only after STARTTLS)"
            )
        except ssl.SSLError as exc:
            problem = (
                f"TLS with {where} failed: {exc}; check SMTP_SECURITY (port 465 is usually tls, "
                "587 starttls) and the server's certificate"
            )
        except (smtplib.SMTPException, OSError) as exc:
            problem = (
                f"cannot reach {where}: {_describe(exc)}; check SMTP_HOST, SMTP_PORT and that "
                "the server is running and reachable from here"
            )
        if smtp is not None:
            smtp.close()
        raise _Unreachable(problem)

    def _discard(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None


def _data(smtp: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """`smtp.data(message)` for bytes, with its dot-stuffing done by bytes.replace: smtplib's
    regular expression over the whole message cost a worker 4% of its time."""
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    stuffed = message.replace(b"\n.", b"\n..")  # what (?m)^\. -> .. does, as bytes
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    smtp.send(stuffed + b".\r\n")
    return smtp.getreply()


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())}".strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out ({exc or 'no answer'})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- File outbox --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    """One message in the file outbox, as the index shows it."""

    day: str
    date: datetime | None
    to: str
    subject: str
    kind: str
    message_id: str
    eml_href: str
    html_href: str | None


class FileSender(Sender):
    """Write each message into `outbox_dir/<day>/` as an `.eml` file.

    A file's name comes from the kind, recipient and Message-ID, so sending the same message
    again overwrites it. `close()` rewrites `outbox_dir/index.html` listing the newest
    messages in the outbox, earlier runs included, each with an `.html` copy of its HTML part
    to open in a browser. The copies are written then, for the messages the index can list:
    a 100,000-message day need not write 100,000 copies that no index links to.
    """

    def __init__(self, settings: Settings, write_index_on_close: bool = True) -> None:
        self.settings = settings
        self.write_index_on_close = write_index_on_close
        self.outbox_dir = Path(settings.outbox_dir).resolve()
        self.index_path = self.outbox_dir / "index.html"
        self.known: dict[str, list[object]] = {}  # index rows of the messages written here
        self._folders: dict[str, Path] = {}
        # The HTML of the newest messages written here: their copies are written on close.
        self._recent: OrderedDict[str, str] = OrderedDict()

    def send(self, email: OutgoingEmail) -> SendResult:
        eml_path = self.path_for(email)
        data = message_bytes(self.settings, email)
        stat = _write_atomically(eml_path, data)
        name = str(eml_path)
        self._recent[name] = email.html
        self._recent.move_to_end(name)
        if len(self._recent) > INDEX_ROWS:
            self._recent.popitem(last=False)
        # What the index shows of it, so that writing the index needs not read it back.
        sent_at = email.date if email.date.tzinfo else email.date.replace(tzinfo=timezone.utc)
        self.known[f"{eml_path.parent.name}/{eml_path.name}"] = [
            stat.st_size, stat.st_mtime_ns, sent_at.replace(microsecond=0).isoformat(),
            wire_address(email.to), clean_subject(email.subject), email.kind, email.message_id,
        ]
        return SendResult(SendOutcome.SENT, name)

    def path_for(self, email: OutgoingEmail) -> Path:
        """Where `email`'s .eml goes; always inside the outbox whatever the address holds."""
        recipient = re.sub(r"[^A-Za-z0-9@+_.-]+", "_", email.to).strip("._-")[:64] or "recipient"
        digest = hashlib.sha256(email.message_id.encode()).hexdigest()[:12]
        folder = self._day_folder(email.date.date().isoformat())
        return folder / f"{email.kind}--{recipient}--{digest}.eml"

    def _day_folder(self, day: str) -> Path:
        """outbox/<day>/, checked once per day to lie inside the outbox (a symlink might not).

        The file name itself cannot leave it: the recipient part keeps only [A-Za-z0-9@+_.-]
        (no slash), and the kind and hash are our own."""
        folder = self._folders.get(day)
        if folder is None:
            folder = self.outbox_dir / day
            if not folder.resolve().is_relative_to(self.outbox_dir):
                raise ValueError(f"refusing to write into {folder}: outside the outbox")
            folder.mkdir(parents=True, exist_ok=True)
            self._folders[day] = folder
        return folder

    def close(self) -> None:
        """Write the .html copies of the newest messages (the index may list them), then,
        unless another process gathers the rows, the index."""
        for eml_name, html in self._recent.items():
            _write_atomically(Path(eml_name).with_suffix(".html"), html.encode("utf-8"))
        self._recent.clear()
        if self.write_index_on_close:
            self.write_index()

    def write_index(self) -> Path:
        entries, count = outbox_entries(self.outbox_dir, self.known, INDEX_ROWS)
        shown = [_with_html_copy(self.outbox_dir, entry) for entry in entries]
        days: dict[str, list[OutboxEntry]] = {}
        for entry in shown:
            days.setdefault(entry.day, []).append(entry)
        html = (
            _templates()
            .get_template("outbox/index.html")
            .render(days=days, count=count, shown=len(shown),
                    outbox_dir=str(self.outbox_dir))
        )
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.index_path, html.encode("utf-8"))
        return self.index_path


def outbox_rows(sender: Sender) -> dict[str, list[object]]:
    """The index rows of what a file backend (however wrapped) wrote; {} for the others."""
    while isinstance(sender, RateLimitedSender):
        sender = sender.inner
    return sender.known if isinstance(sender, FileSender) else {}


def write_outbox_index(settings: Settings, rows: dict[str, list[object]]) -> Path:
    """Rewrite the outbox index once for messages several processes wrote (their rows)."""
    sender = FileSender(settings)
    sender.known.update(rows)
    return sender.write_index()


INDEX_ROWS = 1000  # the index lists the newest messages; the day folders hold them all
INDEX_CACHE = ".index-cache.json"


def outbox_entries(
    outbox_dir: Path, known: dict[str, list[object]] | None = None, limit: int = INDEX_ROWS
) -> tuple[list[OutboxEntry], int]:
    """The newest `limit` .eml files under `outbox_dir/<day>/`, newest first, and how many
    there are; read from their headers only.

    The headers of each file are kept in `INDEX_CACHE` under its size and modification time,
    so a run that adds 100,000 messages does not re-read the ones already there; a file that
    changed or appeared from elsewhere is read again. The `known` rows, of files this run
    wrote, are taken as they are.
    """
    if not outbox_dir.is_dir():
        return [], 0
    cache_path = outbox_dir / INDEX_CACHE
    stored = _load_index_cache(cache_path)
    known = known or {}
    fresh: dict[str, list[object]] = {}
    parser = BytesHeaderParser(policy=default_policy)
    found: list[tuple[str, float, str, list[object], bool]] = []
    for day_dir in outbox_dir.iterdir():
        if not (day_dir.is_dir() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", day_dir.name)):
            continue
        names = set(os.listdir(day_dir))
        for name in names:
            if not name.endswith(".eml"):
                continue
            key = f"{day_dir.name}/{name}"
            row = known.get(key)
            if row is None:
                eml = day_dir / name
                stat = eml.stat()
                row = stored.get(key)
                if row is None or row[:2] != [stat.st_size, stat.st_mtime_ns]:
                    row = [stat.st_size, stat.st_mtime_ns, *_header_fields(parser, eml)]
            fresh[key] = row
            sent_at = datetime.fromisoformat(str(row[2])).timestamp() if row[2] else 0.0
            has_html = name[: -len(".eml")] + ".html" in names
            found.append((day_dir.name, sent_at, name, row, has_html))
    if fresh != stored:
        _write_atomically(cache_path, json.dumps(fresh).encode("utf-8"))
    newest = heapq.nlargest(limit, found, key=lambda f: (f[0], f[1], f[2]))
    entries = [
        _entry(day, name, row, name[: -len(".eml")] + ".html" if has_html else None)
        for day, _, name, row, has_html in newest
    ]
    return entries, len(found)


def _with_html_copy(outbox_dir: Path, entry: OutboxEntry) -> OutboxEntry:
    """The entry, its .html copy written (or rewritten, if the .eml is newer) from the .eml:
    for messages written elsewhere, or by a sender that did not close."""
    eml = outbox_dir / unquote(entry.eml_href)
    html = eml.with_suffix(".html")
    with contextlib.suppress(OSError):
        if entry.html_href and html.stat().st_mtime_ns >= eml.stat().st_mtime_ns:
            return entry
    try:
        message = BytesParser(policy=default_policy).parsebytes(eml.read_bytes())
        part = message.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
        if part is None:
            return replace(entry, html_href=None)
        _write_atomically(html, part.get_content().encode("utf-8"))
    except (OSError, LookupError, ValueError):  # unreadable: the .eml link still works
        return replace(entry, html_href=None)
    return replace(entry, html_href=entry.eml_href[: -len(".eml")] + ".html")


def _load_index_cache(path: Path) -> dict[str, list[object]]:
    try:
        cache = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _header_fields(parser: BytesHeaderParser[Any], eml: Path) -> list[object]:
    """[date ISO or None, to, subject, kind, message id] from a message file's headers."""
    headers = parser.parsebytes(_read_head(eml))
    sent_at = getattr(headers["Date"], "datetime", None) if headers["Date"] else None
    return [
        sent_at.isoformat() if sent_at else None,
        str(headers["To"] or ""), str(headers["Subject"] or ""),
        str(headers["X-Digest-Kind"] or ""), str(headers["Message-ID"] or ""),
    ]


def _entry(day: str, name: str, row: list[object], html_name: str | None) -> OutboxEntry:
    _, _, sent_at, to, subject, kind, message_id = row
    return OutboxEntry(
        day=day,
        date=datetime.fromisoformat(str(sent_at)) if sent_at else None,
        to=str(to), subject=str(subject), kind=str(kind), message_id=str(message_id),
        eml_href=f"{day}/{quote(name, safe='@+')}",
        html_href=f"{day}/{quote(html_name, safe='@+')}" if html_name else None,
    )


def _read_head(path: Path) -> bytes:
    """The header block of a message file, without reading a large body."""
    with path.open("rb") as f:
        head = f.read(16384)
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            more = f.read(16384)
            if not more:
                break
            head += more
    return head


def _write_atomically(path: Path, data: bytes) -> os.stat_result:
    # A reader (a browser on index.html, a mail client on an .eml) never sees half a file.
    # The temporary name is the file's own plus this process and thread: unique among
    # writers without mkstemp's random names and chmod (a file per message at 100k a day).
    target = str(path)
    folder, _, name = target.rpartition("/")
    tmp = f"{folder}/.tmp-{os.getpid()}-{threading.get_ident()}-{name}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            stat = os.fstat(fd)  # the outbox index keeps size and mtime: no lookup by name
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return stat


@functools.cache
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True)


# --- Console ------------------------------------------------------------------------------


class ConsoleSender(Sender):
    """Print a short summary of each message: for trying the service without mail."""

    preview_lines = 6

    def __init__(self, settings: Settings, stream: TextIO | None = None) -> None:
        self.settings = settings
        self._stream = stream

    def send(self, email: OutgoingEmail) -> SendResult:
        out = self._stream or sys.stdout
        lines = [line for line in email.text.splitlines() if line.strip()]
        print(f"--- {email.kind} to {email.to} ---", file=out)
        print(f"Subject: {clean_subject(email.subject)}", file=out)
        print(f"Message-ID: {email.message_id}", file=out)
        for line in lines[: self.preview_lines]:
            print(f"  {line}", file=out)
        if len(lines) > self.preview_lines:
            print(f"  ... ({len(lines) - self.preview_lines} more lines)", file=out)
        out.flush()
        return SendResult(SendOutcome.SENT, "printed")

    def close(self) -> None:
        """Nothing to release."""


# --- Retries and the shared send rate -----------------------------------------------------


class RetryingSender(Sender):
    """Retry a temporary failure of `inner` with exponential backoff and full jitter.

    Only a TEMPORARY result that is neither in doubt nor marked `retry_now=False` is tried
    again, up to `attempts` tries in all; the n-th wait is random() * min(max_delay,
    base_delay * 2**n). SENT and PERMANENT come back at once, and so does an in-doubt result:
    the server may have queued that message, and a second copy is worse than a late one.
    The detail of the result says how many attempts were made.
    """

    def __init__(
        self,
        inner: Sender,
        attempts: int,
        base_delay: float,
        max_delay: float,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"SMTP_RETRY_ATTEMPTS={attempts} must be at least 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("SMTP_RETRY_BASE_DELAY and SMTP_RETRY_MAX_DELAY must not be negative")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._random = random

    def send(self, email: OutgoingEmail) -> SendResult:
        attempt = 0
        while True:
            result = self.inner.send(email)
            attempt += 1
            if not self._worth_retrying(result) or attempt >= self.attempts:
                break
            # Full jitter: workers that failed together do not come back together.
            delay = self._random() * min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            log.info(
                "temporary failure sending to %s (%s); attempt %d of %d, next in %.2fs",
                email.to,
                result.detail,
                attempt,
                self.attempts,
                delay,
            )
            self._sleep(delay)
        tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
        return replace(result, detail=f"{result.detail} ({tries})".lstrip())

    @staticmethod
    def _worth_retrying(result: SendResult) -> bool:
        return result.outcome is SendOutcome.TEMPORARY and not result.in_doubt and result.retry_now

    def close(self) -> None:
        self.inner.close()


class RateLimiter(Protocol):
    """Blocks in `acquire()` until one more send is allowed."""

    def acquire(self) -> None: ...

    def close(self) -> None: ...


class LocalRateLimiter(RateLimiter):
    """`rate_per_second` sends (after a first burst of `burst`) for the threads of this process.

    GCRA: a "theoretical arrival time" advances by one interval per send; a send may go when
    the clock is no more than burst - 1 intervals before it. Each caller reserves its slot
    under the lock and waits outside it, so waiting threads are served in order.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval, self.tolerance = _gcra_parameters(rate_per_second, burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = 0.0

    def reserve(self) -> float:
        """Take the next slot; return how many seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            self._tat = tat + self.interval
            return max(0.0, tat - self.tolerance - now)

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)

    def close(self) -> None:
        """Nothing to release."""


def _gcra_parameters(rate_per_second: float, burst: int | None) -> tuple[float, float]:
    """(seconds between sends, how many seconds early a send may go) for a rate and burst."""
    if not rate_per_second > 0:
        raise ValueError(f"a send rate must be above 0 per second, not {rate_per_second}")
    burst = 1 if burst is None else burst
    if burst < 1:
        raise ValueError(f"a burst must be at least 1 send, not {burst}")
    interval = 1.0 / rate_per_second
    return interval, (burst - 1) * interval


# GCRA as in LocalRateLimiter, atomic in Redis and on the Redis server's clock (TIME), so the
# clocks of the workers do not matter. Times are microseconds; they are written with %.0f
# because Lua's tostring keeps only 14 digits.
_GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local next_tat = tat + interval
local ttl_ms = math.ceil((next_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', string.format('%.0f', ttl_ms))
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
return math.floor(wait)
"""


class RedisRateLimiter(RateLimiter):
    """One send rate for every worker on every machine, kept in Redis under `key`.

    Celery's own rate_limit counts per worker, so it cannot hold a provider account to its
    messages per second. Each `acquire()` reserves the next slot with one atomic script call
    and sleeps until it comes. If Redis cannot be reached, sends are neither stopped nor let
    loose: this process limits itself locally at the same rate (so N workers may reach N times
    the rate meanwhile), logs a warning, and asks Redis again every `recheck_seconds`.
    """

    def __init__(
        self,
        redis_url: str,
        rate_per_second: float,
        key: str = "paper-digest:send-rate",
        burst: int | None = None,
        recheck_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        interval, tolerance = _gcra_parameters(rate_per_second, burst)
        self.key = key
        self.rate_per_second = rate_per_second
        self.recheck_seconds = recheck_seconds
        self._args = [f"{interval * 1e6:.3f}", f"{tolerance * 1e6:.3f}"]
        self._sleep = sleep
        self._local = LocalRateLimiter(rate_per_second, burst, sleep=sleep)
        # One quick retry lets a pooled connection that a Redis restart broke reconnect; the
        # library's default backoff would stall every send for seconds while Redis is down.
        self._redis = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=2.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
        )
        # A registered script is called by its hash and loaded again on NOSCRIPT (a restarted
        # or flushed Redis), so the script text crosses the network only when needed.
        self._script = self._redis.register_script(_GCRA_SCRIPT)
        kwargs = self._redis.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self.where = f"Redis at {where} db {kwargs.get('db', 0)}"  # no password in logs
        self._lock = threading.Lock()
        self._local_until: float | None = None  # monotonic time to ask Redis again

    @property
    def using_redis(self) -> bool:
        """False while Redis was unreachable and this process limits itself."""
        return self._local_until is None

    def acquire(self) -> None:
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)

    def _reserve(self) -> float:
        with self._lock:
            local_until = self._local_until
        if local_until is not None and time.monotonic() < local_until:
            return self._local.reserve()
        try:
            wait_us = self._script(keys=[self.key], args=self._args)
        except redis.RedisError as exc:
            self._fall_back(exc)
            return self._local.reserve()
        if local_until is not None:
            with self._lock:
                self._local_until = None
            log.info("%s answers again: the send rate is shared again", self.where)
        return int(wait_us) / 1e6

    def _fall_back(self, exc: redis.RedisError) -> None:
        with self._lock:
            first = self._local_until is None
            self._local_until = time.monotonic() + self.recheck_seconds
        if first:
            log.warning(
                "cannot use %s for the shared send rate (%s: %s); limiting this process to "
                "%g sends per second until it answers",
                self.where,
                type(exc).__name__,
                exc,
                self.rate_per_second,
            )

    def close(self) -> None:
        self._redis.close()


class RateLimitedSender(Sender):
    """Wait for `limiter` before each message to `inner`; closing closes both."""

    def __init__(self, inner: Sender, limiter: RateLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    def send(self, email: OutgoingEmail) -> SendResult:
        self.limiter.acquire()
        return self.inner.send(email)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.limiter.close()


# --- DKIM -----------------------------------------------------------------------------------

# Big mailbox providers honour one-click unsubscribe only when these are covered by a
# passing DKIM signature aligned with From. Each one is listed twice ("oversigned") so a relay
# or an attacker cannot add a second copy of it without breaking the signature.
DKIM_SIGNED_HEADERS = (
    "From", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
)
DKIM_ALSO_SIGNED = ("To", "Reply-To", "List-Id", "MIME-Version", "Content-Type")


@functools.cache
def _dkim_private_key(path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read DKIM_PRIVATE_KEY_PATH={path!r}: {exc}. Make a key with "
            "`openssl genrsa -out dkim.pem 2048` and `digest dns-check` prints its DNS record."
        ) from exc


def dkim_sign(settings: Settings, data: bytes) -> bytes:
    """`data` with a DKIM-Signature header in front, when DKIM_PRIVATE_KEY_PATH is set.

    rsa-sha256, relaxed/relaxed canonicalisation (relays may refold headers), d= the
    DKIM_DOMAIN (by default MAIL_FROM's domain, so DMARC aligns), s= DKIM_SELECTOR.
    """
    if not settings.dkim_private_key_path:
        return data
    import dkim

    headers = [*DKIM_SIGNED_HEADERS, *DKIM_SIGNED_HEADERS, *DKIM_ALSO_SIGNED]
    signature = dkim.sign(
        data,
        settings.dkim_selector.encode("ascii"),
        settings.dkim_signing_domain.encode("ascii"),
        _dkim_private_key(settings.dkim_private_key_path),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.encode("ascii") for h in headers],
        linesep=b"\r\n",
    )
    return bytes(signature) + data
