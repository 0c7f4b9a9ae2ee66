"""The delivery ledger at the size of a real day: batch statements find their rows by index."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from digest import db, ledger
from digest.models import Cadence, Delivery, DeliveryItem, Subscriber, delivery_period
from digest.settings import Settings

from .factories import make_delivery, make_paper, make_subscriber

DAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)


def message_id(subscriber_id: int, day: date) -> str:
    return f"<{subscriber_id}.{day}@x>"


def plan_all(
    session: Session, pairs: list[tuple[int, date]], period: Cadence = Cadence.DAILY
) -> list[tuple[int, date]]:
    due = [(sid, day, delivery_period(day, period)) for sid, day in pairs]
    return [pair for chunk in ledger.plan(session, due, message_id, NOW, 600) for pair in chunk]


def test_statistics_are_refreshed_once_a_plan_is_big_and_again_at_its_end(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One rule for the tick and for `digest run`: the first batches of a big day find
    statistics, and so do the last; a small plan leaves them as they are."""
    monkeypatch.setattr(ledger, "PLAN_CHUNK", 10)
    monkeypatch.setattr(ledger, "ANALYZE_AFTER_PLANNING", 10)
    refreshed_after: list[int] = []
    with db.session_scope(sqlite_settings) as s:
        monkeypatch.setattr(ledger, "refresh_statistics", lambda _: refreshed_after.append(
            s.scalar(select(func.count()).select_from(Delivery))))
        s.execute(insert(Subscriber), [{"email": f"r{i}@example.org", "status": "active",
                                        "time_zone": "UTC", "send_hour": 7,
                                        "papers_per_digest": 5, "paused": False}
                                       for i in range(30)])
        assert len(plan_all(s, [(sid, DAY) for sid in range(1, 6)])) == 5
        assert refreshed_after == []
        assert len(plan_all(s, [(sid, DAY) for sid in range(1, 31)])) == 25
        # Rows after each refresh: 5 of the first chunk's were planned before, so the plan
        # reached ten with its second chunk.
        assert refreshed_after == [20, 30]


def test_a_big_planned_day_keeps_batch_statements_on_the_subscriber_index(
    sqlite_settings: Settings,
) -> None:
    """Without statistics SQLite scanned the whole day's rows in every batch statement."""
    n = ledger.ANALYZE_AFTER_PLANNING + 200
    with db.session_scope(sqlite_settings) as s:
        s.execute(insert(Subscriber), [{"email": f"r{i}@example.org", "status": "active",
                                        "time_zone": "UTC", "send_hour": 7,
                                        "papers_per_digest": 5, "paused": False} for i in range(n)])
        pairs = [(sid, DAY) for sid in range(1, n + 1)]
        planned = plan_all(s, pairs)
        assert len(planned) == n
        plan = s.execute(text(
            "EXPLAIN QUERY PLAN UPDATE deliveries SET status = 'sending' "
            "WHERE digest_date = :day AND claim_token = 't' AND subscriber_id IN (1, 2, 3) "
            "AND status = 'claimed'"), {"day": DAY.isoformat()}).all()
        # A window's mark joins its rows (a JSON parameter) to the day's by subscriber.
        statement = ledger._statements("sqlite")["start_sending"]
        compiled = statement.compile(dialect=s.get_bind().dialect)
        window = '[{"subscriber_id": 2, "sending": true, "paper_count": 3}]'
        window_plan = s.connection().exec_driver_sql(
            f"EXPLAIN QUERY PLAN {compiled}",
            tuple({"day": DAY.isoformat(), "token": "t", "rows": window, "now": None,
                   "lease": None, "claimed": "claimed", "sending": "sending",
                   "sent": "sent"}[name] for name in compiled.positiontup or ())).all()
    assert "subscriber_id=?" in str(plan), plan
    assert "SEARCH deliveries USING INDEX" in str(window_plan), window_plan
    assert "(subscriber_id=? AND digest_date=?)" in str(window_plan), window_plan


def test_attached_items_are_stored_once_per_subscriber_and_paper(session: Session) -> None:
    subscriber = make_subscriber(session, topics="LoRA")
    papers = [make_paper(session, title=f"Paper {n}") for n in range(3)]
    delivery = make_delivery(session, subscriber, DAY)
    hostile = "matches: “β” 'quoted' \\ back, {braces}, :colon %(pct)s"
    items = [{"delivery_id": delivery.id, "subscriber_id": subscriber.id, "paper_id": p.id,
              "rank": rank, "score": 0.5 + rank, "why": hostile}
             for rank, p in enumerate(papers[:2], start=1)]
    ledger.attach_items(session, items)
    again = [*items[1:], {**items[0], "paper_id": papers[2].id, "rank": 3}]
    ledger.attach_items(session, again)  # a duplicate is skipped, the new one is added
    rows = session.execute(select(DeliveryItem.paper_id, DeliveryItem.rank, DeliveryItem.score,
                                  DeliveryItem.why).order_by(DeliveryItem.rank)).all()
    assert rows == [(papers[0].id, 1, 1.5, hostile), (papers[1].id, 2, 2.5, hostile),
                    (papers[2].id, 3, 1.5, hostile)]


