"""Which papers are the day's candidates: new by the date their source gives (its listing, else
the publication), by when they were first seen only when no source dates them; on both
databases, through the whole day to a real SMTP server where a reader would see it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from digest import prepare
from digest.ingest import PaperRecord, parse, upsert_papers
from digest.models import DeliveryItem, Paper
from digest.pipeline import run_day
from digest.settings import Settings

from .conftest import lexical_only
from .factories import make_paper, make_subscriber
from .smtp_server import SMTPServer

DAY = date(2026, 11, 23)
MORNING = datetime(2026, 11, 23, 6, tzinfo=UTC)
OLD_FEED = "arxiv_old-format_2016_au-del_maestro_10entries.xml"
OLD_DAILY = "hf_daily_papers_2026-06-12_30entries.json"


@pytest.fixture
def mail_settings(settings: Settings, smtp_server: SMTPServer) -> Settings:
    return lexical_only(replace(settings, mail_backend="smtp", smtp_host="127.0.0.1",
                                smtp_port=smtp_server.port, min_relevance=0.0))


def daily_entry(n: int, published: datetime | None, listed: datetime | None) -> dict[str, object]:
    paper: dict[str, object] = {
        "id": f"2611.{n:05d}", "title": f"Low-rank adaptation, part {n}",
        "summary": "We study low-rank adaptation (LoRA) of large language models.",
        "authors": [{"name": "Ada Lovelace"}], "upvotes": 12,
        "publishedAt": published.isoformat() if published else None,
        "submittedOnDailyAt": listed.isoformat() if listed else None,
    }
    return {"paper": paper, "numComments": 1}


def daily(*entries: dict[str, object]) -> list[PaperRecord]:
    return parse(json.dumps(list(entries)).encode()).records


def candidates(session: Session, settings: Settings, day: date = DAY) -> list[str]:
    index = prepare.prepare_day(session, settings, day).index
    return sorted(paper.title for paper in index.papers)


def test_a_first_ingest_of_old_papers_sends_none_of_them_as_new(
    session: Session, mail_settings: Settings, smtp_server: SMTPServer, shared_dir: Path
) -> None:
    # Everything in a 2016 arXiv feed and a June daily-papers listing, first seen this morning.
    records = [*parse((shared_dir / "real-inputs" / OLD_FEED).read_bytes()).records,
               *parse((shared_dir / "real-inputs" / OLD_DAILY).read_bytes()).records]
    upsert_papers(session, records, now=MORNING)
    make_subscriber(session, email="ada@example.org", topics="Luttinger liquid, helium",
                    trending_fallback=True)
    make_subscriber(session, email="grace@example.org", topics="LLM agents",
                    trending_fallback=True)
    session.commit()

    report = run_day(mail_settings, DAY)

    assert len(records) == 40 and candidates(session, mail_settings) == []
    assert report.sent == [] and smtp_server.messages == []
    assert session.scalar(select(func.count()).select_from(DeliveryItem)) == 0


def test_a_paper_published_today_and_first_seen_today_is_new(
    session: Session, mail_settings: Settings, smtp_server: SMTPServer
) -> None:
    upsert_papers(session, daily(daily_entry(1, MORNING - timedelta(hours=4), None)),
                  now=MORNING)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()

    report = run_day(mail_settings, DAY)

    assert report.sent == ["ada@example.org"]
    (message,) = smtp_server.by_recipient()["ada@example.org"]
    body = message.get_body(("plain",))
    assert body is not None
    assert "Low-rank adaptation, part 1" in body.get_content()
    assert "Published" not in body.get_content()  # a new paper just shows its date


def test_a_paper_the_site_features_today_is_new_and_says_when_it_was_published(
    session: Session, mail_settings: Settings, smtp_server: SMTPServer
) -> None:
    featured = daily_entry(1, datetime(2026, 3, 3, tzinfo=UTC), MORNING - timedelta(hours=6))
    upsert_papers(session, daily(featured), now=MORNING)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()

    run_day(mail_settings, DAY)

    (message,) = smtp_server.by_recipient()["ada@example.org"]
    text_part, html_part = message.get_body(("plain",)), message.get_body(("html",))
    assert text_part is not None and html_part is not None
    assert "12 upvotes · 1 comment · Published 3 Mar 2026" in text_part.get_content()
    assert "Published 3 Mar 2026" in html_part.get_content()


def test_a_paper_without_a_date_is_new_from_when_it_was_first_seen(
    session: Session, settings: Settings
) -> None:
    undated = daily(daily_entry(1, None, None), daily_entry(2, None, None))
    upsert_papers(session, undated[:1], now=MORNING)
    upsert_papers(session, undated[1:], now=MORNING - timedelta(days=10))
    session.commit()

    assert candidates(session, settings) == ["Low-rank adaptation, part 1"]
    assert candidates(session, settings, DAY + timedelta(days=3)) == []


def test_a_keyword_weighs_the_same_in_the_days_idf_whichever_side_of_the_window(
    session: Session, settings: Settings
) -> None:
    """The archive before the window feeds the day's IDF: its papers' keywords count there as
    a day paper's do, so a word that only keywords carry is as common as a word of the text
    that the same papers carry (here "gflownet" and "quokka")."""
    for n, seen in enumerate([MORNING - timedelta(days=30)] * 4 + [MORNING]):
        paper = make_paper(session, title=f"Sampler study {n}", abstract="A quokka sampler.",
                           first_seen_at=seen, published_at=seen)
        paper.ai_keywords = ["GFlowNet"]
    make_paper(session, title="Unrelated", abstract="Graphs.", first_seen_at=MORNING)
    session.commit()

    day = prepare.prepare_day(session, lexical_only(settings), DAY)

    assert len(day.index.papers) == 2  # the archive's four are not candidates ...
    idf, vocabulary = day.index.vectorizer.idf_, day.index.vectorizer.vocabulary_
    # ... but their keywords count in the IDF as their text does.
    assert idf[vocabulary["gflownet"]] == pytest.approx(idf[vocabulary["quokka"]])


def test_a_paper_counts_from_its_date_only_once_it_has_arrived(
    session: Session, settings: Settings
) -> None:
    # Published on the 23rd, first seen on the 25th: not a candidate of the 23rd, whose digest
    # could not have carried it (a catch-up run of a past day sends only what had arrived).
    records = daily(daily_entry(1, datetime(2026, 11, 23, 12, tzinfo=UTC), None))
    upsert_papers(session, records, now=datetime(2026, 11, 25, 6, tzinfo=UTC))
    session.commit()

    assert candidates(session, settings) == []
    assert candidates(session, settings, date(2026, 11, 25)) == ["Low-rank adaptation, part 1"]


def test_a_paper_is_never_sent_twice_while_it_stays_new(
    session: Session, mail_settings: Settings, smtp_server: SMTPServer
) -> None:
    upsert_papers(session, daily(daily_entry(1, MORNING, MORNING)), now=MORNING)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    run_day(mail_settings, DAY)
    # The next day the site lists it again and a second paper arrives: only that one is sent.
    tomorrow = MORNING + timedelta(days=1)
    upsert_papers(session, daily(daily_entry(1, MORNING, tomorrow),
                                 daily_entry(2, tomorrow, tomorrow)), now=tomorrow)
    session.commit()

    run_day(mail_settings, DAY + timedelta(days=1))

    sent = [m.get_body(("plain",)) for m in smtp_server.by_recipient()["ada@example.org"]]
    assert len(sent) == 2
    second = sent[1].get_content() if sent[1] is not None else ""
    assert "part 2" in second and "part 1" not in second


def test_the_candidate_query_is_an_index_range_scan(session: Session, settings: Settings) -> None:
    start, end = prepare.day_bounds(DAY, settings.lookback_days)
    query = select(Paper.id).where(prepare.candidates_of(start, end))
    compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    if session.get_bind().dialect.name == "sqlite":
        plan = " ".join(str(row[-1]) for row in session.execute(
            text(f"EXPLAIN QUERY PLAN {compiled}")))
    else:  # on a small table the planner would rather scan; ask whether it could use the index
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = " ".join(row[0] for row in session.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_papers_new_at" in plan
