"""Retention on both databases: old rows go, recent ones and what "never twice" needs stay."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import retention
from digest.cli import main
from digest.embeddings import EmbeddingStore, paper_store_dir
from digest.models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    EventKind,
    FeedbackKind,
    Paper,
    PaperFeedback,
    SignupRequest,
    Subscriber,
    SubscriberEvent,
    WebhookEvent,
)
from digest.pipeline import run_day
from digest.score import CandidatePaper
from digest.settings import Settings, SettingsError

from .factories import make_delivery, make_paper, make_subscriber

NOW = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
TODAY = NOW.date()
TABLES = (Delivery, DeliveryItem, PaperFeedback, SubscriberEvent, SignupRequest, WebhookEvent,
          Paper)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


def dated(n: int) -> date:
    return TODAY - timedelta(days=n)


@dataclass
class History:
    """Row ids that a prune with the default settings must delete, and those it must keep."""

    gone: dict[type, set[int]]
    kept: dict[type, set[int]]


def carry(session: Session, subscriber: Subscriber, day: date, *papers: Paper) -> Delivery:
    delivery = make_delivery(session, subscriber, day)
    delivery.claimed_at = delivery.sent_at = datetime.combine(day, time(7), tzinfo=timezone.utc)
    for rank, paper in enumerate(papers, start=1):
        session.add(DeliveryItem(delivery_id=delivery.id, subscriber_id=subscriber.id,
                                 paper_id=paper.id, rank=rank, score=0.5, why="matches: LoRA"))
    session.flush()
    return delivery


def event(session: Session, subscriber: Subscriber, kind: EventKind, at: datetime) -> int:
    row = SubscriberEvent(subscriber_id=subscriber.id, kind=kind, source="web", created_at=at)
    session.add(row)
    session.flush()
    return row.id


def webhook(session: Session, event_id: str, at: datetime) -> int:
    row = WebhookEvent(provider="generic", event_id=event_id, kind="bounce", received_at=at)
    session.add(row)
    session.flush()
    return row.id


def feedback(session: Session, subscriber: Subscriber, paper: Paper, at: datetime) -> int:
    row = PaperFeedback(subscriber_id=subscriber.id, paper_id=paper.id, kind=FeedbackKind.CLICK,
                        created_at=at)
    session.add(row)
    session.flush()
    return row.id


def signup_request(session: Session, at: datetime) -> int:
    row = SignupRequest(email="new@example.org", address="new@example.org", topics="LoRA",
                        time_zone="UTC", send_hour=7, papers_per_digest=10, source="web",
                        created_at=at)
    session.add(row)
    session.flush()
    return row.id


def make_history(session: Session) -> History:
    """A year of a small list's rows, each on one side of the default retention settings."""
    ada, bob = make_subscriber(session), make_subscriber(session)
    ada.profile.updated_at = days_ago(400)
    bob.profile.updated_at = days_ago(1)  # bob changed his topics yesterday
    ancient, old, recent = (make_paper(session, first_seen_at=days_ago(n)) for n in (201, 71, 6))
    gone: dict[type, set[int]] = {t: set() for t in TABLES}
    kept: dict[type, set[int]] = {t: set() for t in TABLES}

    d_ancient = carry(session, ada, dated(200), ancient)  # beyond deliveries' 180 days
    d_old = carry(session, ada, dated(70), old)  # beyond items' 60 days, within 180
    d_recent = carry(session, ada, dated(5), recent)
    gone[Delivery] |= {d_ancient.id}
    kept[Delivery] |= {d_old.id, d_recent.id}
    items = {d.id: next(i.id for i in d.items) for d in (d_ancient, d_old, d_recent)}
    gone[DeliveryItem] |= {items[d_ancient.id], items[d_old.id]}
    kept[DeliveryItem] |= {items[d_recent.id]}

    gone[PaperFeedback] |= {feedback(session, ada, old, days_ago(366)),
                            feedback(session, bob, recent, days_ago(3))}  # before his change
    kept[PaperFeedback] |= {feedback(session, ada, recent, days_ago(3))}

    gone[SubscriberEvent] |= {event(session, ada, EventKind.SUBSCRIBED, days_ago(400)),
                              event(session, bob, EventKind.CONFIRMED, days_ago(500))}
    kept[SubscriberEvent] |= {event(session, ada, EventKind.CONFIRMED, days_ago(400)),
                              event(session, bob, EventKind.RESUBSCRIBED, days_ago(450))}
    gone[SubscriberEvent] |= {event(session, ada, EventKind.PREFERENCES_CHANGED, days_ago(399))}
    kept[SubscriberEvent] |= {event(session, ada, EventKind.PAUSED, days_ago(10))}

    gone[WebhookEvent] |= {webhook(session, "old", days_ago(31))}
    kept[WebhookEvent] |= {webhook(session, "recent", days_ago(2))}  # a retry is recognised
    gone[SignupRequest] |= {signup_request(session, days_ago(31))}
    kept[SignupRequest] |= {signup_request(session, days_ago(1))}
    kept[Paper] |= {ancient.id, old.id, recent.id}  # RETENTION_PAPERS_DAYS=0: all stay
    session.commit()
    return History(gone, kept)


