"""Which format a document is in, and `parse`, which reads it with that format's reader and
brings every record within what may be stored.

A format is a module with one reader, `(text, origin) -> [(where, record or reason)]`:
`page`, `daily_papers`, `arxiv` and `feeds` (RSS 2.0 and Atom 1.0, arXiv's listings among
them); READERS names them."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from .arxiv import parse_arxiv
from .daily_papers import parse_daily_papers
from .feeds import parse_arxiv_listing, parse_feed
from .page import parse_page
from .records import (
    Entry,
    IngestError,
    Note,
    PaperRecord,
    ParseResult,
    Rejection,
    quoted,
    shown,
    within_limits,
)

log = logging.getLogger(__name__)

# An RSS 2.0 document's root, after any XML declaration and comments (arXiv's listings are RSS).
RSS_ROOT = re.compile(r"^(?:<\?[^>]*\?>\s*|<!--.*?-->\s*)*<rss[\s>]", re.S)

FORMATS = ("page", "daily-papers", "arxiv", "arxiv-listing", "feed")


def detect_format(data: bytes) -> str:
    """Name the format of a document: "arxiv" (Atom), "feed" (RSS), "daily-papers" (JSON) or
    "page" (text)."""
    text = _decode(data).lstrip()
    first = text[:1]
    if first == "<":
        return "feed" if RSS_ROOT.search(text[:4096]) else "arxiv"
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
        raise IngestError(f"unknown format {shown(fmt)}; use one of {', '.join(FORMATS)}.")
    result = ParseResult(records=[], rejected=[], format=fmt)
    first_at: dict[str, str] = {}
    for where, outcome in reader(text, origin):
        if isinstance(outcome, str):
            result.rejected.append(Rejection(where, outcome))
        elif outcome.source_id in first_at:
            result.rejected.append(Rejection(where, _duplicate(outcome, first_at)))
        else:
            first_at[outcome.source_id] = where
            record, cuts = within_limits(outcome)
            result.records.append(record)
            result.notes.extend(Note(where, cut) for cut in cuts)
    return result


def _duplicate(record: PaperRecord, first_at: dict[str, str]) -> str:
    paper = quoted(record.title) if record.source == "page" else f"paper {record.source_id}"
    return f"a second entry for {paper}, first at {first_at[record.source_id]}; the first is kept"



READERS: dict[str, Callable[[str, str], list[Entry]]] = {
    "page": parse_page,
    "daily-papers": parse_daily_papers,
    "arxiv": parse_arxiv,
    "arxiv-listing": parse_arxiv_listing,
    "feed": parse_feed,
}
