"""Ingest: turn papers-listing pages, daily-papers JSON and arXiv Atom feeds into `Paper` rows.

Everything downstream (scoring, rendering, sending) trusts the `papers` table, so this is the one
place that reads the outside world's formats, with all their quirks, and decides what a paper is.
The story is top-down: read a source (a local file, or an http(s) URL fetched by `fetch` with a
total deadline, a size cap and public addresses only) → detect its format → parse it into plain
`PaperRecord`s, each validated into range (a bad record is rejected with its reason, an overlong
field is cut and the cut reported, a document that cannot be read is refused whole) → upsert
them, so that running the same ingest twice changes nothing and one paper seen on a page, on the
daily-papers site and on arXiv ends up as one row. One source's failure never stops the others.

Text is stored as text: escaping is the renderer's job. Here we only remove control and format
characters (bidi overrides among them) and tidy whitespace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import metrics
from .fetch import MAX_URL_CHARS, FetchError, FetchLimits, fetch
from .models import Paper

log = logging.getLogger(__name__)

FORMATS = ("page", "daily-papers", "arxiv")
MAX_BYTES = 50 * 1024 * 1024
SAMPLE_PAPERS = Path(__file__).resolve().parent / "sample_data" / "papers.txt"

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
EARLIEST_DATE = datetime(1900, 1, 1, tzinfo=UTC)
# Time zones and clock skew put a fresh paper's date up to a day ahead of ours.
FUTURE_SLACK = timedelta(days=2)
# A papers page is title and abstract pairs; below this share of its lines it is some other text.
PAGE_MIN_ENTRY_SHARE = 0.5
# An abstract shorter than TITLE_MAX_CHARS must at least read as prose.
MIN_ABSTRACT_WORDS = 12
# Longer report lists are summarised: the operator needs the pattern, not ten thousand lines.
REPORT_LIST_MAX = 20
# Keeps each IN (...) list well under every backend's bound-parameter limit.
LOOKUP_CHUNK = 500

ATOM = "{http://www.w3.org/2005/Atom}"
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


class _BadRecord(ValueError):
    """Raised inside a record parser; becomes a `Rejection`, never escapes this module."""


# ---------------------------------------------------------------------------------------------
# Read


def read_source(
    path_or_url: str,
    timeout: float,
    max_bytes: int = MAX_BYTES,
    allow_private_networks: bool = False,
) -> bytes:
    """Return the bytes of a local file or an http(s) URL, at most `max_bytes` of them.

    A source is a URL only when it starts with http:// or https://; anything else with "://" is
    refused, and the rest are paths. `timeout` is the whole fetch's deadline.
    """
    scheme = path_or_url.partition("://")[0].lower() if "://" in path_or_url else ""
    if scheme in ("http", "https"):
        limits = FetchLimits(timeout, max_bytes, allow_private_networks)
        try:
            return fetch(path_or_url, limits)
        except FetchError as exc:
            raise IngestError(str(exc)) from None
    if "://" in path_or_url:
        raise IngestError(
            f"{_one_line(path_or_url)[:200]}: only http:// and https:// URLs can be fetched; "
            "give a local file by its path instead."
        )
    return _read_file(Path(path_or_url), max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        if path.is_dir():
            raise IngestError(f"{path}: is a directory; give the files in it instead.")
        if not path.exists():
            raise IngestError(
                f"{path}: no such file; check the path (a URL must start with http:// or "
                "https://)."
            )
        if not path.is_file():
            raise IngestError(f"{path}: not a regular file (a device, pipe or socket).")
        if path.stat().st_size > max_bytes:
            raise IngestError(f"{path}: larger than {max_bytes:,} bytes; is this the right file?")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # files such as /proc's report no size
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise IngestError(f"{_one_line(str(path))[:200]}: cannot be read ({reason}).") from None
    if len(data) > max_bytes:
        raise IngestError(f"{path}: larger than {max_bytes:,} bytes; is this the right file?")
    return data


# ---------------------------------------------------------------------------------------------
# Detect


def detect_format(data: bytes) -> str:
    """Name the format of a document: "arxiv" (XML), "daily-papers" (JSON) or "page" (text)."""
    first = _decode(data).lstrip()[:1]
    if first == "<":
        return "arxiv"
    if first in ("[", "{"):
        return "daily-papers"
    return "page"


def _decode(data: bytes) -> str:
    """The document as text without a BOM; binary, non-UTF-8 and empty documents are refused."""
    if b"\x00" in data:
        raise IngestError("the input is binary (it contains NUL bytes), not a page, JSON or XML.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"the input is not UTF-8 text (bad byte at offset {exc.start}); "
            "save it as UTF-8 or check that it is the right file."
        ) from exc
    if not text.strip():
        raise IngestError("the input is empty.")
    return text


# ---------------------------------------------------------------------------------------------
# Parse


def parse(data: bytes, fmt: str | None = None, origin: str = "<input>") -> ParseResult:
    """Parse a whole document into records, rejections and notes; `fmt` None means detect it.

    Each format's reader finds the entries and validates them; here every record is brought
    within what may be stored (each cut becomes a note), and a second entry for a paper already
    read is rejected, the first kept: the document said two things about one paper.
    """
    text = _decode(data)
    fmt = fmt or detect_format(data)
    reader = READERS.get(fmt)
    if reader is None:
        raise IngestError(f"unknown format {_shown(fmt)}; use one of {', '.join(FORMATS)}.")
    result = ParseResult(records=[], rejected=[], format=fmt)
    first_at: dict[str, str] = {}
    for where, outcome in reader(text, origin):
        if isinstance(outcome, str):
            result.rejected.append(Rejection(where, outcome))
        elif outcome.source_id in first_at:
            result.rejected.append(Rejection(where, _duplicate(outcome, first_at)))
        else:
            first_at[outcome.source_id] = where
            record, cuts = _within_limits(outcome)
            result.records.append(record)
            result.notes.extend(Note(where, cut) for cut in cuts)
    return result


def _duplicate(record: PaperRecord, first_at: dict[str, str]) -> str:
    paper = _quote(record.title) if record.source == "page" else f"paper {record.source_id}"
    return f"a second entry for {paper}, first at {first_at[record.source_id]}; the first is kept"


def title_key(title: str) -> str:
    """A short stable hash of a title that ignores case, punctuation and spacing.

    Non-alphanumerics are dropped rather than turned into spaces, so that "Self-Supervised" and
    "Self Supervised", or "$ω$Test" and "ωTest", name the same paper across sources.
    """
    normal = unicodedata.normalize("NFKC", title).casefold()
    normal = "".join(ch for ch in normal if ch.isalnum())
    return hashlib.sha1(normal.encode("utf-8")).hexdigest()[:16]


def _has_words(title: str) -> bool:
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


def _clean(text: str) -> str:
    """Unify line ends and drop invisible characters (controls other than newline and tab)."""
    return _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _one_line(text: str) -> str:
    """Titles and names: one line, single spaces."""
    return " ".join(_clean(text).split())


def _paragraphs(text: str) -> str:
    """Abstracts: unwrap hard-wrapped lines, keep paragraph breaks as single newlines.

    arXiv marks a new paragraph with a newline followed by indentation (or a blank line) and
    wraps old abstracts at 80 columns with bare newlines; daily-papers copies arXiv's text.
    """
    paragraphs = re.split(r"\n[ \t]*\n\s*|\n[ \t]+", _clean(text).strip())
    return "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _shown(value: object) -> str:
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
    return _json_kind(value)


def _json_kind(value: object) -> str:
    """JSON's name for a parsed value's type ("an object", "a list"), for error messages."""
    names: dict[type, str] = {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _utc(value: object, name: str) -> datetime | None:
    """An ISO 8601 date as an aware UTC datetime from 1900 to today; None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRecord(f"{name} is not a date string: {_shown(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _BadRecord(f"{name} {_shown(value)} is not an ISO 8601 date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a day before year 1 in UTC
        parsed = EARLIEST_DATE - timedelta(days=1)
    if not EARLIEST_DATE <= parsed <= datetime.now(UTC) + FUTURE_SLACK:
        raise _BadRecord(
            f"{name} {_shown(value)} is out of range: a paper's date is from 1900 to today"
        )
    return parsed


def _count(value: object, name: str) -> int | None:
    """A count such as upvotes: a whole number from 0 to 2,147,483,647; None when absent."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadRecord(f"{name} is not a count: {_shown(value)}")
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _BadRecord(f"{name} is out of range ({_shown(value)}): a count is a whole number "
                         f"from 0 to {MAX_COUNT:,}")
    return value


def _arxiv_id(value: str) -> str | None:
    """The arXiv id without its version, from "2607.01234v2" or "cond-mat/0412498v1"."""
    match = ARXIV_ID.match(value.strip()) if len(value) <= 64 else None
    return match.group("id") if match else None


def _quote(title: str) -> str:
    return repr(title if len(title) <= 80 else title[:77] + "...")


# --- limits on what a record stores -----------------------------------------------------------


def _within_limits(record: PaperRecord) -> tuple[PaperRecord, list[str]]:
    """The record with every field within what may be stored, and a note for each change."""
    changes: list[str] = []
    limited = replace(
        record,
        title=_cut(record.title, MAX_TITLE_CHARS, "title", changes),
        abstract=_cut(record.abstract, MAX_ABSTRACT_CHARS, "abstract", changes),
        authors=_limited_authors(record.authors, changes),
        url=_usable_url(record.url, "url", changes),
        pdf_url=_usable_url(record.pdf_url, "pdf_url", changes),
    )
    return (limited if changes else record), changes


def _cut(text: str, limit: int, name: str, changes: list[str]) -> str:
    if len(text) <= limit:
        return text
    changes.append(f"{name} cut from {len(text):,} to {limit:,} characters")
    return text[: limit - 1].rstrip() + "…"


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
    if url is None or _is_web_url(url):
        return url
    changes.append(f"{name} dropped: not an http(s) URL of at most {MAX_URL_CHARS:,} characters")
    return None


def _is_web_url(url: str) -> bool:
    if len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# --- page: "title line, abstract line" pairs under a few header lines ------------------------

PAGE_HEADERS = frozenset(
    {
        "new",
        "get trending papers in your email inbox once a day!",
        "get trending papers in your email inbox!",
        "subscribe",
        "byak and the research community",
    }
)
# The date line ("Mar 14") has no year, so it is skipped rather than used.
PAGE_DATE = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* \d{1,2}$")


def _parse_page(text: str, origin: str) -> list[Entry]:
    lines = [(n, " ".join(line.split())) for n, line in enumerate(_clean(text).split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line]
    body, has_header = _without_page_header(lines)
    entries: list[Entry] = []
    i = 0
    while i < len(body):
        n, title = body[i]
        where = f"{origin} line {n}"
        if len(title) > TITLE_MAX_CHARS:
            entries.append((where, "an abstract with no title line before it"))
            i += 1
        elif not _abstract_follows(body, i):
            entries.append((where, f"title {_quote(title)} has no abstract after it"))
            i += 1
        else:
            try:
                entries.append((where, _page_record(title, body[i + 1][1])))
            except _BadRecord as exc:
                entries.append((where, str(exc)))
            i += 2
    if not has_header:
        _check_page_shape(entries, len(body))
    return entries


def _without_page_header(lines: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], bool]:
    """The lines after the page's header, and whether it had one.

    "Subscribe" is unglued from the first title when stuck to it.
    """
    start = 0
    saw_subscribe = False
    while start < len(lines):
        line = lines[start][1]
        if line.casefold() not in PAGE_HEADERS and not PAGE_DATE.match(line):
            break
        saw_subscribe = saw_subscribe or line.casefold() == "subscribe"
        start += 1
    body = lines[start:]
    # Two of the real pages lost the newline after the "Subscribe" button.
    if body and not saw_subscribe and body[0][1].startswith("Subscribe") and start > 0:
        n, first = body[0]
        body = [(n, first.removeprefix("Subscribe").strip()), *body[1:]]
    return body, start > 0


def _abstract_follows(body: list[tuple[int, str]], i: int) -> bool:
    """Whether the line after title line `i` is its abstract.

    A long line is. A shorter one must read as prose, and not be a title itself: a short line
    followed by a long one is the next paper's title.
    """
    if i + 1 >= len(body):
        return False
    line = body[i + 1][1]
    if len(line) > TITLE_MAX_CHARS:
        return True
    return len(line.split()) >= MIN_ABSTRACT_WORDS and not _is_long(body, i + 2)


def _is_long(body: list[tuple[int, str]], i: int) -> bool:
    return i < len(body) and len(body[i][1]) > TITLE_MAX_CHARS


def _check_page_shape(entries: list[Entry], body_lines: int) -> None:
    """Refuse text without the page's header unless it has a page's shape.

    That shape: at least half of the lines are title lines each followed by an abstract on one
    long line. Without this check any text file (a README, /etc/passwd) would be read as
    papers; wrapped prose never has such lines.
    """
    paired = 2 * sum(
        1
        for _, outcome in entries
        if not isinstance(outcome, str) and len(outcome.abstract) > TITLE_MAX_CHARS
    )
    if paired == 0:
        raise IngestError(
            "not a papers page: it has neither the page's header nor a title line followed "
            "by a one-line abstract; check that this is the right file."
        )
    if paired < PAGE_MIN_ENTRY_SHARE * body_lines:
        raise IngestError(
            f"not a papers page: it lacks the page's header, and only {paired} of its "
            f"{body_lines} lines are titles with one-line abstracts; check that this is the "
            "right file."
        )


def _page_record(title: str, abstract: str) -> PaperRecord:
    if not _has_words(title):
        raise _BadRecord(f"title {_quote(title)} has no letters or digits")
    key = title_key(title)
    return PaperRecord(
        source="page",
        source_id=f"page:{key}",
        title=title,
        abstract=_paragraphs(abstract),
        authors=(),
        url=f"https://arxiv.org/search/?query={quote_plus(title)}&searchtype=title",
        pdf_url=None,
        published_at=None,
    )


# --- daily-papers: the papers site's JSON list of {"paper": {...}, "numComments": ...} -------


def _parse_daily_papers(text: str, origin: str) -> list[Entry]:
    entries = _load_json(text)
    if not isinstance(entries, list):
        raise IngestError(
            f"expected a JSON list of daily-papers entries, got {_json_kind(entries)}."
        )
    if entries and not any(isinstance(e, dict) and "paper" in e for e in entries):
        raise IngestError(
            f"none of the {len(entries)} JSON entries has a \"paper\" object; "
            "this is not a daily-papers API response."
        )
    found: list[Entry] = []
    for position, entry in enumerate(entries, 1):
        where = f"{origin} entry {position}"
        try:
            found.append((where, _daily_paper_record(entry)))
        except _BadRecord as exc:
            found.append((where, str(exc)))
    return found


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
            "is the download complete?"
        ) from None
    except RecursionError:
        raise IngestError(
            "the JSON is nested too deeply to read (a daily-papers response is four levels "
            "deep); check that this is the right file."
        ) from None


def _json_int(digits: str) -> int | float:
    """JSON integers as ints, except absurdly long ones, which become floats (inf).

    Python refuses to read an integer of over 4,300 digits, which would fail the whole
    document; no field holds such a number, and as a float it fails only its own record.
    """
    return int(digits) if len(digits) <= 30 else float(digits)


def _daily_paper_record(entry: object) -> PaperRecord:
    if not isinstance(entry, dict):
        raise _BadRecord(f"not an object but {_json_kind(entry)}")
    paper = entry.get("paper")
    if not isinstance(paper, dict):
        raise _BadRecord('missing "paper" object')
    raw_id = paper.get("id")
    if raw_id is None or raw_id == "":
        raise _BadRecord("missing paper.id")
    if not isinstance(raw_id, str) or not (arxiv_id := _arxiv_id(raw_id)):
        raise _BadRecord(f"paper.id {_shown(raw_id)} is not an arXiv id")
    title = _one_line(_json_text(paper, entry, "title"))
    if not _has_words(title):
        raise _BadRecord(f"paper {arxiv_id} has an empty title")
    return PaperRecord(
        source="daily-papers",
        source_id=arxiv_id,
        title=title,
        abstract=_paragraphs(_json_text(paper, entry, "summary")),
        authors=_json_authors(paper.get("authors")),
        url=f"https://huggingface.co/papers/{arxiv_id}",
        pdf_url=f"https://arxiv.org/pdf/{arxiv_id}",
        published_at=_utc(paper.get("publishedAt") or entry.get("publishedAt"), "publishedAt"),
        upvotes=_count(paper.get("upvotes"), "paper.upvotes"),
        comments=_count(entry.get("numComments"), "numComments"),
        stars=_count(paper.get("githubStars"), "paper.githubStars"),
    )


def _json_text(paper: dict[str, Any], entry: dict[str, Any], name: str) -> str:
    """paper.<name>, else the entry's top-level copy of it; must be a string when present."""
    value = paper.get(name)
    if value is None:
        value = entry.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _BadRecord(f"paper.{name} is not a string but {_json_kind(value)}")
    return value


def _json_authors(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _BadRecord(f"paper.authors is not a list but {_json_kind(value)}")
    names = (a.get("name") if isinstance(a, dict) else a for a in value)
    return tuple(
        name for name in (_one_line(n) for n in names if isinstance(n, str)) if name
    )


# --- arxiv: the arXiv API's Atom feed --------------------------------------------------------


def _parse_arxiv(text: str, origin: str) -> list[Entry]:
    feed = _atom_feed(text)
    found: list[Entry] = []
    for position, entry in enumerate(feed.iterfind(f"{ATOM}entry"), 1):
        where = f"{origin} entry {position}"
        try:
            found.append((where, _arxiv_record(entry)))
        except _BadRecord as exc:
            found.append((where, str(exc)))
    return found


def _atom_feed(text: str) -> Element:
    """The feed element, parsed with DTDs and entities refused (no billion laughs, no XXE)."""
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise IngestError(
            f"the XML has a <!DOCTYPE> or entity declarations ({type(exc).__name__}); arXiv "
            "feeds never do, and they are refused so that entity expansion (billion laughs) "
            "and external entities (XXE) cannot run."
        ) from None
    except ParseError as exc:
        raise IngestError(f"invalid XML ({exc}); is the download complete?") from None
    if root.tag != f"{ATOM}feed":
        raise IngestError(
            f"the XML is not an Atom feed (its root is <{_local(root.tag)[:40]}>); "
            "expected an arXiv API response."
        )
    # arXiv reports a bad query as a feed with a single "Error" entry.
    for entry in root.iterfind(f"{ATOM}entry"):
        if "/api/errors" in (entry.findtext(f"{ATOM}id") or ""):
            message = _one_line(entry.findtext(f"{ATOM}summary") or "no details")
            raise IngestError(f"arXiv answered with an error: {message[:200]}")
    return root


def _local(tag: str) -> str:
    return _one_line(tag.rpartition("}")[2])


def _arxiv_record(entry: Element) -> PaperRecord:
    raw_id = (entry.findtext(f"{ATOM}id") or "").strip()
    if not raw_id:
        raise _BadRecord("missing <id>")
    path = _url_path(raw_id)
    arxiv_id = _arxiv_id(path.partition("/abs/")[2]) if "/abs/" in path else None
    if not arxiv_id:
        raise _BadRecord(f"<id> {_shown(raw_id)} is not an arXiv abstract URL")
    raw_title = entry.findtext(f"{ATOM}title")
    if raw_title is None:
        raise _BadRecord(f"paper {arxiv_id} is missing <title>")
    title = _one_line(raw_title)
    if not _has_words(title):
        raise _BadRecord(f"paper {arxiv_id} has an empty <title>")
    abs_url, pdf_url = _arxiv_links(entry)
    return PaperRecord(
        source="arxiv",
        source_id=arxiv_id,
        title=title,
        abstract=_paragraphs(entry.findtext(f"{ATOM}summary") or ""),
        authors=tuple(
            name
            for author in entry.iterfind(f"{ATOM}author")
            if (name := _one_line(author.findtext(f"{ATOM}name") or ""))
        ),
        url=abs_url or f"https://arxiv.org/abs/{arxiv_id}",
        pdf_url=pdf_url or f"https://arxiv.org/pdf/{arxiv_id}",
        published_at=_utc(entry.findtext(f"{ATOM}published"), "<published>"),
    )


def _url_path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:  # "http://[broken" and other URLs urlsplit cannot take apart
        return ""


def _arxiv_links(entry: Element) -> tuple[str | None, str | None]:
    """The abstract and PDF links, told apart by attributes or, failing those, by URL path.

    Some real responses carry bare `<link href="https://arxiv.org/pdf/..."/>` with no rel,
    type or title, so the path is the one signal every variant has. A link that is not a
    usable http(s) URL is passed over, and the record keeps arXiv's own URL instead.
    """
    abs_url = pdf_url = None
    for link in entry.iterfind(f"{ATOM}link"):
        href = _one_line(link.get("href") or "")
        if not _is_web_url(href):
            continue
        parts = urlsplit(href)
        host = parts.hostname or ""
        if host == "arxiv.org" or host.endswith(".arxiv.org"):
            href = "https" + href[len(parts.scheme):]
        is_pdf = link.get("title") == "pdf" or link.get("type") == "application/pdf"
        if (is_pdf or parts.path.startswith("/pdf/")) and pdf_url is None:
            pdf_url = href
        elif (link.get("rel") == "alternate" or parts.path.startswith("/abs/")) and not abs_url:
            abs_url = href
    return abs_url, pdf_url


READERS: dict[str, Callable[[str, str], list[Entry]]] = {
    "page": _parse_page,
    "daily-papers": _parse_daily_papers,
    "arxiv": _parse_arxiv,
}


# ---------------------------------------------------------------------------------------------
# Upsert


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


# Which source's descriptive fields win: arXiv is the paper's own metadata, the daily-papers
# site copies it, and a page carries only a title and an abstract.
SOURCE_RANK = {"page": 0, "daily-papers": 1, "arxiv": 2}
DESCRIPTIVE = ("title", "abstract", "authors", "url", "pdf_url", "published_at")
ENGAGEMENT = ("upvotes", "comments", "stars")
COMPARED = ("source", "source_id", "title_key", *DESCRIPTIVE, *ENGAGEMENT)


def upsert_papers(
    session: Session, records: Iterable[PaperRecord], now: datetime | None = None
) -> UpsertCounts:
    """Insert new papers and merge known ones, counting rows; the caller commits.

    One paper is one row: a record matches a row by source id, an arXiv record also claims a
    page row of the same title (giving it the real id and links), and a page record merges into
    any known paper of the same title. Engagement numbers follow the newest data that has them;
    `first_seen_at` is never touched. Existing rows are looked up for the whole input at once.
    """
    now = now or datetime.now(UTC)
    records = list(records)
    by_source_id, by_title_key = _existing_papers(session, records)
    created: dict[int, Paper] = {}
    touched: dict[int, tuple[Paper, dict[str, object]]] = {}
    for record in records:
        key = title_key(record.title)
        row = _matching_row(record, key, by_source_id, by_title_key)
        if row is None:
            row = Paper(source=record.source, source_id=record.source_id, first_seen_at=now)
            _fill(row, record, key, replace=True)
            session.add(row)
            created[id(row)] = row
        else:
            if id(row) not in created:
                touched.setdefault(id(row), (row, _snapshot(row)))
            _merge(row, record, key)
        by_source_id[row.source_id] = row
        same_title = by_title_key.setdefault(row.title_key, [])
        if all(p is not row for p in same_title):
            same_title.append(row)
    counts = UpsertCounts(inserted=len(created))
    for row in created.values():
        row.updated_at = now
    for row, snapshot in touched.values():
        if _snapshot(row) != snapshot:
            row.updated_at = now
            counts.updated += 1
        else:
            counts.unchanged += 1
    session.flush()
    return counts


def _existing_papers(
    session: Session, records: list[PaperRecord]
) -> tuple[dict[str, Paper], dict[str, list[Paper]]]:
    """Rows the records may match, in two queries per chunk of ids, not one per record."""
    source_ids = {r.source_id for r in records}
    # An arXiv record looks for the page placeholder of its title, which it will take over.
    source_ids |= {f"page:{title_key(r.title)}" for r in records if r.source != "page"}
    page_keys = {title_key(r.title) for r in records if r.source == "page"}
    by_source_id: dict[str, Paper] = {}
    for chunk in _chunks(sorted(source_ids)):
        for row in session.scalars(select(Paper).where(Paper.source_id.in_(chunk))):
            by_source_id[row.source_id] = row
    by_title_key: dict[str, list[Paper]] = {}
    for chunk in _chunks(sorted(page_keys)):
        query = select(Paper).where(Paper.title_key.in_(chunk)).order_by(Paper.id)
        for row in session.scalars(query):
            by_title_key.setdefault(row.title_key, []).append(row)
            by_source_id.setdefault(row.source_id, row)
    return by_source_id, by_title_key


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]


def _matching_row(
    record: PaperRecord,
    key: str,
    by_source_id: dict[str, Paper],
    by_title_key: dict[str, list[Paper]],
) -> Paper | None:
    row = by_source_id.get(record.source_id)
    if row is not None:
        return row
    if record.source == "page":
        return next((p for p in by_title_key.get(key, []) if p.source != "page"), None)
    placeholder = by_source_id.get(f"page:{key}")
    return placeholder if placeholder is not None and placeholder.source == "page" else None


def _merge(row: Paper, record: PaperRecord, key: str) -> None:
    """Fold a record into its row: richer or same-source data replaces, poorer fills gaps."""
    rank, row_rank = SOURCE_RANK.get(record.source, 1), SOURCE_RANK.get(row.source, 1)
    if rank > row_rank:
        if row.source == "page":
            row.source_id = record.source_id
        row.source = record.source
    _fill(row, record, key, replace=rank > row_rank or record.source == row.source)


def _fill(row: Paper, record: PaperRecord, key: str, replace: bool) -> None:
    for name in DESCRIPTIVE:
        value: object = getattr(record, name)
        if name == "authors":
            value = list(record.authors)
        if value in (None, "", []):
            continue
        if (replace or getattr(row, name) in (None, "", [])) and getattr(row, name) != value:
            setattr(row, name, value)
            if name == "title":
                row.title_key = key
    for name in ENGAGEMENT:
        value = getattr(record, name)
        if value is not None and getattr(row, name) != value:
            setattr(row, name, value)
    if row.title_key is None:
        row.title_key = key
    if row.abstract is None:
        row.abstract = ""
    if row.authors is None:
        row.authors = []


def _snapshot(row: Paper) -> dict[str, object]:
    return {name: getattr(row, name) for name in COMPARED}


# ---------------------------------------------------------------------------------------------
# The whole job


@dataclass
class SourceReport:
    """What became of one source: its counts, rejections and notes, or the error that stopped it."""

    origin: str
    format: str | None = None
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # records kept with a change (a cut)
    error: str | None = None  # one line: names the source, says what went wrong and what to do

    def line(self) -> str:
        if self.error:
            return f"FAILED {self.error}"
        changed = f", {len(self.notes)} changed" if self.notes else ""
        return (
            f"{self.origin} ({self.format}): {self.records} records, {self.inserted} inserted, "
            f"{self.updated} updated, {self.unchanged} unchanged, {len(self.rejected)} rejected"
            f"{changed}"
        )

    def details(self) -> list[str]:
        """One line per rejected record and per change, the longest lists summarised."""
        return [
            *_listed("rejected", self.rejected),
            *_listed("changed", self.notes),
        ]


def _listed(label: str, items: Sequence[Rejection | Note]) -> list[str]:
    lines = [f"  {label} {item}" for item in items[:REPORT_LIST_MAX]]
    if len(items) > REPORT_LIST_MAX:
        lines.append(f"  ... and {len(items) - REPORT_LIST_MAX:,} more {label}")
    return lines


@dataclass
class IngestReport:
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def inserted(self) -> int:
        return sum(s.inserted for s in self.sources)

    @property
    def updated(self) -> int:
        return sum(s.updated for s in self.sources)

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.sources)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sources)

    @property
    def rejected(self) -> list[Rejection]:
        return [r for s in self.sources for r in s.rejected]

    @property
    def notes(self) -> list[Note]:
        return [n for s in self.sources for n in s.notes]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.sources if s.error]

    @property
    def ok(self) -> bool:
        """True when every source could be read (rejected records alone do not count)."""
        return not self.errors

    def summary(self) -> str:
        """A few lines for the CLI: one per source, its rejections and changes, then totals."""
        lines: list[str] = []
        for source in self.sources:
            lines.append(source.line())
            lines.extend(source.details())
        changed = f", {len(self.notes)} changed" if self.notes else ""
        lines.append(
            f"total: {self.inserted} inserted, {self.updated} updated, {self.unchanged} "
            f"unchanged{changed}, {len(self.rejected)} rejected, {len(self.errors)} failed sources"
        )
        return "\n".join(lines)