def ids_of(session: Session, table: type) -> set[int]:
    session.expire_all()
    return set(session.scalars(select(table.id)))


def counts_of(session: Session) -> dict[str, int]:
    return {t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0
            for t in TABLES}


def test_old_rows_go_and_recent_ones_and_what_never_twice_needs_stay(
    settings: Settings, session: Session
) -> None:
    history = make_history(session)
    report = retention.prune(settings, now=NOW)
    for table in TABLES:
        left = ids_of(session, table)
        assert history.kept[table] <= left, table.__tablename__
        assert not history.gone[table] & left, table.__tablename__
        assert report.deleted[table.__tablename__] == len(history.gone[table])
    again = retention.prune(settings, now=NOW)
    assert sum(again.deleted.values()) == 0  # safe to run twice: nothing left to delete


def test_a_dry_run_counts_the_same_rows_and_changes_nothing(
    settings: Settings, session: Session
) -> None:
    make_history(session)
    before = counts_of(session)
    dry = retention.prune(settings, now=NOW, dry_run=True)
    assert counts_of(session) == before
    assert "would delete" in dry.lines()[0] and dry.lines()[-1] == "Dry run: nothing was deleted."
    real = retention.prune(settings, now=NOW)
    assert dry.deleted == real.deleted and sum(real.deleted.values()) == 10


def test_small_batches_delete_the_same_rows(settings: Settings, session: Session) -> None:
    older = {webhook(session, f"older-{n}", days_ago(40)) for n in range(7)}  # > a batch
    history = make_history(session)
    history.gone[WebhookEvent] |= older
    report = retention.prune(replace(settings, retention_batch_size=2), now=NOW)
    for table in TABLES:
        assert not history.gone[table] & ids_of(session, table)
        assert history.kept[table] <= ids_of(session, table)
    assert report.deleted["webhook_events"] == 8


def test_a_row_written_out_of_order_waits_for_a_later_prune(
    settings: Settings, session: Session
) -> None:
    """The sweep stops at the first row too new to go: an older row behind it stays (late,
    never early) until the rows before it have aged too."""
    recent = webhook(session, "recent", days_ago(1))
    late = webhook(session, "late-old", days_ago(40))
    session.commit()
    retention.prune(settings, now=NOW)
    assert ids_of(session, WebhookEvent) == {recent, late}
    retention.prune(settings, now=NOW + timedelta(days=30))
    assert ids_of(session, WebhookEvent) == set()


