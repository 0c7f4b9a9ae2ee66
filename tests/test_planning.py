"""The tick's planning: PostgreSQL plans inside the database, SQLite through Python; both plan
the same rows, and neither sends more statements for more subscribers."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select

from digest import db, ledger
from digest.mail import message_id_for
from digest.models import Cadence, Delivery, DeliveryStatus, Subscriber, delivery_period
from digest.pipeline import plan_due_batches
from digest.settings import Settings
from digest.tools.bench import counted_statements

from .conftest import _truncate_postgres, make_settings

# A Wednesday, 12:30 UTC: Paris is at 13:30, New York at 07:30, Kolkata at 18:00, and
# Auckland (01:30) and Kiritimati (02:30) already on Thursday.
NOW = datetime(2026, 12, 9, 12, 30, tzinfo=timezone.utc)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Pacific/Kiritimati", "Pacific/Auckland",
         "Asia/Kolkata", "Not/A_Zone"]


def subscribers() -> list[dict[str, Any]]:
    """Every zone x send hour x cadence (a weekly reader on today's weekday or another),
    and a few who are not mailable."""
    rows: list[dict[str, Any]] = []
    for zone in ZONES:
        for hour in (0, 7, 12, 23):
            for cadence, weekday in ((Cadence.DAILY, 0), (Cadence.WEEKLY, 2),
                                     (Cadence.WEEKLY, 3)):
                rows.append({"time_zone": zone, "send_hour": hour, "cadence": cadence,
                             "send_weekday": weekday, "status": "active", "paused": False})
    rows += [{"time_zone": "UTC", "send_hour": 0, "cadence": Cadence.DAILY, "send_weekday": 0,
              "status": status, "paused": paused}
             for status, paused in (("unsubscribed", False), ("active", True), ("pending", False))]
    return [{**row, "id": k, "email": f"r{k}@example.org", "papers_per_digest": 5}
            for k, row in enumerate(rows, start=1)]


def earlier_deliveries(settings: Settings) -> list[dict[str, Any]]:
    """Rows from before this tick, for readers due now: sent today (13, Paris), live and stale
    claims (16, Paris; 1, UTC), a weekly reader's digest of this week sent on Monday (2, UTC)
    and yesterday's failure (25, New York)."""
    today, lease = date(2026, 12, 9), NOW + timedelta(minutes=10)

    def row(sid: int, day: date, status: DeliveryStatus, lease_until: datetime,
            cadence: Cadence = Cadence.DAILY) -> dict[str, Any]:
        return {"subscriber_id": sid, "digest_date": day, "period": delivery_period(day, cadence),
                "message_id": message_id_for(settings, "digest", sid, day), "status": status,
                "paper_count": 0, "trending_fallback": False,
                "claimed_at": NOW - timedelta(hours=2), "lease_until": lease_until, "attempts": 1}

    return [row(13, today, DeliveryStatus.SENT, lease),
            row(16, today, DeliveryStatus.CLAIMED, lease),
            row(1, today, DeliveryStatus.CLAIMED, NOW - timedelta(hours=1)),  # stale
            row(2, date(2026, 12, 7), DeliveryStatus.SENT, lease, Cadence.WEEKLY),
            row(25, date(2026, 12, 8), DeliveryStatus.FAILED, lease)]


@pytest.fixture
def both(sqlite_settings: Settings, postgres_url: str, tmp_path: Path) -> list[Settings]:
    _truncate_postgres(postgres_url)
    return [sqlite_settings, make_settings(tmp_path / "pg", database_url=postgres_url)]


def fill(settings: Settings) -> None:
    with db.session_scope(settings) as session:
        session.execute(insert(Subscriber), subscribers())
        session.execute(insert(Delivery), earlier_deliveries(settings))
        session.commit()


def the_plan(settings: Settings) -> tuple[list[tuple[date, list[int]]], set[tuple[Any, ...]]]:
    """The batches the tick hands out, and every delivery row afterwards."""
    batches = list(plan_due_batches(settings, NOW))
    with db.session_scope(settings) as session:
        rows = session.execute(select(
            Delivery.subscriber_id, Delivery.digest_date, Delivery.period, Delivery.message_id,
            Delivery.status, Delivery.claim_token, Delivery.lease_until, Delivery.attempts,
        )).all()
    utc = timezone.utc  # SQLite hands back naive datetimes
    return batches, {(*r[:6], r.lease_until.replace(tzinfo=r.lease_until.tzinfo or utc),
                      r.attempts) for r in rows}


def test_postgresql_plans_in_the_database_the_same_rows_as_sqlite_through_python(
    both: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "PLAN_CHUNK", 10)  # pages end inside runs of due readers
    plans = []
    for settings in both:
        fill(settings)
        plans.append(the_plan(settings))
    (sqlite_batches, sqlite_rows), (pg_batches, pg_rows) = plans

    # The same readers handed out once each, for the same days (cut into batches where each
    # side's pages end: SQLite's count due readers, PostgreSQL's subscribers).
    handed_out = [sorted((day, sid) for day, ids in batches for sid in ids)
                  for batches in (sqlite_batches, pg_batches)]
    assert handed_out[0] == handed_out[1] and len(set(handed_out[1])) == len(handed_out[1])
    assert pg_rows == sqlite_rows
    planned = {sid for _, ids in pg_batches for sid in ids}
    # Sent today, claimed by a live attempt, a weekly reader's week already sent: not planned.
    assert planned.isdisjoint({13, 16, 2})
    # The stale claim is planned again; yesterday's failure does not stop today's digest.
    assert {1, 25} <= planned
    # Auckland's readers are due on their Thursday: a Wednesday reader not at all.
    auckland = [s for s in subscribers() if s["time_zone"] == "Pacific/Auckland"]
    assert {(d, s["send_weekday"]) for s in auckland for d, ids in pg_batches
            if s["id"] in ids and s["cadence"] is Cadence.WEEKLY} == {(date(2026, 12, 10), 3)}
    # An unknown zone is read as UTC; no one unsubscribed, paused or pending is planned.
    assert planned.isdisjoint({s["id"] for s in subscribers()
                               if s["status"] != "active" or s["paused"]})
    # Message ids as `message_id_for` makes them, whichever side computed them.
    assert all(mid == message_id_for(both[1], "digest", sid, day)
               for sid, day, _, mid, *_ in pg_rows)


def test_planning_statements_do_not_grow_with_the_subscribers_of_a_page(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of 40 readers or of 400 costs the same statements; each further page a few."""
    monkeypatch.setattr(ledger, "PLAN_CHUNK", 400)
    monkeypatch.setattr(ledger, "ANALYZE_AFTER_PLANNING", 10**9)  # not part of the question
    costs = []
    for n in (40, 400, 2000):
        with db.session_scope(settings) as session:
            session.execute(delete(Delivery))
            session.execute(delete(Subscriber))
            session.execute(insert(Subscriber), [
                {"id": k, "email": f"r{k}@example.org", "time_zone": "UTC", "send_hour": 0,
                 "status": "active", "papers_per_digest": 5} for k in range(1, n + 1)])
            session.commit()
        with counted_statements(settings.database_url) as count:
            planned = sum(len(ids) for _, ids in plan_due_batches(settings, NOW))
        costs.append((planned, count.value))
    (n40, one_page), (n400, same_page), (n2000, five_pages) = costs
    assert (n40, n400, n2000) == (40, 400, 2000)
    assert same_page == one_page
    assert five_pages - one_page <= 4 * 4  # a page: its statement, a boundary, SET, COMMIT