def ingest(
    session: Session,
    sources: Sequence[str],
    fmt: str | None = None,
    timeout: float = 20.0,
    allow_private_networks: bool = False,
) -> IngestReport:
    """Read, parse and store each source, committing per source; a broken one is reported.

    `timeout` is each URL's whole deadline; `allow_private_networks` lets URLs reach loopback
    and private addresses (INGEST_ALLOW_PRIVATE_NETWORKS).
    """
    report = IngestReport()
    for origin in sources:
        source = SourceReport(origin=origin)
        report.sources.append(source)
        try:
            _ingest_source(session, source, fmt, timeout, allow_private_networks)
        except IngestError as exc:
            source.error = _error_line(str(exc))
        except SQLAlchemyError as exc:
            session.rollback()
            cause = getattr(exc, "orig", None) or exc
            source.error = _error_line(
                f"{origin}: the database refused its papers ({type(exc).__name__}: {cause}); "
                "check the database, then ingest this source again."
            )
        except Exception as exc:
            # Every known way an input can fail is handled above; this keeps the other
            # sources going if one finds a new way, and the log keeps the traceback.
            session.rollback()
            log.exception("ingest of %s failed unexpectedly", origin)
            source.error = _error_line(
                f"{origin}: could not be ingested ({type(exc).__name__}: {exc}); this is a "
                "bug in paper-digest: please report it with the source."
            )
        metrics.count_ingest_source(source)
    return report


