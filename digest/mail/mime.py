"""The bytes of a message as sent: built directly, without the email package, because a
day builds one per subscriber. They parse to the same headers and parts as
`message.build_message` (the fast-path equivalence tests prove it)."""

from __future__ import annotations

import binascii
import functools
from datetime import datetime, timezone
from email.utils import format_datetime
from itertools import groupby

from ..settings import Settings
from .dkim import dkim_sign
from .message import (
    MAIL_POLICY,
    OutgoingEmail,
    build_message,
    check_address,
    clean_subject,
    mime_boundary,
    needs_smtputf8,
    wire_address,
)


def message_bytes(settings: Settings, email: OutgoingEmail) -> bytes:
    """The message exactly as sent: CRLF line endings, bodies 7-bit (headers too, unless the
    recipient's address needs SMTPUTF8)."""
    if needs_smtputf8(email.to):
        msg = build_message(settings, email)  # rare: the email package handles SMTPUTF8
        return dkim_sign(settings, msg.as_bytes(policy=msg.policy))
    return dkim_sign(settings, fast_message_bytes(settings, email))

_CRLF = b"\r\n"


def fast_message_bytes(settings: Settings, email: OutgoingEmail) -> bytes:
    """multipart/alternative bytes built directly: headers folded per RFC 5322 (RFC 2047 for
    non-ASCII), both parts UTF-8 quoted-printable. The email package parses them to the same
    headers and parts as `build_message` (a test checks), without its per-header object
    model, which a day pays once per subscriber.
    """
    boundary = mime_boundary(email)
    sent_at = email.date if email.date.tzinfo else email.date.replace(tzinfo=timezone.utc)
    reply_to, list_id, list_unsubscribe_post = _constant_headers(settings)
    head = b"".join((
        _header("From", settings.mail_from),
        _header("To", wire_address(email.to)),
        reply_to,
        _date_header(sent_at.replace(microsecond=0)),
        _subject_header(clean_subject(email.subject)),
        _verbatim_header("Message-ID", email.message_id),
        list_id,
        _verbatim_header(
            "List-Unsubscribe",
            f"<{email.unsubscribe_url}>, "
            f"<mailto:{email.unsubscribe_mailto or _unsubscribe_mailto(settings)}"
            "?subject=unsubscribe>",
        ),
        list_unsubscribe_post,
        _header("X-Digest-Kind", email.kind),
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode("ascii"),
    ))
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), not to the part.
    marker = f"\r\n--{boundary}\r\n".encode("ascii")
    return b"".join((
        head, _CRLF,
        marker[2:], _text_part("plain", email.text, email.text_quoted),
        marker, _html_part(email.html),
        f"\r\n--{boundary}--\r\n".encode("ascii"),
    ))


_MAX_LINE = 998  # RFC 5322: no line of a message is longer, CRLF aside


def _html_part(html: str) -> bytes:
    """The HTML part as 7-bit lines, not quoted-printable, when that means the same page.

    Compiled MJML puts a whole body on one line, and quoting it (every "=" of every
    attribute becomes "=3D") is slow and makes the part larger. Instead the
    characters beyond ASCII become character references, and a line too long breaks between
    two tags: `><` occurs in our HTML only there (text and attributes are escaped), where a
    line break is whitespace the page does not show (a test renders both in a browser).
    Lines are as long as allowed, not one per tag: a receiving server reads a message line
    by line, so more lines cost it more time.
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


def _text_part(subtype: str, body: str, quoted: bytes | None = None) -> bytes:
    """A text part: 7-bit as it is if it is short ASCII lines, else quoted-printable (`quoted`,
    if the renderer encoded it already: it is `quoted_printable(body)`, a test checks)."""
    content_type = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode("ascii")
    if quoted is not None and not body.isascii() and body.endswith("\n") and "\r" not in body:
        return (content_type + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                + quoted.replace(b"\n", b"\r\n"))
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    data = body.encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    # As the email package does: short ASCII lines go as they are, anything else as QP.
    if data.isascii() and max(map(len, data.split(b"\n"))) <= 78:
        return content_type + b"Content-Transfer-Encoding: 7bit\r\n\r\n" + data.replace(
            b"\n", b"\r\n"
        )
    return (
        content_type
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + _quoted_bytes(data).replace(b"\n", b"\r\n")
    )


def quoted_printable(text: str) -> bytes:
    """`text` (LF line ends) as a text part's quoted-printable body, LF line ends kept.

    The encoding starts afresh at each line end, so text cut after line ends encodes piece by
    piece to the same bytes as the whole: the day renderer encodes a card's lines once a day
    and joins them per reader (tests/test_render_fast.py checks it against this)."""
    return _quoted_bytes(text.encode("utf-8"))


def _quoted_bytes(data: bytes) -> bytes:
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)


@functools.lru_cache(maxsize=8)
def _constant_headers(settings: Settings) -> tuple[bytes, bytes, bytes]:
    """Headers that are the same for every message of a deployment, encoded once."""
    reply_to = _header("Reply-To", settings.mail_reply_to) if settings.mail_reply_to else b""
    return (
        reply_to,
        _header("List-Id", settings.list_id),
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nPrecedence: bulk\r\n",
    )


@functools.lru_cache(maxsize=64)
def _date_header(sent_at: datetime) -> bytes:
    """The Date line, to the second: a day's messages share each second's."""
    return _header("Date", format_datetime(sent_at))


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
    "β" in a topic) is encoded here directly rather than by the email package, whose
    encoding is slow and would be paid per message:
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
