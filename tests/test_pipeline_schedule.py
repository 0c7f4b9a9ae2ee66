"""Planning by local send hour: time zones, DST switches, missed hours, two beats, takeovers."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from digest import db
from digest.mail.console import ConsoleSender
from digest.models import Delivery, DeliveryStatus, Subscriber
from digest.pipeline import plan_due_batches, process_batch, send_planned_batch
from digest.prepare import prepared_day
from digest.settings import Settings

from .factories import make_paper, make_subscriber


def ticks(start: datetime, hours: int, every_minutes: int = 15) -> list[datetime]:
    return [start + timedelta(minutes=m) for m in range(0, hours * 60, every_minutes)]


def run_ticks(settings: Settings, moments: list[datetime]) -> list[tuple[datetime, int, date]]:
    """Simulate beat: plan at each moment and send what was planned; return (tick, sub, day)."""
    sent = []
    for now in moments:
        for day, ids in list(plan_due_batches(settings, now)):
            with db.session_scope(settings) as session:
                prepared = prepared_day(session, settings, day)
                sender = ConsoleSender(settings, io.StringIO())
                process_batch(session, settings, prepared, ids, sender)
            sent += [(now, sid, day) for sid in ids]
    return sent


@pytest.fixture
def tz_settings(settings: Settings) -> Settings:
    return replace(settings, min_relevance=0.0, lookback_days=30)


def subscribe(session: Session, zone: str, hour: int) -> int:
    sub = make_subscriber(session, topics="LoRA", time_zone=zone, send_hour=hour,
                          trending_fallback=True)
    return sub.id


def test_each_zone_is_sent_at_its_local_hour_once_per_local_day(
    session: Session, tz_settings: Settings
) -> None:
    start = datetime(2026, 11, 22, 0, tzinfo=timezone.utc)
    make_paper(session, first_seen_at=start - timedelta(days=1))
    zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Pacific/Kiritimati",
             "Asia/Kolkata"]
    subs = {subscribe(session, zone, 7): zone for zone in zones}
    session.commit()

    sent = run_ticks(tz_settings, ticks(start, 48))

    per_day = Counter((sid, day) for _, sid, day in sent)
    assert all(n == 1 for n in per_day.values())
    for now, sid, day in sent:
        local = now.astimezone(ZoneInfo(subs[sid]))
        assert local.date() == day
        if now == start:
            assert local.hour >= 7  # the first tick catches up an hour that had passed
        else:
            assert (local.hour, local.minute) == (7, 0), (subs[sid], local)
    # Two full local days each in 48 hours, bar the zones whose second day ends after it.
    days = Counter(sid for _, sid, _ in sent)
    assert all(2 <= n <= 3 for n in days.values()), days
    # Kolkata is UTC+5:30: its 07:00 falls on a :30 tick, which a 15-minute beat catches.
    assert {subs[sid] for _, sid, _ in sent} == set(zones)


def test_spring_forward_the_missing_hour_is_sent_right_after(
    session: Session, tz_settings: Settings
) -> None:
    # New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT. A 02:00 subscriber gets it at 03:00.
    start = datetime(2026, 3, 8, 5, tzinfo=timezone.utc)  # 00:00 EST
    make_paper(session, first_seen_at=start - timedelta(hours=1))
    sid = subscribe(session, "America/New_York", 2)
    session.commit()
    sent = run_ticks(tz_settings, ticks(start, 24))
    assert [(s, d) for _, s, d in sent] == [(sid, date(2026, 3, 8))]
    local = sent[0][0].astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (3, 0)


def test_fall_back_the_repeated_hour_sends_once(session: Session, tz_settings: Settings) -> None:
    # Paris, 2026-10-25: 03:00 CEST falls back to 02:00 CET, so 02:xx happens twice.
    start = datetime(2026, 10, 24, 22, tzinfo=timezone.utc)  # 00:00 CEST
    make_paper(session, first_seen_at=start - timedelta(hours=1))
    sid = subscribe(session, "Europe/Paris", 2)
    session.commit()
    sent = run_ticks(tz_settings, ticks(start, 24))
    assert [(s, d) for _, s, d in sent] == [(sid, date(2026, 10, 25))]


def test_an_hour_missed_while_down_is_sent_later_that_day_not_skipped_not_doubled(
    session: Session, tz_settings: Settings
) -> None:
    make_paper(session, first_seen_at=datetime(2026, 11, 22, tzinfo=timezone.utc))
    sid = subscribe(session, "Europe/Paris", 7)  # 06:00 UTC
    session.commit()
    # Down from 05:00 to 13:00 UTC: the first tick after is 13:00.
    moments = [datetime(2026, 11, 23, 4, 45, tzinfo=timezone.utc),
               *ticks(datetime(2026, 11, 23, 13, tzinfo=timezone.utc), 6)]
    sent = run_ticks(tz_settings, moments)
    assert [(s, d) for _, s, d in sent] == [(sid, date(2026, 11, 23))]
    assert sent[0][0].hour == 13


def test_two_beats_plan_each_subscriber_once(session: Session, tz_settings: Settings) -> None:
    make_paper(session, first_seen_at=datetime(2026, 11, 22, tzinfo=timezone.utc))
    for _ in range(5):
        subscribe(session, "UTC", 7)
    session.commit()
    now = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)
    first = list(plan_due_batches(tz_settings, now))
    second = list(plan_due_batches(tz_settings, now))
    assert sum(len(ids) for _, ids in first) == 5 and second == []


def test_a_duplicate_batch_task_sends_nothing(session: Session, tz_settings: Settings) -> None:
    make_paper(session, first_seen_at=datetime(2026, 11, 22, tzinfo=timezone.utc))
    for _ in range(3):
        subscribe(session, "UTC", 7)
    session.commit()
    [(day, ids)] = plan_due_batches(tz_settings, datetime(2026, 11, 23, 7, tzinfo=timezone.utc))
    console = replace(tz_settings, mail_backend="console")
    first = send_planned_batch(console, day, ids)
    again = send_planned_batch(console, day, ids)
    assert len(first.sent) == 3 and again.sent == []


def test_an_abandoned_claim_is_taken_over_and_an_abandoned_send_is_in_doubt(
    session: Session, tz_settings: Settings
) -> None:
    make_paper(session, first_seen_at=datetime(2026, 11, 22, tzinfo=timezone.utc))
    a, b = subscribe(session, "UTC", 7), subscribe(session, "UTC", 7)
    session.commit()
    now = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)
    [_] = plan_due_batches(tz_settings, now)
    # A worker claimed both, marked `a` SENDING, then died (its lease is in the past).
    past = now - timedelta(hours=1)
    session.execute(update(Delivery).where(Delivery.subscriber_id == a).values(
        status=DeliveryStatus.SENDING, claim_token="dead", lease_until=past))
    session.execute(update(Delivery).where(Delivery.subscriber_id == b).values(
        claim_token="dead", lease_until=past))
    session.commit()
    # Over SMTP with no journal of the dead attempt on this host, nothing can tell.
    smtp = replace(tz_settings, mail_backend="smtp")
    [(_, replanned)] = plan_due_batches(smtp, now + timedelta(minutes=15))
    assert replanned == [b]
    session.expire_all()
    statuses = dict(session.execute(select(Subscriber.id, Delivery.status).join(
        Delivery, Delivery.subscriber_id == Subscriber.id)).all())
    assert statuses[a] is DeliveryStatus.IN_DOUBT


def test_a_big_plan_hands_out_its_first_batches_committed_before_the_rest_is_planned(
    session: Session, tz_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digest import ledger

    monkeypatch.setattr(ledger, "PLAN_CHUNK", 10)
    monkeypatch.setattr(ledger, "ANALYZE_AFTER_PLANNING", 10)  # refreshed as a big day is
    make_paper(session, first_seen_at=datetime(2026, 11, 22, tzinfo=timezone.utc))
    ids = [subscribe(session, "UTC", 7) for _ in range(25)]
    session.commit()
    now = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)
    settings = replace(tz_settings, batch_size=4)

    batches = plan_due_batches(settings, now)
    day, first = next(batches)
    # A worker given the first batch finds its rows; the last chunk is not planned yet.
    with db.session_scope(settings) as other:
        rows = set(other.scalars(select(Delivery.subscriber_id)))
    assert first == ids[:4] and rows == set(ids[:10])
    rest = list(batches)

    assert [b for _, b in rest] == [ids[4:8], ids[8:10], ids[10:14], ids[14:18], ids[18:20],
                                    ids[20:24], ids[24:25]]
    assert {d for d, _ in rest} == {day} == {date(2026, 11, 23)}
    assert list(plan_due_batches(settings, now)) == []  # planned once
