"""Ingest: turn papers-listing pages, daily-papers JSON and arXiv Atom feeds into `Paper` rows.

Everything downstream (scoring, rendering, sending) trusts the `papers` table, so this is the one
place that reads the outside world's formats, with all their quirks, and decides what a paper is.
The story is top-down: read a source (file or http(s) URL, size-capped) → detect its format →
parse it into plain `PaperRecord`s (a bad record is rejected with a reason, a bad document is
refused whole) → upsert them, so that running the same ingest twice changes nothing and one paper
seen on a page, on the daily-papers site and on arXiv ends up as one row.

Text is stored as text: escaping is the renderer's job. Here we only remove control characters and
tidy whitespace.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Paper

FORMATS = ("page", "daily-papers", "arxiv")
MAX_BYTES = 50 * 1024 * 1024
SAMPLE_PAPERS = Path(__file__).resolve().parent / "sample_data" / "papers.txt"

# A title longer than this is an abstract that lost its title (real titles stay under ~200).
TITLE_MAX_CHARS = 300
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


@dataclass
class ParseResult:
    records: list[PaperRecord]
    rejected: list[Rejection]
    format: str


class _BadRecord(ValueError):
    """Raised inside a record parser; becomes a `Rejection`, never escapes this module."""


# ---------------------------------------------------------------------------------------------
# Read


def read_source(path_or_url: str, timeout: float, max_bytes: int = MAX_BYTES) -> bytes:
    """Return the bytes of a local file or an http(s) URL, at most `max_bytes` of them."""
    scheme = urlsplit(path_or_url).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(path_or_url, timeout, max_bytes)
    if "://" in path_or_url:
        raise IngestError(
            f"{path_or_url}: only http:// and https:// URLs can be fetched; "
            "give a local file by its path instead."
        )
    return _read_file(Path(path_or_url), max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    if path.is_dir():
        raise IngestError(f"{path}: is a directory; give the files in it instead.")
    if not path.is_file():
        raise IngestError(f"{path}: no such file; check the path.")
    if path.stat().st_size > max_bytes:
        raise IngestError(f"{path}: larger than {max_bytes:,} bytes; is this the right file?")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only; urllib alone would also follow one to ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise IngestError(f"{req.full_url}: redirected to {newurl}, which is not http(s).")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # Built by hand so that no file:, ftp: or data: handler is installed at all.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _HTTPOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
    ):
        opener.add_handler(handler)
    return opener


def _fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "paper-digest ingest"})
    try:
        with _opener().open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise IngestError(f"{url}: the response is larger than {max_bytes:,} bytes.")
            data: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise IngestError(
            f"{url}: the server answered HTTP {exc.code} {exc.reason}; check the URL."
        ) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise IngestError(f"{url}: no answer within {timeout:g} s; try again later.") from exc
        raise IngestError(f"{url}: cannot be fetched ({exc.reason}).") from exc
    except TimeoutError as exc:
        raise IngestError(f"{url}: no answer within {timeout:g} s; try again later.") from exc
    except OSError as exc:
        raise IngestError(f"{url}: the download failed ({exc}).") from exc
    if len(data) > max_bytes:
        raise IngestError(f"{url}: the response is larger than {max_bytes:,} bytes.")
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
    """Parse a whole document into records and rejections; `fmt` None means detect it."""
    text = _decode(data)
    fmt = fmt or detect_format(data)
    if fmt == "page":
        records, rejected = _parse_page(text, origin)
    elif fmt == "daily-papers":
        records, rejected = _parse_daily_papers(text, origin)
    elif fmt == "arxiv":
        records, rejected = _parse_arxiv(text, origin)
    else:
        raise IngestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return ParseResult(records=records, rejected=rejected, format=fmt)


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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """Unify line ends and drop control characters other than newline and tab."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


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


