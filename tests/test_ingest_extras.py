"""What the daily-papers API adds to a paper (TL;DR, keywords, code, thumbnail, organization)
and the date a paper counts as new from: parsed from the real responses, checked like every
other field, stored, refreshed when the site revises them, on both databases."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.ingest import PaperRecord, parse, upsert_papers
from digest.ingest.records import MAX_KEYWORDS, MAX_SUMMARY_CHARS
from digest.models import Paper

JUNE = "hf_daily_papers_2026-06-12_30entries.json"
NOW = datetime(2026, 12, 6, 9, tzinfo=UTC)


def real(shared_dir: Path, name: str) -> bytes:
    return (shared_dir / "real-inputs" / name).read_bytes()


def by_id(records: list[PaperRecord]) -> dict[str, PaperRecord]:
    return {r.source_id: r for r in records}


def entry(n: int, **fields: object) -> dict[str, object]:
    """A daily-papers entry for paper 2607.0000<n>, with `fields` set on its paper."""
    paper: dict[str, object] = {
        "id": f"2607.{n:05d}", "title": f"Paper number {n}", "summary": "An abstract.",
        "authors": [{"name": "Ada Lovelace"}], "publishedAt": "2026-07-30T00:00:00.000Z",
        "submittedOnDailyAt": "2026-07-31T00:00:00.000Z", "upvotes": 3,
    }
    return {"paper": {**paper, **fields}, "numComments": 1}


def parsed(*entries: dict[str, object]) -> tuple[list[PaperRecord], list[str]]:
    result = parse(json.dumps(list(entries)).encode(), origin="api")
    assert result.rejected == []
    return result.records, [str(n) for n in result.notes]


def row(session: Session, source_id: str) -> Paper:
    return session.scalars(select(Paper).where(Paper.source_id == source_id)).one()


# --- parsing the real responses ------------------------------------------------------------------


def test_the_real_responses_give_tldr_keywords_code_thumbnail_and_organization(
    shared_dir: Path,
) -> None:
    result = parse(real(shared_dir, JUNE))
    records = by_id(result.records)

    caltech, psychometrics = records["2606.00467"], records["2606.12730"]
    assert caltech.ai_summary is not None
    assert caltech.ai_summary.startswith("Large language models exhibit limited ability")
    assert caltech.ai_keywords is not None and caltech.ai_keywords[:2] == (
        "zero-shot annotation", "LLM-as-a-judge")
    assert caltech.organization == "California institute of technology"
    assert (caltech.github_repo, caltech.stars) == (None, None)
    assert caltech.thumbnail == (
        "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2606.00467.png")
    assert psychometrics.github_repo == (
        "https://github.com/psychology-of-AI/Rethinking-Pyschometric-Eval-LLMs")
    assert (psychometrics.stars, psychometrics.organization) == (1, None)
    # Published on arXiv on 10 June, featured on 12 June: new from the day it was featured.
    assert psychometrics.published_at == datetime(2026, 6, 10, tzinfo=UTC)
    assert psychometrics.listed_at == datetime(2026, 6, 12, tzinfo=UTC)
    assert result.notes == []


def test_papers_the_site_gave_no_extras_have_none(shared_dir: Path) -> None:
    records = parse(real(shared_dir, "hf_daily_papers_2026-07-31_30entries.json")).records

    assert all(r.ai_summary is None and r.ai_keywords is None for r in records)
    assert sum(r.github_repo is not None for r in records) == 19
    assert sum(r.organization is not None for r in records) == 15


# --- hostile and broken values ------------------------------------------------------------------


def test_text_extras_are_cleaned_and_kept_as_text() -> None:
    (record,), notes = parsed(entry(
        1, ai_summary="A <b>TL;DR</b>\r\nBcc: victim@example.com\u202e\x00",
        ai_keywords=["  LoRA\n", "lora", "<script>x</script>", ""],
        organization={"name": "evil", "fullname": "Evil\r\nCorp <i>"},
    ))

    assert record.ai_summary == "A <b>TL;DR</b> Bcc: victim@example.com"
    assert record.ai_keywords == ("LoRA", "<script>x</script>")
    assert record.organization == "Evil Corp <i>"
    assert notes == []


@pytest.mark.parametrize(
    "link",
    ["javascript:alert(1)", "data:text/html,<script>x</script>", "//github.com/a/b",
     "https://github.com/a b", "java\tscript:alert(1)", "https://" + "a" * 2100],
)
def test_a_code_or_thumbnail_link_that_is_not_http_is_left_out_with_a_reason(link: str) -> None:
    (record,), notes = parsed(entry(1, githubRepo=link, githubStars=5, thumbnail=link))

    assert (record.github_repo, record.thumbnail, record.stars) == (None, None, 5)
    assert notes == [
        "api entry 1: github_repo dropped: not an http(s) URL of at most 2,000 characters",
        "api entry 1: thumbnail dropped: not an http(s) URL of at most 2,000 characters",
    ]


@pytest.mark.parametrize(
    ("fields", "kept", "note"),
    [
        ({"ai_summary": 42}, {"ai_summary": None},
         "paper.ai_summary left out: not a string but a number"),
        ({"githubRepo": {"url": "https://github.com/a/b"}}, {"github_repo": None},
         "paper.githubRepo left out: not a string but an object"),
        ({"ai_keywords": "LoRA, sparsity"}, {"ai_keywords": None},
         "paper.ai_keywords left out: not a list but a string"),
        ({"ai_keywords": ["LoRA", 7, None, ["x"]]}, {"ai_keywords": ("LoRA",)},
         "left out 3 of paper.ai_keywords that are not strings"),
        ({"ai_keywords": ["LoRA", "k" * 81]}, {"ai_keywords": ("LoRA",)},
         "left out 1 keyword(s) of over 80 characters"),
        ({"ai_keywords": [f"k{i}" for i in range(100)]},
         {"ai_keywords": tuple(f"k{i}" for i in range(MAX_KEYWORDS))},
         "kept the first 30 of 100 keywords"),
        ({"ai_summary": "word " * 400}, {},
         f"ai_summary cut from 1,999 to {MAX_SUMMARY_CHARS:,} characters"),
        ({"organization": ["MIT"]}, {"organization": None},
         "paper.organization left out: not a name but a list"),
        ({"organization": "x" * 300}, {}, "organization cut from 300 to 200 characters"),
        ({"submittedOnDailyAt": "yesterday"}, {"listed_at": None},
         "paper.submittedOnDailyAt 'yesterday' is not an ISO 8601 date; left out"),
    ],
)
def test_a_malformed_extra_is_left_out_with_a_reason_and_the_paper_kept(
    fields: dict[str, object], kept: dict[str, object], note: str
) -> None:
    (record,), notes = parsed(entry(1, **fields))

    assert record.title == "Paper number 1"
    for name, value in kept.items():
        assert getattr(record, name) == value
    assert len(notes) == 1 and note in notes[0]


def test_an_organization_object_without_a_name_is_no_organization() -> None:
    (record,), notes = parsed(entry(1, organization={"avatar": "https://x/a.png", "name": 3}))

    assert (record.organization, notes) == (None, [])


# --- storing and refreshing ------------------------------------------------------------------


def test_extras_are_stored_and_refreshed_when_the_site_revises_them(session: Session) -> None:
    (first,), _ = parsed(entry(1, ai_summary="First TL;DR.", ai_keywords=["LoRA"],
                               organization={"fullname": "MIT"}))
    upsert_papers(session, [first], now=NOW)
    session.commit()
    revised = replace(first, ai_summary="Better TL;DR.", ai_keywords=("LoRA", "sparsity"),
                      github_repo="https://github.com/a/b", stars=1234)

    counts = upsert_papers(session, [revised], now=NOW + timedelta(days=1))
    session.commit()

    paper = row(session, "2607.00001")
    assert counts.updated == 1
    assert (paper.ai_summary, paper.ai_keywords) == ("Better TL;DR.", ["LoRA", "sparsity"])
    assert (paper.github_repo, paper.stars, paper.organization) == (
        "https://github.com/a/b", 1234, "MIT")
    # A listing that no longer says something keeps what was known; the same listing twice
    # changes nothing.
    again = upsert_papers(session, [replace(revised, github_repo=None)], now=NOW)
    assert (again.updated, again.unchanged) == (0, 1)
    assert row(session, "2607.00001").github_repo == "https://github.com/a/b"


def test_an_arxiv_paper_takes_the_extras_of_its_daily_papers_entry(session: Session) -> None:
    arxiv = PaperRecord(
        source="arxiv", source_id="2607.00001", title="Paper number 1", abstract="arXiv's own.",
        authors=("Ada Lovelace",), url="https://arxiv.org/abs/2607.00001",
        pdf_url="https://arxiv.org/pdf/2607.00001",
        published_at=datetime(2026, 7, 30, tzinfo=UTC),
    )
    (daily,), _ = parsed(entry(1, ai_summary="TL;DR.", githubRepo="https://github.com/a/b"))

    upsert_papers(session, [arxiv], now=NOW)
    upsert_papers(session, [daily], now=NOW)
    session.commit()

    paper = row(session, "2607.00001")
    assert (paper.source, paper.abstract) == ("arxiv", "arXiv's own.")
    assert (paper.ai_summary, paper.github_repo) == ("TL;DR.", "https://github.com/a/b")


# --- the date a paper is new from ----------------------------------------------------------------


def test_a_paper_is_dated_by_its_listing_else_its_publication_else_not_at_all(
    session: Session,
) -> None:
    (listed,), _ = parsed(entry(1))
    published = replace(listed, source_id="2607.00002", title="Two", listed_at=None)
    undated = replace(listed, source_id="2607.00003", title="Three", listed_at=None,
                      published_at=None)

    upsert_papers(session, [listed, published, undated], now=NOW)
    session.commit()

    assert row(session, "2607.00001").listed_at == datetime(2026, 7, 31, tzinfo=UTC)
    assert row(session, "2607.00002").listed_at == datetime(2026, 7, 30, tzinfo=UTC)
    assert row(session, "2607.00003").listed_at is None  # new from when it was first seen


def test_a_paper_is_dated_once_and_an_undated_one_by_the_first_source_that_dates_it(
    session: Session,
) -> None:
    (record,), _ = parsed(entry(1, submittedOnDailyAt=None, publishedAt=None))
    upsert_papers(session, [record], now=NOW)
    session.commit()
    assert row(session, "2607.00001").listed_at is None

    old = replace(record, published_at=datetime(2019, 3, 3, tzinfo=UTC))
    upsert_papers(session, [old], now=NOW + timedelta(days=1))
    relisted = replace(record, listed_at=NOW + timedelta(days=2))
    upsert_papers(session, [relisted], now=NOW + timedelta(days=2))
    session.commit()

    paper = row(session, "2607.00001")
    assert paper.listed_at == datetime(2019, 3, 3, tzinfo=UTC)
    assert paper.first_seen_at == NOW


def test_a_paper_is_never_dated_after_it_was_first_seen(session: Session) -> None:
    # Seen undated on the 6th, then a source says it was listed on the 9th: new from the 6th,
    # so that it stays a candidate no longer than LOOKBACK_DAYS after it arrived.
    (record,), _ = parsed(entry(1, submittedOnDailyAt=None, publishedAt=None))
    upsert_papers(session, [record], now=NOW)
    later = replace(record, listed_at=NOW + timedelta(days=3))
    upsert_papers(session, [later], now=NOW + timedelta(days=3))
    session.commit()

    assert row(session, "2607.00001").listed_at == NOW


def test_a_date_ahead_of_the_clock_counts_from_now(session: Session) -> None:
    (record,), _ = parsed(entry(1))
    ahead = replace(record, listed_at=NOW + timedelta(days=1))

    upsert_papers(session, [ahead], now=NOW)
    session.commit()

    assert row(session, "2607.00001").listed_at == NOW
