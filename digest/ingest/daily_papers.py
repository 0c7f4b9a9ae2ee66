"""The daily-papers format: the papers site's JSON list of {"paper": {...}, "numComments": ...}."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from .records import (
    BadRecord,
    Entry,
    IngestError,
    PaperRecord,
    has_words,
    json_kind,
    one_line,
    parse_arxiv_id,
    parse_count,
    parse_utc,
    shown,
    tidy_paragraphs,
)

log = logging.getLogger(__name__)

def parse_daily_papers(text: str, origin: str) -> list[Entry]:
    entries = _load_json(text)
    if not isinstance(entries, list):
        raise IngestError(
            f"expected a JSON list of daily-papers entries, got {json_kind(entries)}."
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
        except BadRecord as exc:
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
        raise BadRecord(f"not an object but {json_kind(entry)}")
    paper = entry.get("paper")
    if not isinstance(paper, dict):
        raise BadRecord('missing "paper" object')
    raw_id = paper.get("id")
    if raw_id is None or raw_id == "":
        raise BadRecord("missing paper.id")
    if not isinstance(raw_id, str) or not (arxiv_id := parse_arxiv_id(raw_id)):
        raise BadRecord(f"paper.id {shown(raw_id)} is not an arXiv id")
    title = one_line(_json_text(paper, entry, "title"))
    if not has_words(title):
        raise BadRecord(f"paper {arxiv_id} has an empty title")
    dropped: list[str] = []
    return PaperRecord(
        source="daily-papers",
        source_id=arxiv_id,
        title=title,
        abstract=tidy_paragraphs(_json_text(paper, entry, "summary")),
        authors=_json_authors(paper.get("authors")),
        url=f"https://huggingface.co/papers/{arxiv_id}",
        pdf_url=f"https://arxiv.org/pdf/{arxiv_id}",
        published_at=parse_utc(paper.get("publishedAt") or entry.get("publishedAt"), "publishedAt"),
        upvotes=parse_count(paper.get("upvotes"), "paper.upvotes"),
        comments=parse_count(entry.get("numComments"), "numComments"),
        stars=parse_count(paper.get("githubStars"), "paper.githubStars"),
        listed_at=_listing_date(paper.get("submittedOnDailyAt"), dropped),
        ai_summary=_extra_text(paper, entry, "ai_summary", dropped),
        ai_keywords=_keywords(paper.get("ai_keywords"), dropped),
        github_repo=_extra_text(paper, entry, "githubRepo", dropped),
        thumbnail=_extra_text(paper, entry, "thumbnail", dropped),
        organization=_organization(paper, entry, dropped),
        dropped=tuple(dropped),
    )


def _json_text(paper: dict[str, Any], entry: dict[str, Any], name: str) -> str:
    """paper.<name>, else the entry's top-level copy of it; must be a string when present."""
    value = paper.get(name)
    if value is None:
        value = entry.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"paper.{name} is not a string but {json_kind(value)}")
    return value


# The extras below are optional: a malformed one is left out with its reason (a note), and the
# paper is kept, as it would be without it.


def _listing_date(value: object, dropped: list[str]) -> datetime | None:
    """The day the site featured the paper (`submittedOnDailyAt`): what makes it new there."""
    try:
        return parse_utc(value, "paper.submittedOnDailyAt")
    except BadRecord as exc:
        dropped.append(f"{exc}; left out, so the paper is dated by its publication")
        return None


def _extra_text(
    paper: dict[str, Any], entry: dict[str, Any], name: str, dropped: list[str]
) -> str | None:
    """paper.<name>, else the entry's, on one line; None when absent, empty or not a string."""
    value = paper.get(name)
    if value is None:
        value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        dropped.append(f"paper.{name} left out: not a string but {json_kind(value)}")
        return None
    return one_line(value) or None


def _keywords(value: object, dropped: list[str]) -> tuple[str, ...] | None:
    """paper.ai_keywords: the strings of a list, each on one line, once each whatever its case."""
    if value is None:
        return None
    if not isinstance(value, list):
        dropped.append(f"paper.ai_keywords left out: not a list but {json_kind(value)}")
        return None
    strings = [one_line(k) for k in value if isinstance(k, str)]
    if len(strings) < len(value):
        dropped.append(f"left out {len(value) - len(strings)} of paper.ai_keywords that "
                       "are not strings")
    seen: set[str] = set()
    keywords = []
    for keyword in strings:
        if keyword and keyword.casefold() not in seen:
            seen.add(keyword.casefold())
            keywords.append(keyword)
    return tuple(keywords)


def _organization(paper: dict[str, Any], entry: dict[str, Any], dropped: list[str]) -> str | None:
    """The authors' organization's full name (else its short name), from paper.organization or
    the entry's; the API gives an object {"name", "fullname", "avatar"}."""
    value = paper.get("organization")
    if value is None:
        value = entry.get("organization")
    if isinstance(value, dict):
        value = next((value[k] for k in ("fullname", "name") if isinstance(value.get(k), str)
                      and one_line(value[k])), None)
    if value is None:
        return None
    if not isinstance(value, str):
        dropped.append(f"paper.organization left out: not a name but {json_kind(value)}")
        return None
    return one_line(value) or None


def _json_authors(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRecord(f"paper.authors is not a list but {json_kind(value)}")
    names = (a.get("name") if isinstance(a, dict) else a for a in value)
    return tuple(
        name for name in (one_line(n) for n in names if isinstance(n, str)) if name
    )