def test_taking_over_an_abandoned_claim_drops_only_its_papers(session: Session) -> None:
    # A worker that died after attaching papers left them on its claim; whoever claims the
    # row after the lease clears them, and a first claim touches nobody's papers.
    from datetime import timedelta

    first, second = (make_subscriber(session, email=f"{n}@example.org") for n in ("a", "b"))
    paper = make_paper(session, title="A paper")
    pairs = [(first.id, DAY), (second.id, DAY)]
    plan_all(session, pairs)
    [dead] = ledger.claim(session, DAY, [first.id], "dead", NOW, 60)
    ledger.attach_items(session, [{"delivery_id": dead.delivery_id, "subscriber_id": first.id,
                                   "paper_id": paper.id, "rank": 1, "score": 1.0, "why": ""}])
    session.commit()
    assert ledger.claim(session, DAY, [first.id], "early", NOW + timedelta(seconds=30), 60) == []
    fresh = ledger.claim(session, DAY, [second.id], "other", NOW + timedelta(seconds=30), 60)
    assert [c.subscriber_id for c in fresh] == [second.id]
    assert session.scalars(select(DeliveryItem.subscriber_id)).all() == [first.id]
    later = NOW + timedelta(seconds=61)
    [taken] = ledger.claim(session, DAY, [first.id], "next", later, 60)
    assert taken == dead  # the same row, now ours
    assert session.scalars(select(DeliveryItem.subscriber_id)).all() == []


def test_a_composed_batch_is_claimed_as_what_each_row_became(session: Session) -> None:
    """One statement takes a composed batch's planned rows straight into SENDING, claimed,
    SKIPPED or FAILED (with why), with each digest's contents; a row another attempt holds
    live is left to it, and nothing of it changes."""
    from digest.models import DeliveryStatus as S

    readers = [make_subscriber(session, email=f"c{n}@example.org") for n in range(5)]
    ids = [r.id for r in readers]
    plan_all(session, [(sid, DAY) for sid in ids])
    [held] = ledger.claim(session, DAY, [ids[4]], "other", NOW, 600)
    rows = [ledger.ComposedRow(ids[0], S.SENDING, 10, False),
            ledger.ComposedRow(ids[1], S.CLAIMED, 7, True),
            ledger.ComposedRow(ids[2], S.SKIPPED),
            ledger.ComposedRow(ids[3], S.FAILED, error="not sendable: a bad address"),
            ledger.ComposedRow(ids[4], S.SENDING, 3, False)]
    taken = ledger.claim_composed(session, DAY, "ours", NOW, 600, rows)
    session.commit()
    assert [c.subscriber_id for c in taken] == ids[:4]
    session.expire_all()
    got = {d.subscriber_id: d for d in session.scalars(select(Delivery))}
    assert [got[sid].status for sid in ids] == [S.SENDING, S.CLAIMED, S.SKIPPED, S.FAILED,
                                                S.CLAIMED]
    assert [got[sid].claim_token for sid in ids] == ["ours"] * 4 + ["other"]
    assert (got[ids[0]].paper_count, got[ids[0]].trending_fallback) == (10, False)
    assert (got[ids[1]].paper_count, got[ids[1]].trending_fallback) == (7, True)
    assert got[ids[3]].error == "not sendable: a bad address"
    assert got[ids[4]].id == held.delivery_id and got[ids[4]].paper_count == 0
    assert all(got[sid].attempts == 1 for sid in ids)
    assert ledger.claim_composed(session, DAY, "again", NOW, 600, rows) == []  # all taken


def test_the_database_keeps_one_digest_per_subscriber_per_week_and_per_day(
    session: Session,
) -> None:
    """A weekly reader's second row in an ISO week is refused, whichever day it names, as is
    a second row on one day whatever its cadence; other readers and weeks are not held up."""
    a, b = make_subscriber(session), make_subscriber(session)
    session.commit()
    monday, sunday = date(2026, 11, 23), date(2026, 11, 29)
    assert plan_all(session, [(a.id, monday)], Cadence.WEEKLY) == [(a.id, monday)]
    assert plan_all(session, [(a.id, sunday), (b.id, sunday)], Cadence.WEEKLY) == [(b.id, sunday)]
    assert plan_all(session, [(a.id, monday)]) == []  # daily now, but that day has its digest
    next_monday = date(2026, 11, 30)
    assert plan_all(session, [(a.id, next_monday)], Cadence.WEEKLY) == [(a.id, next_monday)]
    periods = session.execute(select(Delivery.subscriber_id, Delivery.period)
                              .order_by(Delivery.id)).all()
    assert [tuple(row) for row in periods] == [
        (a.id, "2026-W48"), (b.id, "2026-W48"), (a.id, "2026-W49")]