def test_a_paper_sent_long_ago_that_is_still_a_candidate_is_never_resent(
    settings: Settings, session: Session
) -> None:
    """With a 30-day window, a paper carried 28 days ago is still a candidate today. Its
    digest is in doubt (the reader may have it), so no earlier digest narrows today's
    candidates and only the delivery item keeps the paper out: the prune keeps it. A reader
    whose item is removed by hand gets the paper, which shows the item is the guard."""
    settings = replace(settings, lookback_days=30, retention_delivery_items_days=37,
                       retention_deliveries_days=37, min_relevance=0.01)
    lora = "We study low-rank adaptation (LoRA) for parameter-efficient fine-tuning of LLMs."
    expired = make_paper(session, title="LoRA, the first paper", abstract=lora,
                         first_seen_at=days_ago(41))
    sent = make_paper(session, title="LoRA for large language models", abstract=lora,
                      first_seen_at=days_ago(29))
    unsent = make_paper(session, title="Low-rank adaptation at scale", abstract=lora,
                        first_seen_at=days_ago(29))
    ada, control = make_subscriber(session), make_subscriber(session)
    carry(session, ada, dated(40), expired)
    carry(session, ada, dated(28), sent).status = DeliveryStatus.IN_DOUBT
    in_doubt = carry(session, control, dated(28), sent)
    in_doubt.status = DeliveryStatus.IN_DOUBT
    session.commit()

    report = retention.prune(settings, now=NOW)
    assert report.deleted["delivery_items"] == 1 and report.deleted["deliveries"] == 1
    session.query(DeliveryItem).filter(DeliveryItem.delivery_id == in_doubt.id).delete()
    session.commit()

    run_day(settings, TODAY)
    got = {
        sid: set(session.scalars(
            select(DeliveryItem.paper_id).join(Delivery)
            .where(Delivery.subscriber_id == sid, Delivery.digest_date == TODAY)
        ))
        for sid in (ada.id, control.id)
    }
    assert got[ada.id] == {unsent.id}
    assert got[control.id] == {sent.id, unsent.id}


def test_opt_in_paper_pruning_deletes_only_papers_nobody_got(
    settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "ARCHIVE_PAPERS", 1)
    settings = replace(settings, retention_papers_days=15)
    ada = make_subscriber(session)
    ada.profile.updated_at = days_ago(30)
    unprovable = make_paper(session, first_seen_at=days_ago(80))  # its items may be gone
    sent = make_paper(session, first_seen_at=days_ago(20))
    rated = make_paper(session, first_seen_at=days_ago(19.9))
    make_paper(session, first_seen_at=days_ago(19.8))  # nobody got it: it goes
    archive = make_paper(session, first_seen_at=days_ago(19.7))  # the ranking's newest old one
    recent = make_paper(session, first_seen_at=days_ago(1))
    carry(session, ada, dated(19), sent)
    feedback(session, ada, rated, days_ago(1))
    stay = {unprovable.id, sent.id, rated.id, archive.id, recent.id}
    session.commit()
    report = retention.prune(settings, now=NOW)
    assert ids_of(session, Paper) == stay and report.deleted["papers"] == 1


