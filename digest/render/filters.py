"""Small text helpers for emails, each also a Jinja filter of the email environment.

They are plain functions of strings and dates so that the plain path, the day renderer and the
notices print a value the same way. Everything they get may come from a feed or a subscriber.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from urllib.parse import urlsplit

from ..models import WEEKDAYS

ABSTRACT_CHARS = 280
AUTHORS_SHOWN = 3
TEXT_WIDTH = 72

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(value: object) -> object:
    """Every value a template prints, without C0 control characters (tab and newlines stay)."""
    if isinstance(value, str) and not value.isprintable() and _CONTROL.search(value):
        return value.__class__(_CONTROL.sub("", value))
    return value


def one_line(value: object) -> str:
    """Collapse every run of whitespace (CR, LF, U+2028, tabs...) into one space."""
    text = str(value)
    if _on_one_line(text):
        return text
    return " ".join(text.split())


def _on_one_line(text: str) -> bool:
    """Already what `one_line` makes: printable (so no whitespace but the ASCII space, which
    str.isprintable counts as printable) with no space at the ends or twice in a row."""
    return text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " "


def shorten(text: str, limit: int = ABSTRACT_CHARS) -> str:
    """`text` on one line, cut to at most `limit` characters at a word boundary, with "…"."""
    text = one_line(text)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:  # a single huge "word" (a URL, say) is cut mid-word instead
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—(") + "…"


def author_line(authors: Iterable[str], shown: int = AUTHORS_SHOWN) -> str:
    """Authors as "A, B, C et al." for long lists, "A and B" for two, "" for none."""
    names = [one_line(a) for a in authors if a and a.strip()]
    if len(names) > shown:
        return ", ".join(names[:shown]) + " et al."
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return ", ".join(names)


def topic_list(topics: str) -> str:
    """Free-text topics as one comma-separated line ("LoRA\\nsparsity" -> "LoRA, sparsity")."""
    parts = [" ".join(p.split()) for p in _TOPIC_SEPARATORS.split(topics)]  # `one_line`'s
    return ", ".join([p for p in parts if p])


_TOPIC_SEPARATORS = re.compile(r"[,;\n\r]+")


# Any whitespace (str.isspace's set: \s on str patterns is the same) or control character.
_URL_BREAKER = re.compile(r"[\s\x00-\x1f\x7f]")


def safe_url(url: object) -> str:
    """`url` if it is an absolute http(s) URL, else "" so the template leaves the link out.

    A hostile feed can carry `javascript:` or `data:` URLs; browsers ignore tabs and newlines
    inside a scheme, so any whitespace or control character rejects the URL outright.
    """
    if not isinstance(url, str):
        return ""
    # Every digest carries a few links that differ only in their last segment (a token):
    # once a URL passed, another with the same head and a plain last segment passes too.
    head, _, last = url.rpartition("/")
    if head in _SAFE_HEADS and _PLAIN_SEGMENT.fullmatch(last):
        return url
    stripped = url.strip()
    if not stripped or _URL_BREAKER.search(stripped):
        return ""
    try:
        parts = urlsplit(stripped)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    if stripped == url and _PLAIN_SEGMENT.fullmatch(last) and len(_SAFE_HEADS) < 10_000:
        _SAFE_HEADS.add(head)
    return stripped


# Heads (all but the last "/" segment) of URLs that passed `safe_url`; a plain segment after
# one cannot add whitespace, a control character or a scheme, nor empty the host.
_SAFE_HEADS: set[str] = set()
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def long_date(day: date) -> str:
    """The date as "Monday, 23 November 2026", independent of the process locale."""
    return f"{WEEKDAYS[day.weekday()]}, {day.day} {_MONTHS[day.month - 1]} {day.year}"


def short_date(day: date) -> str:
    """The date as "23 Nov 2026"."""
    return f"{day.day} {_MONTHS[day.month - 1][:3]} {day.year}"


def day_month(day: date) -> str:
    """The date as "23 Nov", for a subject line (the email's Date header has the year)."""
    return f"{day.day} {_MONTHS[day.month - 1][:3]}"


def wrap(text: str, width: int = TEXT_WIDTH, indent: int = 0, first: str | None = None) -> str:
    """Wrap prose for the plain-text part; long words (URLs) are never broken.

    Lines are indented by `indent` spaces; `first`, if given, replaces the first line's indent
    (a hanging "1. " before a title).
    """
    # What textwrap.fill does with break_long_words and break_on_hyphens off, on text whose
    # whitespace is already collapsed: greedy filling at spaces, without textwrap's machinery.
    # Each line ends at the last space that still fits (str.rfind, not a loop over words).
    rest = " ".join(str(text).split())
    if not rest:
        return ""
    pad = " " * indent
    lead = pad if first is None else first
    lines: list[str] = []
    while len(lead) + len(rest) > width:
        room = width - len(lead) + 1
        cut = rest.rfind(" ", 0, room) if room > 0 else -1
        if cut < 0:  # a first word too long for the line: alone on it, never broken
            cut = rest.find(" ")
            if cut < 0:
                break
        lines.append(lead + rest[:cut])
        rest = rest[cut + 1 :]
        lead = pad
    lines.append(lead + rest)
    return "\n".join(lines)


def star_count(count: int) -> str:
    """A count as GitHub shows stars: "950", "1.2k", "12.3k", "123k", "1.2M" (rounded down,
    so 999,999 is "999k", never "1000k")."""
    if count < 1000:
        return str(count)
    if count < 100_000:
        return _tenths(count // 100) + "k"
    if count < 1_000_000:
        return f"{count // 1000}k"
    return _tenths(count // 100_000) + "M"


def _tenths(tenths: int) -> str:
    whole, tenth = divmod(tenths, 10)
    return f"{whole}.{tenth}" if tenth else str(whole)


def plural(count: int, singular: str, many: str | None = None) -> str:
    """A count with its noun: "1 paper", "10 papers"."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"

