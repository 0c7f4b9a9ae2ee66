"""One outgoing email: its data, the checks that keep it from injecting headers, its
Message-ID, and the message the email package builds from it (the reference format; the
fast byte builder in mime.py makes the same message)."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import idna
from sqlalchemy import LargeBinary, func, literal
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

from ..settings import Settings

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
    # `text`'s quoted-printable body as `mime.quoted_printable` gives it, made by the day
    # renderer from pieces it encoded once a day; None: `mime` encodes `text`.
    text_quoted: bytes | None = field(default=None, compare=False, repr=False)

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
    # Every email carries an unsubscribe link that differs from the last one only in its last
    # segment (a token): once a URL passed, another with the same head passes too.
    head, _, last = url.rpartition("/")
    if head in _CHECKED_HEADS and last:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"refusing {what} {url!r}: it must be an absolute https:// URL")
    if last and len(_CHECKED_HEADS) < 10_000:
        _CHECKED_HEADS.add(head)
    return url


# Heads (all but the last "/" segment) of URLs that passed `check_url`: a last segment after
# one, which the check above found free of whitespace and control characters, cannot change
# the URL's scheme or empty its host.
_CHECKED_HEADS: set[str] = set()


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
    tag = _keyed(settings.signing_key()).copy()  # the key prepared once, as tokens.py does
    tag.update(local.encode())
    return f"<{local}.{tag.hexdigest()[:16]}@{settings.mail_domain}>"


@lru_cache(maxsize=8)
def _keyed(key: str) -> hmac.HMAC:
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def message_id_sql(
    settings: Settings, kind: str, subscriber_id: ColumnElement[int] | QueryableAttribute[int],
    day: ColumnElement[str],
) -> ColumnElement[str]:
    """`message_id_for` as a PostgreSQL expression over a subscriber id and an ISO date text,
    so rows can be planned inside the database: HMAC-SHA256 spelled out with its built-in
    sha256(), H((K ^ opad) || H((K ^ ipad) || message)), the same bytes as `hmac.new`."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"refusing email kind {kind!r}: use lower-case letters, digits, - and _")
    key = settings.signing_key().encode()
    block = hashlib.sha256().block_size
    key = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    inner = bytes(b ^ 0x36 for b in key)
    outer = bytes(b ^ 0x5C for b in key)
    local = func.concat(f"{kind}.", day, ".", subscriber_id)
    digest = func.sha256(
        literal(outer, LargeBinary).op("||")(
            func.sha256(literal(inner, LargeBinary).op("||")(func.convert_to(local, "UTF8")))
        )
    )
    tag = func.substr(func.encode(digest, "hex"), 1, 16)
    return func.concat("<", local, ".", tag, f"@{settings.mail_domain}>")


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
    msg.set_boundary(mime_boundary(email))
    for part in msg.iter_parts():
        del part["MIME-Version"]  # only the top level carries it
    return msg


def mime_boundary(email: OutgoingEmail) -> str:
    """A boundary that is the same on every build of a message and never occurs in its parts:
    "=_" cannot occur in quoted-printable or base64, and 7-bit parts are our own short text."""
    return "=_" + hashlib.sha1(email.message_id.encode("ascii", "replace")).hexdigest()[:32]

