"""What ingest makes of a paper: the `PaperRecord`, the reports of what was rejected or
changed, and the checks each field passes on its way to the database.

Every format's reader builds records with these helpers, so text is cleaned (control and
format characters out, whitespace tidied), numbers and dates are brought into range, and
fields are cut to what may be stored in one place (style rule 19: one bad record fails alone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from ..fetch import MAX_URL_CHARS

log = logging.getLogger(__name__)

# A title longer than this is an abstract that lost its title (real titles stay under ~200).
TITLE_MAX_CHARS = 300
# What a record may store. Real papers stay far below each: titles under ~250 characters,
# arXiv caps abstracts at 1,920, names under ~60; collaborations list thousands of authors,
# of whom a digest shows a few.
MAX_TITLE_CHARS = 500
MAX_ABSTRACT_CHARS = 10_000
MAX_AUTHOR_CHARS = 200
MAX_AUTHORS = 100
MAX_COUNT = 2**31 - 1  # PostgreSQL's INTEGER
# The daily-papers extras: its TL;DRs are one sentence (under 300 characters), it gives up to
# about 25 keywords of under 50 characters each, and an organization column holds 200.
MAX_SUMMARY_CHARS = 1_000
MAX_KEYWORDS = 30
MAX_KEYWORD_CHARS = 80
MAX_ORGANIZATION_CHARS = 200
EARLIEST_DATE = datetime(1900, 1, 1, tzinfo=UTC)
# Time zones and clock skew put a fresh paper's date up to a day ahead of ours.
FUTURE_SLACK = timedelta(days=2)

ARXIV_ID = re.compile(r"^(?P<id>\d{4}\.\d{4,5}|[a-z][a-z.-]*(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?$")


class IngestError(Exception):
    """A whole document could not be read or parsed; the message says what to do about it."""


@dataclass(frozen=True)
class PaperRecord:
    """One parsed paper, before storage."""

    source: str
    source_id: str
    title: str
    abstract: str
    authors: tuple[str, ...]
    url: str | None
    pdf_url: str | None
    published_at: datetime | None  # timezone-aware UTC
    upvotes: int | None = None
    comments: int | None = None
    stars: int | None = None
    # The day the source listed the paper (daily-papers: the day it was featured), when it says.
    listed_at: datetime | None = None
    # What the daily-papers API adds: a one-line TL;DR, keywords, the code, a thumbnail and the
    # authors' organization. None: the source did not say.
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] | None = None
    github_repo: str | None = None
    thumbnail: str | None = None
    organization: str | None = None
    # Fields the reader left out and why ("ai_keywords dropped: ..."): reported as notes.
    dropped: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Rejection:
    """A record that was skipped: where it was ("papers.json entry 3") and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Note:
    """A record kept with a change the operator should know of, such as a field cut to size."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class ParseResult:
    records: list[PaperRecord]
    rejected: list[Rejection]
    format: str
    notes: list[Note] = field(default_factory=list)


# Where an entry was in its document, and its record or the reason it was rejected.
Entry = tuple[str, PaperRecord | str]


class BadRecord(ValueError):
    """Raised inside a record parser; becomes a `Rejection`, never escapes the ingest package."""



def title_key(title: str) -> str:
    """A short stable hash of a title that ignores case, punctuation and spacing.

    Non-alphanumerics are dropped rather than turned into spaces, so that "Self-Supervised" and
    "Self Supervised", or "$ω$Test" and "ωTest", name the same paper across sources.
    """
    normal = unicodedata.normalize("NFKC", title).casefold()
    normal = "".join(ch for ch in normal if ch.isalnum())
    return hashlib.sha1(normal.encode("utf-8")).hexdigest()[:16]


def has_words(title: str) -> bool:
    return any(ch.isalnum() for ch in title)


# Removed from all text: control characters (C0 but newline and tab, DEL, C1); surrogates, which
# no database can store; and the format characters (Unicode Cf): bidi embeddings, overrides,
# isolates and marks, which make a title display differently from what it is, zero-width
# spaces, soft hyphens, invisible tags. ZWNJ and ZWJ (U+200C, U+200D) stay: Persian, Indic
# scripts and emoji need them to join or part letters, and they cannot reorder text.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    r"\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    r"\ud800-\udfff\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    r"\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


def clean_text(text: str) -> str:
    """Unify line ends and drop invisible characters (controls other than newline and tab)."""
    return _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def one_line(text: str) -> str:
    """Titles and names: one line, single spaces."""
    return " ".join(clean_text(text).split())


def tidy_paragraphs(text: str) -> str:
    """Abstracts: unwrap hard-wrapped lines, keep paragraph breaks as single newlines.

    arXiv marks a new paragraph with a newline followed by indentation (or a blank line) and
    wraps old abstracts at 80 columns with bare newlines; daily-papers copies arXiv's text.
    """
    paragraphs = re.split(r"\n[ \t]*\n\s*|\n[ \t]+", clean_text(text).strip())
    return "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def shown(value: object) -> str:
    """A value from the input as a reason may quote it: short, printable, and never deep."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if (isinstance(value, int) and abs(value) < 10**20) or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        digits = len(str(abs(value))) if value.bit_length() < 10_000 else "many-thousand"
        return f"a {digits}-digit number"
    return json_kind(value)


