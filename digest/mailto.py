"""Unsubscribe by email: the per-subscriber mailto: of List-Unsubscribe, and what answers it.

Every email's List-Unsubscribe carries `mailto:<local>+<id>-<tag>@<domain>` (local and
domain from UNSUBSCRIBE_MAILTO). The tag is an HMAC of the subscriber's id and random
`link_key`, so the address works like the signed unsubscribe link: it stops exactly the
person it was made for, for good, and a row that replaced a deleted one (a new link_key)
is not stopped by the old address. Who sent the message does not matter: From is trivially
forged, so only the signed recipient address counts.

`unsubscribe_by_mail` answers one message, read from an MTA pipe (`digest unsubscribe-mail`);
`poll_mailbox` answers the unseen messages of an IMAP mailbox.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import imaplib
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from enum import Enum
from functools import lru_cache, partial
from typing import Any, BinaryIO, TypeVar

from . import db
from .lifecycle import unsubscribe
from .models import Subscriber, SubscriberStatus
from .settings import Settings
from .tokens import LinkOwner

SOURCE = "mailto"  # the history's source of an unsubscribe by email
MAX_MESSAGE_BYTES = 1_000_000  # an unsubscribe request is a few KB; more is not one
_MAX_DRAINED_BYTES = 100_000_000  # read and dropped past the limit, so the MTA's write succeeds
_MAX_LOCAL_PART = 64  # RFC 5321, 4.5.3.1.1
_MAX_ID_DIGITS = 10  # subscriber ids are 32-bit integers
_TAG_BYTES = 10  # 80 bits: 16 base32 characters
_SALT = b"paper-digest:mailto-unsubscribe"
# Where an MTA or mailbox names the address a message was delivered to: the envelope recipient
# first (Postfix's local delivery adds Delivered-To and X-Original-To), then what the sender wrote.
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "To")
_MAX_CANDIDATES = 100
_EXTENSION = re.compile(rf"([0-9]{{1,{_MAX_ID_DIGITS}}})-([a-z2-7]{{{_TAG_BYTES * 8 // 5}}})")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")

# What "+<id>-<tag>" leaves of a local part to UNSUBSCRIBE_MAILTO's (settings refuses more).
MAX_BASE_LOCAL_PART = _MAX_LOCAL_PART - len("+") - _MAX_ID_DIGITS - len("-") - _TAG_BYTES * 8 // 5


# --- The address --------------------------------------------------------------------------


def mailto_address(settings: Settings, owner: LinkOwner) -> str:
    """The unsubscribe address of one subscriber: `<local>+<id>-<tag>@<domain>`.

    Made for every email sent, so the HMAC state is prepared once per key (as tokens.py does)
    and only the id and key are hashed here.
    """
    local, domain = _base_address(settings.unsubscribe_address)
    return f"{local}+{owner.id}-{_tag(settings.signing_key(), owner.id, owner.link_key)}@{domain}"


def _tag(secret: str, owner_id: int, link_key: str) -> str:
    mac = _mac_for(secret).copy()
    mac.update(f"mailto-unsubscribe:{owner_id}:{link_key}".encode())
    # Lower-case base32: mail systems may fold the case of a local part.
    return base64.b32encode(mac.digest()[:_TAG_BYTES]).decode("ascii").lower()


@lru_cache(maxsize=8)
def _mac_for(secret: str) -> hmac.HMAC:
    # A key of its own, derived from SECRET_KEY: a tag is no signature of any link, nor one of
    # these of a link.
    key = hmac.new(secret.encode(), _SALT, hashlib.sha256).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


@lru_cache(maxsize=8)
def _base_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise ValueError(f"UNSUBSCRIBE_MAILTO={address!r} is not an address like unsubscribe@"
                         "example.org")
    return local, domain


# --- Reading a message --------------------------------------------------------------------


class MailOutcome(str, Enum):
    UNSUBSCRIBED = "unsubscribed"
    ALREADY_UNSUBSCRIBED = "already unsubscribed"  # a repeated request: nothing to change
    REFUSED = "refused"  # not a signed address of ours, or not a readable message


@dataclass(frozen=True)
class MailResult:
    """What one message did, in a line fit for the MTA's log."""

    outcome: MailOutcome
    detail: str
    subscriber_id: int | None = None

    @property
    def refused(self) -> bool:
        return self.outcome is MailOutcome.REFUSED

    def line(self) -> str:
        return f"{self.outcome.value}: {self.detail}"