def _utc(value: object, name: str) -> datetime | None:
    """An ISO 8601 date as an aware UTC datetime; None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRecord(f"{name} is not a date string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _BadRecord(f"{name} {value!r} is not an ISO 8601 date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _arxiv_id(value: str) -> str | None:
    """The arXiv id without its version, from "2607.01234v2" or "cond-mat/0412498v1"."""
    match = ARXIV_ID.match(value.strip())
    return match.group("id") if match else None


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


def _parse_page(text: str, origin: str) -> tuple[list[PaperRecord], list[Rejection]]:
    lines = [(n, " ".join(line.split())) for n, line in enumerate(_clean(text).split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line]
    body = _without_page_header(lines)
    records: list[PaperRecord] = []
    rejected: list[Rejection] = []
    i = 0
    while i < len(body):
        n, title = body[i]
        where = f"{origin} line {n}"
        if len(title) > TITLE_MAX_CHARS:
            rejected.append(Rejection(where, "an abstract with no title line before it"))
            i += 1
            continue
        if i + 1 == len(body):
            rejected.append(Rejection(where, f"title {_quote(title)} has no abstract after it"))
            break
        abstract = body[i + 1][1]
        # A short "abstract" followed by a long line is really the next title.
        if len(abstract) <= TITLE_MAX_CHARS and _looks_like_abstract(body, i + 2):
            rejected.append(Rejection(where, f"title {_quote(title)} has no abstract after it"))
            i += 1
            continue
        try:
            records.append(_page_record(title, abstract))
        except _BadRecord as exc:
            rejected.append(Rejection(where, str(exc)))
        i += 2
    return records, rejected


def _without_page_header(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop the page's header lines; unglue "Subscribe" from the first title when stuck to it."""
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
    return body


def _looks_like_abstract(body: list[tuple[int, str]], i: int) -> bool:
    return i < len(body) and len(body[i][1]) > TITLE_MAX_CHARS


def _quote(title: str) -> str:
    return repr(title if len(title) <= 80 else title[:77] + "...")


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


def _parse_daily_papers(text: str, origin: str) -> tuple[list[PaperRecord], list[Rejection]]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
            "is the download complete?"
        ) from exc
    if not isinstance(entries, list):
        raise IngestError(
            f"expected a JSON list of daily-papers entries, got {_json_kind(entries)}."
        )
    if entries and not any(isinstance(e, dict) and "paper" in e for e in entries):
        raise IngestError(
            f"none of the {len(entries)} JSON entries has a \"paper\" object; "
            "this is not a daily-papers API response."
        )
    records: list[PaperRecord] = []
    rejected: list[Rejection] = []
    for position, entry in enumerate(entries, 1):
        try:
            records.append(_daily_paper_record(entry))
        except _BadRecord as exc:
            rejected.append(Rejection(f"{origin} entry {position}", str(exc)))
    return records, rejected