def json_kind(value: object) -> str:
    """JSON's name for a parsed value's type ("an object", "a list"), for error messages."""
    names: dict[type, str] = {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def parse_utc(value: object, name: str) -> datetime | None:
    """An ISO 8601 date as an aware UTC datetime from 1900 to today; None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRecord(f"{name} is not a date string: {shown(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRecord(f"{name} {shown(value)} is not an ISO 8601 date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a day before year 1 in UTC
        parsed = EARLIEST_DATE - timedelta(days=1)
    if not EARLIEST_DATE <= parsed <= datetime.now(UTC) + FUTURE_SLACK:
        raise BadRecord(
            f"{name} {shown(value)} is out of range: a paper's date is from 1900 to today"
        )
    return parsed


def parse_count(value: object, name: str) -> int | None:
    """A count such as upvotes: a whole number from 0 to 2,147,483,647; None when absent."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRecord(f"{name} is not a count: {shown(value)}")
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise BadRecord(f"{name} is out of range ({shown(value)}): a count is a whole number "
                         f"from 0 to {MAX_COUNT:,}")
    return value


def parse_arxiv_id(value: str) -> str | None:
    """The arXiv id without its version, from "2607.01234v2" or "cond-mat/0412498v1"."""
    match = ARXIV_ID.match(value.strip()) if len(value) <= 64 else None
    return match.group("id") if match else None


def quoted(title: str) -> str:
    return repr(title if len(title) <= 80 else title[:77] + "...")


# --- limits on what a record stores -----------------------------------------------------------


def within_limits(record: PaperRecord) -> tuple[PaperRecord, list[str]]:
    """The record with every field within what may be stored, and a note for each change."""
    changes: list[str] = []
    limited = replace(
        record,
        title=_cut(record.title, MAX_TITLE_CHARS, "title", changes),
        abstract=_cut(record.abstract, MAX_ABSTRACT_CHARS, "abstract", changes),
        authors=_limited_authors(record.authors, changes),
        url=_usable_url(record.url, "url", changes),
        pdf_url=_usable_url(record.pdf_url, "pdf_url", changes),
        ai_summary=_cut_optional(record.ai_summary, MAX_SUMMARY_CHARS, "ai_summary", changes),
        ai_keywords=_limited_keywords(record.ai_keywords, changes),
        github_repo=_usable_url(record.github_repo, "github_repo", changes),
        thumbnail=_usable_url(record.thumbnail, "thumbnail", changes),
        organization=_cut_optional(
            record.organization, MAX_ORGANIZATION_CHARS, "organization", changes
        ),
    )
    changes = [*record.dropped, *changes]
    return (limited if changes else record), changes


def _cut(text: str, limit: int, name: str, changes: list[str]) -> str:
    if len(text) <= limit:
        return text
    changes.append(f"{name} cut from {len(text):,} to {limit:,} characters")
    return text[: limit - 1].rstrip() + "…"


def _cut_optional(text: str | None, limit: int, name: str, changes: list[str]) -> str | None:
    return None if text is None else _cut(text, limit, name, changes)


def _limited_keywords(
    keywords: tuple[str, ...] | None, changes: list[str]
) -> tuple[str, ...] | None:
    """At most MAX_KEYWORDS keywords of at most MAX_KEYWORD_CHARS each: a longer one is a
    sentence, not a keyword, and is left out rather than cut into one."""
    if keywords is None:
        return None
    short = tuple(k for k in keywords if len(k) <= MAX_KEYWORD_CHARS)
    if len(short) < len(keywords):
        changes.append(f"left out {len(keywords) - len(short)} keyword(s) of over "
                       f"{MAX_KEYWORD_CHARS} characters")
    if len(short) > MAX_KEYWORDS:
        changes.append(f"kept the first {MAX_KEYWORDS} of {len(short):,} keywords")
        short = short[:MAX_KEYWORDS]
    return short


def _limited_authors(authors: tuple[str, ...], changes: list[str]) -> tuple[str, ...]:
    if len(authors) > MAX_AUTHORS:
        changes.append(f"kept the first {MAX_AUTHORS} of {len(authors):,} authors")
        authors = authors[:MAX_AUTHORS]
    long_names = sum(len(name) > MAX_AUTHOR_CHARS for name in authors)
    if not long_names:
        return authors
    changes.append(f"{long_names} author name(s) cut to {MAX_AUTHOR_CHARS} characters")
    return tuple(_cut(name, MAX_AUTHOR_CHARS, "author", []) for name in authors)


def _usable_url(url: str | None, name: str, changes: list[str]) -> str | None:
    """The URL if a reader may follow it (http(s), a host, sane length); else None, noted."""
    if url is None or is_web_url(url):
        return url
    changes.append(f"{name} dropped: not an http(s) URL of at most {MAX_URL_CHARS:,} characters")
    return None


def is_web_url(url: str) -> bool:
    if len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)

