"""Storing records: one row per paper however many sources list it, and running the same
ingest twice changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import Paper
from .records import PaperRecord, title_key

log = logging.getLogger(__name__)

# Keeps each IN (...) list well under every backend's bound-parameter limit.
LOOKUP_CHUNK = 500


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
# Only the daily-papers site gives these, and it revises them (a TL;DR rewritten, code added).
EXTRAS = ("ai_summary", "ai_keywords", "github_repo", "thumbnail", "organization")
COMPARED = ("source", "source_id", "title_key", "listed_at", *DESCRIPTIVE, *ENGAGEMENT, *EXTRAS)


def upsert_papers(
    session: Session, records: Iterable[PaperRecord], now: datetime | None = None
) -> UpsertCounts:
    """Insert new papers and merge known ones, counting rows; the caller commits.

    One paper is one row: a record matches a row by source id, an arXiv record also claims a
    page row of the same title (giving it the real id and links), and a page record merges into
    any known paper of the same title. Engagement numbers and the daily-papers extras follow the
    newest data that has them; `first_seen_at` is never touched, and `listed_at` is set once, by
    the first record that dates the paper. Existing rows are looked up for the whole input at once.
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
            _fill(row, record, key, now, replace=True)
            session.add(row)
            created[id(row)] = row
        else:
            if id(row) not in created:
                touched.setdefault(id(row), (row, _snapshot(row)))
            _merge(row, record, key, now)
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


def _merge(row: Paper, record: PaperRecord, key: str, now: datetime) -> None:
    """Fold a record into its row: richer or same-source data replaces, poorer fills gaps."""
    rank, row_rank = SOURCE_RANK.get(record.source, 1), SOURCE_RANK.get(row.source, 1)
    if rank > row_rank:
        if row.source == "page":
            row.source_id = record.source_id
        row.source = record.source
    _fill(row, record, key, now, replace=rank > row_rank or record.source == row.source)


def _fill(row: Paper, record: PaperRecord, key: str, now: datetime, replace: bool) -> None:
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
    _follow_newest(row, record)
    _date(row, record, now)
    if row.title_key is None:
        row.title_key = key
    if row.abstract is None:
        row.abstract = ""
    if row.authors is None:
        row.authors = []


def _follow_newest(row: Paper, record: PaperRecord) -> None:
    """Engagement and the daily-papers extras: what the record says replaces what the row had;
    what it leaves out (None) keeps it."""
    for name in (*ENGAGEMENT, *EXTRAS):
        value = getattr(record, name)
        if isinstance(value, tuple):
            value = list(value)
        if value is not None and getattr(row, name) != value:
            setattr(row, name, value)


def _date(row: Paper, record: PaperRecord, now: datetime) -> None:
    """Date a paper once: by its source's listing, else its publication. Until a source dates
    it, `listed_at` stays empty and the paper counts as new from when it was first seen
    (`models.paper_new_at`).

    Set once, as `first_seen_at` is: a paper published long ago does not become new because
    another source lists it today. Never later than its first sighting (nor now), so a paper is
    new on the day it arrives, and a candidate for at most LOOKBACK_DAYS after it was first
    seen, which retention's "never twice" floor counts on.
    """
    dated = record.listed_at or record.published_at
    if row.listed_at is None and dated is not None:
        row.listed_at = min(dated, now, row.first_seen_at or now)


def _snapshot(row: Paper) -> dict[str, object]:
    return {name: getattr(row, name) for name in COMPARED}