class MessageTooLarge(ValueError):
    """More than MAX_MESSAGE_BYTES came in."""


def read_message(stream: BinaryIO, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """Up to `limit` bytes of a message; MessageTooLarge if there are more.

    The rest is read and dropped: an MTA writing to a pipe that closes early sees a failed
    delivery, and would try again or bounce.
    """
    data = stream.read(limit + 1)
    if len(data) <= limit:
        return data
    drained = len(data)
    while drained < _MAX_DRAINED_BYTES and (chunk := stream.read(65536)):
        drained += len(chunk)
    raise MessageTooLarge(f"the message is larger than {limit:,} bytes; an unsubscribe "
                          "request is a few KB")


@dataclass(frozen=True)
class _Tag:
    subscriber_id: int
    signature: str


def unsubscribe_by_mail(
    settings: Settings, message: bytes, recipient: str | None = None,
    now: datetime | None = None,
) -> MailResult:
    """Unsubscribe the subscriber whose signed address `message` was sent to.

    `recipient` is the envelope recipient the MTA gives; without it, the Delivered-To,
    X-Original-To and To headers are searched, in that order, for the first address with a
    tag. Safe to repeat. Raises only for a database or configuration failure (the MTA should
    keep the message and try again).
    """
    if len(message) > MAX_MESSAGE_BYTES:
        return _refused(f"the message is larger than {MAX_MESSAGE_BYTES:,} bytes")
    candidates = [recipient] if recipient else _header_recipients(message)
    if not candidates:
        return _refused("no recipient address: pass --recipient, or deliver with a "
                        "Delivered-To or To header")
    local, domain = _base_address(settings.unsubscribe_address)
    ours = [(a, _read_tag(ext)) for a in candidates if (ext := _extension(a, local)) is not None]
    if not ours:
        return _refused(f"{_shown(candidates[0])} is not a signed unsubscribe address "
                        f"({local}+<id>-<tag>@{domain})")
    address, tag = next(((a, t) for a, t in ours if t is not None), ours[0])
    if tag is None:
        return _refused(f"{_shown(address)} has no valid unsubscribe tag")
    with db.session_scope(settings) as session:
        subscriber = session.get(Subscriber, tag.subscriber_id)
        if subscriber is None or not _tag_matches(settings, subscriber, tag.signature):
            return _refused(f"{_shown(address)} has no valid unsubscribe tag")
        was_receiving = subscriber.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)
        unsubscribe(session, subscriber.id, source=SOURCE,
                    detail="a message to their List-Unsubscribe address", now=now)
        outcome = MailOutcome.UNSUBSCRIBED if was_receiving else MailOutcome.ALREADY_UNSUBSCRIBED
        return MailResult(outcome, f"{subscriber.email} (subscriber {subscriber.id})",
                          subscriber.id)


def _refused(reason: str) -> MailResult:
    return MailResult(MailOutcome.REFUSED, reason)


def _header_recipients(message: bytes) -> list[str]:
    """The addresses of the recipient headers, in RECIPIENT_HEADERS order, as written."""
    # compat32 keeps each header as its raw text: a malformed one cannot raise on reading.
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(message)
    found: list[str] = []
    for name in RECIPIENT_HEADERS:
        values = [str(v) for v in headers.get_all(name) or ()]
        found += [address for _, address in getaddresses(values) if address]
    return found[:_MAX_CANDIDATES]


def _extension(address: str, base_local: str) -> str | None:
    """What follows `<base_local>+` in the address's local part (lower-cased), or None."""
    local = address.strip().strip("<>").rpartition("@")[0].lower()
    prefix = base_local.lower() + "+"
    return local[len(prefix):] if local.startswith(prefix) else None


def _read_tag(extension: str) -> _Tag | None:
    match = _EXTENSION.fullmatch(extension)
    return _Tag(int(match[1]), match[2]) if match else None


def _tag_matches(settings: Settings, subscriber: Subscriber, signature: str) -> bool:
    expected = _tag(settings.signing_key(), subscriber.id, subscriber.link_key)
    return hmac.compare_digest(expected.encode(), signature.encode())


def _shown(address: str) -> str:
    """An address from a stranger's message, safe on one line of a log."""
    return repr(_UNPRINTABLE.sub("?", address)[:120])


# --- A mailbox over IMAP ------------------------------------------------------------------

IMAP_TIMEOUT = 60.0  # seconds for each answer of the IMAP server
MAX_MESSAGES_PER_POLL = 500  # a flood of mail waits for the next run, not this one
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
T = TypeVar("T")