def _ingest_source(
    session: Session, source: SourceReport, fmt: str | None, timeout: float,
    allow_private_networks: bool,
) -> None:
    """Read, parse and store one source into its report; errors name the source."""
    data = read_source(source.origin, timeout, allow_private_networks=allow_private_networks)
    try:
        parsed = parse(data, fmt, origin=_short_origin(source.origin))
    except IngestError as exc:
        raise IngestError(f"{source.origin}: {exc}") from None
    source.format, source.records = parsed.format, len(parsed.records)
    source.rejected, source.notes = parsed.rejected, parsed.notes
    counts = upsert_papers(session, parsed.records)
    session.commit()
    source.inserted, source.updated, source.unchanged = (
        counts.inserted, counts.updated, counts.unchanged
    )


def _error_line(message: str) -> str:
    """A source's error as one printable line of sane length."""
    line = " ".join(message.split())
    line = line if line.isprintable() else line.encode("unicode_escape").decode("ascii")
    return line if len(line) <= 500 else line[:497] + "..."


def _short_origin(origin: str) -> str:
    """A file's name (or a URL as given), to keep rejection messages readable."""
    return origin if "://" in origin else Path(origin).name


def load_sample_papers(session: Session) -> IngestReport:
    """Ingest the bundled demo corpus (a real papers page); safe to run again."""
    return ingest(session, [str(SAMPLE_PAPERS)], fmt="page")