class CountingEncoder:
    """Stands in for the sentence model (not installed for the tests): counts what it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        rng = np.random.default_rng(len(texts))
        rows = rng.random((len(texts), 4), dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def candidate(paper: Paper) -> CandidatePaper:
    return CandidatePaper(id=paper.id, title=paper.title, abstract=paper.abstract,
                          source=paper.source, first_seen_at=paper.first_seen_at)


def test_stored_vectors_of_papers_no_longer_candidates_go(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    from digest import db

    with db.session_scope(sqlite_settings) as session:
        old = candidate(make_paper(session, first_seen_at=days_ago(40)))
        new = candidate(make_paper(session, first_seen_at=days_ago(2)))
    store, encoder = EmbeddingStore(paper_store_dir(sqlite_settings)), CountingEncoder()
    before = store.vectors([old, new], encoder)

    dry = retention.prune(sqlite_settings, now=NOW, dry_run=True)
    assert dry.deleted["embeddings"] == 1 and len(store.vectors([old, new], encoder)) == 2
    assert encoder.encoded == 2

    assert retention.prune(sqlite_settings, now=NOW).deleted["embeddings"] == 1
    assert np.load(store.vectors_path).shape == (1, 4)
    assert np.array_equal(store.vectors([new], encoder)[0], before[1])  # kept, not re-encoded
    assert encoder.encoded == 2


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RETENTION_DELIVERY_ITEMS_DAYS": "9"}, "at least 10 days .LOOKBACK_DAYS \\+ 7.: a paper"),
        ({"LOOKBACK_DAYS": "30", "RETENTION_DELIVERY_ITEMS_DAYS": "36"}, "at least 37 days"),
        ({"RETENTION_DELIVERIES_DAYS": "59"}, "RETENTION_DELIVERIES_DAYS=59 is too short"),
        ({"RETENTION_DELIVERY_ITEMS_DAYS": "0"}, "set it to 0 too"),
        ({"RETENTION_PAPERS_DAYS": "60"}, "must be below RETENTION_DELIVERY_ITEMS_DAYS=60"),
        ({"RETENTION_WEBHOOK_EVENTS_DAYS": "2"}, "at least 3 days: providers retry"),
        ({"WEBHOOK_MAX_AGE_SECONDS": "400000", "RETENTION_WEBHOOK_EVENTS_DAYS": "5"},
         "at least 6 days"),
        ({"RETENTION_SUBSCRIBER_EVENTS_DAYS": "-1"}, "use 0 .keep forever."),
        ({"RETENTION_BATCH_SIZE": "0"}, "RETENTION_BATCH_SIZE must be at least 1"),
    ],
)
def test_retention_that_would_break_a_promise_is_refused(env: dict[str, str],
                                                         message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env, env_file=None)


def test_zero_keeps_everything_forever(settings: Settings, session: Session) -> None:
    make_history(session)
    before = counts_of(session)
    forever = replace(settings, **{
        name: 0 for name in vars(settings) if name.startswith("retention_")
        and name.endswith("_days")
    })
    report = retention.prune(forever, now=NOW)
    assert counts_of(session) == before and sum(report.deleted.values()) == 0
    assert "everything (RETENTION_DELIVERY_ITEMS_DAYS=0)" in "\n".join(report.lines())


def test_digest_prune_prints_each_table_and_deletes_only_without_dry_run(
    settings: Settings, session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_history(session)
    before = counts_of(session)
    monkeypatch.chdir(tmp_path)
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": settings.database_url,
           "SECRET_KEY": "test-secret-key"}
    runner = CliRunner()
    dry = runner.invoke(main, ["prune", "--dry-run"], env=env, catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert counts_of(session) == before
    lines = dry.output.splitlines()
    assert "would delete" in lines[0] and lines[-1] == "Dry run: nothing was deleted."
    for table in ("delivery_items", "deliveries", "paper_feedback", "subscriber_events",
                  "signup_requests", "webhook_events", "papers", "embeddings"):
        assert any(line.startswith(table + " ") for line in lines), table
    real = runner.invoke(main, ["prune"], env=env, catch_exceptions=False)
    assert real.exit_code == 0 and "deleted" in real.output.splitlines()[0]
    webhook_line = next(line for line in real.output.splitlines()
                        if line.startswith("webhook_events"))
    assert webhook_line.split()[1] == "1" and counts_of(session) != before


def test_beat_prunes_daily_through_the_task(
    settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.schedules import crontab

    from workers import tasks
    from workers.app import app, beat_schedule

    entry = beat_schedule(settings)["prune-old-rows"]
    assert entry["task"] == "workers.tasks.prune" and entry["task"] in app.tasks
    schedule = entry["schedule"]
    assert isinstance(schedule, crontab) and len(schedule.hour) == 1 and len(schedule.minute) == 1
    assert len(schedule.day_of_week) == 7

    make_history(session)
    monkeypatch.setitem(app.conf, "digest_settings", settings)
    result = tasks.prune.apply().get()
    assert result["dry_run"] is False
    assert Counter(result["deleted"])["delivery_items"] == 2