class MailboxError(RuntimeError):
    """The IMAP mailbox cannot be read; the message says what to check."""


@dataclass(frozen=True)
class MailboxReport:
    results: list[MailResult]
    left: int  # unseen messages left for the next run

    def summary(self) -> str:
        counts = {o: sum(r.outcome is o for r in self.results) for o in MailOutcome}
        done = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n) or "nothing unseen"
        left = f"; {self.left} left for the next run" if self.left else ""
        return f"{len(self.results)} message(s): {done}{left}."


def poll_mailbox(
    settings: Settings, ssl_context: ssl.SSLContext | None = None, now: datetime | None = None
) -> MailboxReport:
    """Answer each unseen message of the IMAP_* mailbox as `unsubscribe_by_mail` does, then
    mark it seen. A message is marked only once answered: if the database fails, it stays
    unseen for the next run (and the error goes up)."""
    if not settings.imap_host:
        raise MailboxError("IMAP_HOST is not set: name the mailbox that mail to "
                           f"{settings.unsubscribe_address} reaches (see .env.example).")
    imap = _call_imap(settings, lambda: _open_mailbox(settings, ssl_context))
    try:
        uids = _call_imap(settings, lambda: _unseen(imap))
        results = []
        for uid in uids[:MAX_MESSAGES_PER_POLL]:
            results.append(_answer(settings, imap, uid, now))
            _call_imap(settings, partial(_mark_seen, imap, uid))
        return MailboxReport(results, max(0, len(uids) - MAX_MESSAGES_PER_POLL))
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


def _answer(
    settings: Settings, imap: imaplib.IMAP4, uid: str, now: datetime | None
) -> MailResult:
    size_answer = _call_imap(settings, lambda: _ok(imap.uid("FETCH", uid, "(RFC822.SIZE)")))
    size = _SIZE.search(b" ".join(x for x in size_answer if isinstance(x, bytes)))
    if size is None:
        return _refused("the IMAP server gave no size for the message")
    if int(size[1]) > MAX_MESSAGE_BYTES:
        return _refused(f"the message is larger than {MAX_MESSAGE_BYTES:,} bytes")
    body = _call_imap(settings, lambda: _ok(imap.uid("FETCH", uid, "(BODY.PEEK[])")))
    message = next((part[1] for part in body if isinstance(part, tuple)), b"")
    return unsubscribe_by_mail(settings, message, now=now)


def _open_mailbox(settings: Settings, ssl_context: ssl.SSLContext | None) -> imaplib.IMAP4:
    context = ssl_context or ssl.create_default_context()
    host, port = settings.imap_host, settings.imap_port
    imap: imaplib.IMAP4
    if settings.imap_security == "tls":
        imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=IMAP_TIMEOUT)
    else:
        imap = imaplib.IMAP4(host, port, timeout=IMAP_TIMEOUT)
        if settings.imap_security == "starttls":
            imap.starttls(context)
    try:
        _ok(imap.login(settings.imap_username, settings.imap_password))
        mailbox = settings.imap_mailbox.replace("\\", "\\\\").replace('"', '\\"')
        _ok(imap.select(f'"{mailbox}"'))
    except BaseException:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()
        raise
    return imap


def _unseen(imap: imaplib.IMAP4) -> list[str]:
    found = _ok(imap.uid("SEARCH", "UNSEEN"))
    return b" ".join(x for x in found if isinstance(x, bytes)).decode("ascii").split()


def _mark_seen(imap: imaplib.IMAP4, uid: str) -> None:
    _ok(imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)"))


def _ok(answer: tuple[str, Sequence[Any]]) -> list[Any]:
    kind, data = answer
    if kind != "OK":
        raise imaplib.IMAP4.error(f"{kind} {data!r}"[:200])
    return list(data)


def _call_imap(settings: Settings, step: Callable[[], T]) -> T:
    try:
        return step()
    except (imaplib.IMAP4.error, OSError) as exc:  # ssl.SSLError and timeouts are OSErrors
        where = f"{settings.imap_host}:{settings.imap_port}"
        raise MailboxError(
            f"cannot read mailbox {settings.imap_mailbox!r} at {where} as "
            f"{settings.imap_username!r} ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "check IMAP_HOST, IMAP_PORT, IMAP_SECURITY, IMAP_USERNAME and IMAP_PASSWORD."
        ) from exc
