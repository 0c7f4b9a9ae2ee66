"""The papers-page format: "title line, abstract line" pairs under a few header lines."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote_plus

from .records import (
    TITLE_MAX_CHARS,
    BadRecord,
    Entry,
    IngestError,
    PaperRecord,
    clean_text,
    has_words,
    quoted,
    tidy_paragraphs,
    title_key,
)

log = logging.getLogger(__name__)

# A papers page is title and abstract pairs; below this share of its lines it is some other text.
PAGE_MIN_ENTRY_SHARE = 0.5
# An abstract shorter than TITLE_MAX_CHARS must at least read as prose.
MIN_ABSTRACT_WORDS = 12


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


def parse_page(text: str, origin: str) -> list[Entry]:
    lines = [(n, " ".join(line.split())) for n, line in enumerate(clean_text(text).split("\n"), 1)]
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
            entries.append((where, f"title {quoted(title)} has no abstract after it"))
            i += 1
        else:
            try:
                entries.append((where, _page_record(title, body[i + 1][1])))
            except BadRecord as exc:
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
    if not has_words(title):
        raise BadRecord(f"title {quoted(title)} has no letters or digits")
    key = title_key(title)
    return PaperRecord(
        source="page",
        source_id=f"page:{key}",
        title=title,
        abstract=tidy_paragraphs(abstract),
        authors=(),
        url=f"https://arxiv.org/search/?query={quote_plus(title)}&searchtype=title",
        pdf_url=None,
        published_at=None,
    )

