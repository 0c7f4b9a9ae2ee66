"""Weekly readers beside daily ones: due on their weekday at their local hour only, one digest
per ISO week whatever fails or changes, the week's papers and never one twice, and batches
mixing both cadences in a constant number of queries. Both databases."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from digest.models import Cadence, Delivery, DeliveryItem, DeliveryStatus, Subscriber
from digest.pipeline import plan_due_batches, run_day
from digest.settings import Settings
from digest.tools.bench import counted_statements

from .factories import make_paper, make_subscriber
from .test_pipeline_schedule import run_ticks, ticks

MONDAY = date(2026, 11, 23)
WEDNESDAY = 2


@pytest.fixture
def week_settings(settings: Settings) -> Settings:
    return replace(settings, min_relevance=0.0, lookback_days=3, mail_backend="console")


def reader(
    session: Session, cadence: Cadence = Cadence.WEEKLY, weekday: int = WEDNESDAY,
    zone: str = "UTC", hour: int = 7, papers: int = 5,
) -> int:
    sub = make_subscriber(session, topics="LoRA", time_zone=zone, send_hour=hour,
                          trending_fallback=True, papers_per_digest=papers)
    sub.cadence, sub.send_weekday = cadence, weekday
    session.flush()
    return sub.id


def papers_every_day(session: Session, start: date, days: int) -> None:
    for n in range(days):
        seen = datetime.combine(start + timedelta(days=n), time(1), timezone.utc)
        make_paper(session, title=f"LoRA paper of day {n}", first_seen_at=seen)


def sent_rows(session: Session, sid: int) -> list[tuple[date, str]]:
    session.expire_all()
    return sorted(session.execute(
        select(Delivery.digest_date, Delivery.period)
        .where(Delivery.subscriber_id == sid, Delivery.status == DeliveryStatus.SENT)
    ).all())


def test_a_weekly_reader_is_sent_on_their_weekday_at_their_local_hour_only(
    session: Session, week_settings: Settings
) -> None:
    papers_every_day(session, MONDAY - timedelta(days=7), 22)
    weekly = reader(session, zone="Europe/Paris")  # Wednesdays, 07:00 Paris (06:00 UTC)
    daily = reader(session, Cadence.DAILY, zone="Europe/Paris")
    session.commit()

    sent = run_ticks(week_settings, ticks(datetime(2026, 11, 23, tzinfo=timezone.utc), 24 * 14,
                                          every_minutes=60))

    weekly_sent = [(now, day) for now, sid, day in sent if sid == weekly]
    assert [day for _, day in weekly_sent] == [date(2026, 11, 25), date(2026, 12, 2)]
    assert all(now.astimezone(ZoneInfo("Europe/Paris")).hour == 7 for now, _ in weekly_sent)
    assert len([1 for _, sid, _ in sent if sid == daily]) == 14
    assert sent_rows(session, weekly) == [(date(2026, 11, 25), "2026-W48"),
                                          (date(2026, 12, 2), "2026-W49")]


@pytest.mark.parametrize(("start", "hour", "local_hour"), [
    # New York, Sunday 2026-03-08: 02:00 EST jumps to 03:00 EDT; sent right after the gap.
    (datetime(2026, 3, 8, 5, tzinfo=timezone.utc), 2, 3),
    # New York, Sunday 2026-11-01: 01:xx happens twice; sent once, at the first.
    (datetime(2026, 11, 1, 4, tzinfo=timezone.utc), 1, 1),
])
def test_a_dst_sunday_sends_a_sunday_reader_once_at_their_local_hour(
    session: Session, week_settings: Settings, start: datetime, hour: int, local_hour: int
) -> None:
    make_paper(session, first_seen_at=start - timedelta(hours=1))
    sid = reader(session, weekday=6, zone="America/New_York", hour=hour)
    session.commit()
    sent = run_ticks(week_settings, ticks(start - timedelta(days=1), 24 * 3))
    assert [(s, d) for _, s, d in sent] == [(sid, start.date())]
    local = sent[0][0].astimezone(ZoneInfo("America/New_York"))
    assert (local.weekday(), local.hour, local.minute) == (6, local_hour, 0)


def test_a_crashed_weekly_send_is_retried_that_day_and_the_week_still_gets_one(
    session: Session, week_settings: Settings
) -> None:
    papers_every_day(session, MONDAY - timedelta(days=7), 20)
    sid = reader(session)
    session.commit()
    wednesday = datetime(2026, 11, 25, 7, tzinfo=timezone.utc)
    [(day, ids)] = plan_due_batches(week_settings, wednesday)
    assert (day, ids) == (date(2026, 11, 25), [sid])
    # The worker died holding the claim; its lease ran out.
    session.execute(update(Delivery).values(claim_token="dead",
                                            lease_until=wednesday - timedelta(hours=1)))
    session.commit()
    sent = run_ticks(week_settings, ticks(wednesday + timedelta(minutes=15), 2))
    assert [(s, d) for _, s, d in sent] == [(sid, date(2026, 11, 25))]
    # The reader moves their day to Friday mid-week: this week already had its digest.
    session.execute(update(Subscriber).values(send_weekday=4))
    session.commit()
    later = run_ticks(week_settings, ticks(wednesday + timedelta(hours=2), 24 * 9, 60))
    assert [d for _, _, d in later] == [date(2026, 12, 4)]  # next week's Friday
    assert sent_rows(session, sid) == [(date(2026, 11, 25), "2026-W48"),
                                       (date(2026, 12, 4), "2026-W49")]


def test_a_weekly_digest_carries_the_weeks_papers_and_never_one_twice(
    session: Session, week_settings: Settings
) -> None:
    sid = reader(session, weekday=MONDAY.weekday(), papers=20)
    daily = reader(session, Cadence.DAILY, papers=20)
    papers_every_day(session, MONDAY - timedelta(days=6), 7)  # Tuesday to Monday
    session.commit()
    first = run_day(week_settings, MONDAY)
    assert len(first.sent) == 2
    carried = dict(Counter(session.scalars(select(DeliveryItem.subscriber_id))))
    # The week's seven papers for the weekly reader; the daily one's window is LOOKBACK_DAYS.
    assert carried == {sid: 7, daily: 3}

    papers_every_day(session, MONDAY + timedelta(days=1), 7)
    session.commit()
    assert run_day(week_settings, MONDAY + timedelta(days=3)).sent == [
        s.email for s in session.scalars(select(Subscriber).where(Subscriber.id == daily))]
    run_day(week_settings, MONDAY + timedelta(days=7))
    items = session.scalars(select(DeliveryItem.paper_id)
                            .where(DeliveryItem.subscriber_id == sid)).all()
    assert len(items) == len(set(items)) == 14
    assert [d for d, _ in sent_rows(session, sid)] == [MONDAY, MONDAY + timedelta(days=7)]


def test_switching_cadence_mid_week_sends_at_most_one_a_day_and_one_a_week(
    session: Session, week_settings: Settings
) -> None:
    """Daily to weekly on the weekday after today's daily: nothing more today (one a day), the
    weekly digest next week carries what the daily ones did not. Weekly to daily the day after
    the weekly one: daily digests from that day, each with only papers not yet sent."""
    papers_every_day(session, MONDAY - timedelta(days=3), 20)
    to_weekly = reader(session, Cadence.DAILY)
    to_daily = reader(session, weekday=MONDAY.weekday())
    session.commit()
    monday = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)
    run_ticks(week_settings, ticks(monday, 24, 60))
    session.execute(update(Subscriber).where(Subscriber.id == to_weekly)
                    .values(cadence=Cadence.WEEKLY, send_weekday=1))
    session.execute(update(Subscriber).where(Subscriber.id == to_daily)
                    .values(cadence=Cadence.DAILY))
    session.commit()
    run_ticks(week_settings, ticks(monday + timedelta(days=1), 24 * 7 + 1, 60))  # to Dec 1

    assert sent_rows(session, to_weekly) == [
        (date(2026, 11, 23), "2026-11-23"), (date(2026, 11, 24), "2026-W48"),
        (date(2026, 12, 1), "2026-W49")]
    assert [d for d, _ in sent_rows(session, to_daily)] == [
        MONDAY + timedelta(days=n) for n in range(9)]
    items = session.scalars(select(DeliveryItem.paper_id)).all()
    per_reader = Counter(session.execute(
        select(DeliveryItem.subscriber_id, DeliveryItem.paper_id)).all())
    assert set(per_reader.values()) == {1} and items


def test_batches_mixing_daily_and_weekly_readers_cost_a_constant_number_of_queries(
    session: Session, week_settings: Settings
) -> None:
    papers_every_day(session, MONDAY - timedelta(days=6), 14)
    for n in range(60):
        reader(session, Cadence.WEEKLY if n % 2 else Cadence.DAILY, weekday=MONDAY.weekday())
    session.commit()
    def statements_for(batch_size: int, day: date) -> int:
        with counted_statements(week_settings.database_url) as count:
            report = run_day(replace(week_settings, batch_size=batch_size), day)
        assert len(report.sent) == 60
        return int(count.value)

    small = statements_for(10, MONDAY)  # 6 mixed batches of 10
    large = statements_for(60, MONDAY + timedelta(days=7))  # 1 mixed batch of 60
    per_batch = (small - large) / 5
    assert large < small and per_batch <= 9, per_batch


def test_the_cli_adds_a_weekly_reader_with_a_longer_digest_and_shows_it(
    settings: Settings,
) -> None:
    from click.testing import CliRunner

    from digest.cli import main

    env = {"DATABASE_URL": settings.database_url}
    runner = CliRunner()
    added = runner.invoke(main, ["subscribers", "add", "ada@example.org", "--topics", "LoRA",
                                 "--cadence", "weekly", "--weekday", "Fri"], env=env)
    assert added.exit_code == 0, added.output
    shown = runner.invoke(main, ["subscribers", "show", "ada@example.org"], env=env)
    assert "Cadence:      weekly on fri" in shown.output and "20 papers" in shown.output
    wrong = runner.invoke(main, ["subscribers", "add", "bo@example.org", "--topics", "LoRA",
                                 "--weekday", "someday"], env=env)
    assert wrong.exit_code == 2 and "'someday' is not one of 'mon'" in wrong.output