def _json_kind(value: object) -> str:
    """JSON's name for a parsed value's type ("an object", "a list"), for error messages."""
    names: dict[type, str] = {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _daily_paper_record(entry: object) -> PaperRecord:
    if not isinstance(entry, dict):
        raise _BadRecord(f"not an object but {_json_kind(entry)}")
    paper = entry.get("paper")
    if not isinstance(paper, dict):
        raise _BadRecord('missing "paper" object')
    raw_id = paper.get("id")
    if not raw_id:
        raise _BadRecord("missing paper.id")
    if not isinstance(raw_id, str) or not (arxiv_id := _arxiv_id(raw_id)):
        raise _BadRecord(f"paper.id {raw_id!r} is not an arXiv id")
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
        upvotes=_json_count(paper, "upvotes", "paper.upvotes"),
        comments=_json_count(entry, "numComments", "numComments"),
        stars=_json_count(paper, "githubStars", "paper.githubStars"),
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
    return tuple(_one_line(name) for name in names if isinstance(name, str) and name.strip())


def _json_count(obj: dict[str, Any], key: str, name: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BadRecord(f"{name} is not a count: {value!r}")
    return value


# --- arxiv: the arXiv API's Atom feed --------------------------------------------------------


def _parse_arxiv(text: str, origin: str) -> tuple[list[PaperRecord], list[Rejection]]:
    feed = _atom_feed(text)
    records: list[PaperRecord] = []
    rejected: list[Rejection] = []
    for position, entry in enumerate(feed.iterfind(f"{ATOM}entry"), 1):
        try:
            records.append(_arxiv_record(entry))
        except _BadRecord as exc:
            rejected.append(Rejection(f"{origin} entry {position}", str(exc)))
    return records, rejected


def _atom_feed(text: str) -> Element:
    """The feed element, parsed with DTDs and entities refused (no billion laughs, no XXE)."""
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise IngestError(
            f"the XML has a <!DOCTYPE> or entity declarations ({type(exc).__name__}); arXiv "
            "feeds never do, and they are refused so that entity expansion (billion laughs) "
            "and external entities (XXE) cannot run."
        ) from exc
    except ParseError as exc:
        raise IngestError(f"invalid XML ({exc}); is the download complete?") from exc
    if root.tag != f"{ATOM}feed":
        raise IngestError(
            f"the XML is not an Atom feed (its root is <{_local(root.tag)}>); "
            "expected an arXiv API response."
        )
    # arXiv reports a bad query as a feed with a single "Error" entry.
    for entry in root.iterfind(f"{ATOM}entry"):
        if "/api/errors" in (entry.findtext(f"{ATOM}id") or ""):
            message = _one_line(entry.findtext(f"{ATOM}summary") or "no details")
            raise IngestError(f"arXiv answered with an error: {message}")
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _arxiv_record(entry: Element) -> PaperRecord:
    raw_id = (entry.findtext(f"{ATOM}id") or "").strip()
    if not raw_id:
        raise _BadRecord("missing <id>")
    path = urlsplit(raw_id).path
    arxiv_id = _arxiv_id(path.partition("/abs/")[2]) if "/abs/" in path else None
    if not arxiv_id:
        raise _BadRecord(f"<id> {raw_id!r} is not an arXiv abstract URL")
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


def _arxiv_links(entry: Element) -> tuple[str | None, str | None]:
    """The abstract and PDF links, told apart by attributes or, failing those, by URL path.

    Some real responses carry bare `<link href="https://arxiv.org/pdf/..."/>` with no rel,
    type or title, so the path is the one signal every variant has.
    """
    abs_url = pdf_url = None
    for link in entry.iterfind(f"{ATOM}link"):
        href = _one_line(link.get("href") or "")
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue
        if parts.hostname == "arxiv.org" or parts.hostname.endswith(".arxiv.org"):
            href = "https" + href[len(parts.scheme):]
        is_pdf = link.get("title") == "pdf" or link.get("type") == "application/pdf"
        if (is_pdf or parts.path.startswith("/pdf/")) and pdf_url is None:
            pdf_url = href
        elif (link.get("rel") == "alternate" or parts.path.startswith("/abs/")) and not abs_url:
            abs_url = href
    return abs_url, pdf_url


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
    """What became of one source: counts, rejected records, or the error that stopped it."""

    origin: str
    format: str | None = None
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None  # names the source, says what went wrong and what to do

    def line(self) -> str:
        if self.error:
            return f"FAILED {self.error}"
        return (
            f"{self.origin} ({self.format}): {self.records} records, {self.inserted} inserted, "
            f"{self.updated} updated, {self.unchanged} unchanged, {len(self.rejected)} rejected"
        )


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
    def errors(self) -> list[str]:
        return [s.error for s in self.sources if s.error]

    @property
    def ok(self) -> bool:
        """True when every source could be read (rejected records alone do not count)."""
        return not self.errors

    def summary(self) -> str:
        """A few lines for the CLI: one per source, its rejections, then the totals."""
        lines: list[str] = []
        for source in self.sources:
            lines.append(source.line())
            lines.extend(f"  rejected {r}" for r in source.rejected)
        lines.append(
            f"total: {self.inserted} inserted, {self.updated} updated, {self.unchanged} "
            f"unchanged, {len(self.rejected)} rejected, {len(self.errors)} failed sources"
        )
        return "\n".join(lines)


def ingest(
    session: Session, sources: Sequence[str], fmt: str | None = None, timeout: float = 20.0
) -> IngestReport:
    """Read, parse and store each source, committing per source; a broken one is reported."""
    report = IngestReport()
    for origin in sources:
        source = SourceReport(origin=origin)
        report.sources.append(source)
        try:
            data = read_source(origin, timeout)
        except IngestError as exc:
            source.error = str(exc)  # read errors name the file or URL already
            continue
        try:
            parsed = parse(data, fmt, origin=_short_origin(origin))
        except IngestError as exc:
            source.error = f"{origin}: {exc}"
            continue
        source.format, source.records, source.rejected = (
            parsed.format, len(parsed.records), parsed.rejected
        )
        try:
            counts = upsert_papers(session, parsed.records)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        source.inserted, source.updated, source.unchanged = (
            counts.inserted, counts.updated, counts.unchanged
        )
    return report


def _short_origin(origin: str) -> str:
    """A file's name (or a URL as given), to keep rejection messages readable."""
    return origin if "://" in origin else Path(origin).name


def load_sample_papers(session: Session) -> IngestReport:
    """Ingest the bundled demo corpus (a real papers page); safe to run again."""
    return ingest(session, [str(SAMPLE_PAPERS)], fmt="page")
