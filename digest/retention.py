"""Data retention: what is kept how long, and deleting the rest in short batches.

Every day adds a digest per subscriber (`deliveries`), the papers each carried
(`delivery_items`: papers x subscribers, a million rows a day at 100,000 subscribers), the
providers' webhook events, clicks and votes, history rows and paper vectors. `prune` deletes
what the RETENTION_* settings no longer keep (0 keeps forever); beat runs it daily and
`digest prune [--dry-run]` on demand. What must stay, and why:

- **delivery_items**: "never twice" rests on these rows (unique per subscriber and paper).
  A digest dated D carried papers first seen by the end of D, and such a paper is a candidate
  for LOOKBACK_DAYS at most; so the items of digests older than RETENTION_DELIVERY_ITEMS_DAYS
  (at least LOOKBACK_DAYS + 7, a week for catch-up runs of past dates) name papers that can
  never be candidates again. A paper row is never touched by this, so it keeps its first-seen
  date and cannot become new again.
- **deliveries**: kept at least as long as their items, which go with them.
- **paper_feedback**: older than RETENTION_FEEDBACK_DAYS, or given before the subscriber last
  changed their topics (learning ignores those: `feedback._feedback_rows`).
- **subscriber_events**: older than RETENTION_SUBSCRIBER_EVENTS_DAYS, except each subscriber's
  latest opt-in (confirmed or resubscribed): when and how they said yes is kept while they exist.
- **signup_requests**, **webhook_events**: older than their settings; the floors outlive a
  confirmation link and the providers' retries (an event forgotten sooner is applied twice).
- **papers** (opt-in, RETENTION_PAPERS_DAYS): only papers nobody was sent or gave feedback on,
  and only while the delivery items of their time still exist to prove it (a deleted paper
  that is ingested again is new again); never the archive the day's ranking is fitted on.
- **embeddings**: vectors of papers first seen before RETENTION_EMBEDDINGS_DAYS; only the
  day's candidates are ever embedded.

Subscribers and suppressions are never pruned here.

How: each table is read in id order, which is the order its rows were written and so follows
time, one batch at a time; each batch's expired rows go in one DELETE that is committed at
once, so a big first prune never holds a long lock, and the sweep stops at the first row too
new to go. Rows written out of order (a catch-up run's, a renewed vote) wait for a later run:
late, never early.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from . import db
from .embeddings import EmbeddingStore, paper_store_dir
from .models import (
    Delivery,
    DeliveryItem,
    EventKind,
    Paper,
    PaperFeedback,
    SignupRequest,
    SubscriberEvent,
    TopicProfile,
    WebhookEvent,
)
from .prepare import ARCHIVE_PAPERS  # the papers before its window the day's ranking fits on
from .settings import Settings

OPT_IN_KINDS = (EventKind.CONFIRMED, EventKind.RESUBSCRIBED)
EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class Sweep:
    """How one table is pruned. `rows(after, limit)` selects (id, too new, kept) in id order
    after `after`: the sweep stops at the first row too new to go and deletes the rest unless
    kept. `delete` removes a batch and counts rows per table."""

    table: str
    keeps: str  # what is kept, in words, for the report
    rows: Callable[[int, int], Any]
    delete: Callable[[Session, list[int]], Counter[str]]
    start_after: int = 0


@dataclass
class PruneReport:
    """Rows deleted (or, dry, that would be) per table, and what each keeps."""

    dry_run: bool = False
    deleted: Counter[str] = field(default_factory=Counter)
    keeps: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        width = max(len(name) for name in self.keeps)
        lines = [f"{'':<{width}}  {verb:>12}  kept"]
        lines += [f"{name:<{width}}  {self.deleted[name]:>12,}  {keeps}"
                  for name, keeps in self.keeps.items()]
        if self.dry_run:
            lines.append("Dry run: nothing was deleted.")
        return lines

    def as_dict(self) -> dict[str, object]:
        """JSON-safe, for the Celery task's result."""
        return {"dry_run": self.dry_run, "deleted": {n: self.deleted[n] for n in self.keeps}}


def prune(settings: Settings, *, dry_run: bool = False, now: datetime | None = None) -> PruneReport:
    """Delete what the retention settings no longer keep, a batch per transaction."""
    now = now or datetime.now(timezone.utc)
    report = PruneReport(dry_run=dry_run)
    with db.session_scope(settings) as session:
        for table, sweep in sweeps(session, settings, now):
            report.keeps[table] = sweep.keeps if isinstance(sweep, Sweep) else sweep
            if isinstance(sweep, Sweep):
                report.deleted.update(
                    run_sweep(session, sweep, settings.retention_batch_size, dry_run)
                )
        days = settings.retention_embeddings_days
        report.keeps[EMBEDDINGS] = (
            f"vectors of papers first seen in the last {days} days" if days
            else _forever("retention_embeddings_days")
        )
        report.deleted[EMBEDDINGS] = prune_embeddings(session, settings, now, dry_run)
    return report


def run_sweep(session: Session, sweep: Sweep, batch: int, dry_run: bool) -> Counter[str]:
    """Walk the table in id order, deleting each batch's expired rows in its own transaction."""
    deleted: Counter[str] = Counter()
    after = sweep.start_after
    while True:
        rows = session.execute(sweep.rows(after, batch)).all()
        doomed: list[int] = []
        reached_new = False
        for row_id, too_new, kept in rows:
            if too_new:
                reached_new = True
                break
            if not kept:
                doomed.append(row_id)
        if doomed:
            if dry_run:
                deleted[sweep.table] += len(doomed)
            else:
                deleted.update(sweep.delete(session, doomed))
        session.commit()
        if reached_new or len(rows) < batch:
            return deleted
        after = rows[-1][0]


def sweeps(
    session: Session, settings: Settings, now: datetime
) -> Iterator[tuple[str, Sweep | str]]:
    """Each table's sweep, in an order where nothing is deleted before what refers to it
    (items before their deliveries and papers); a table kept forever comes with its words."""
    yield "delivery_items", _items_sweep(settings, now)
    yield "deliveries", _deliveries_sweep(settings, now)
    yield "paper_feedback", _feedback_sweep(settings, now)
    yield "subscriber_events", _events_sweep(settings, now)
    yield "signup_requests", _signup_requests_sweep(settings, now)
    yield "webhook_events", _webhook_events_sweep(settings, now)
    yield "papers", _papers_sweep(session, settings, now)


# --- the tables ----------------------------------------------------------------------------


def _items_sweep(settings: Settings, now: datetime) -> Sweep | str:
    days = settings.retention_delivery_items_days
    if not days:
        return _forever("retention_delivery_items_days")
    cutoff = _day_cutoff(now, days)
    return Sweep(
        "delivery_items",
        f"papers of the digests of the last {days} days (older ones can no longer be "
        "candidates)",
        lambda after, limit: select(DeliveryItem.id, Delivery.digest_date >= cutoff, false())
        .join(Delivery, Delivery.id == DeliveryItem.delivery_id)
        .where(DeliveryItem.id > after)
        .order_by(DeliveryItem.id)
        .limit(limit),
        _delete_by_id(DeliveryItem, "delivery_items"),
    )


def _deliveries_sweep(settings: Settings, now: datetime) -> Sweep | str:
    days = settings.retention_deliveries_days
    if not days:
        return _forever("retention_deliveries_days")
    cutoff = _day_cutoff(now, days)

    def delete_with_items(session: Session, ids: list[int]) -> Counter[str]:
        # Items of an old digest written out of order (a catch-up run) that the items' sweep
        # has not reached: as old as their digest, so they may go, and are counted.
        items = _rowcount(session.execute(
            delete(DeliveryItem).where(db.among(session, DeliveryItem.delivery_id, ids))
        ))
        counts = _delete_by_id(Delivery, "deliveries")(session, ids)
        counts["delivery_items"] += items
        return counts

    return Sweep(
        "deliveries",
        f"the last {days} days of digests",
        lambda after, limit: select(Delivery.id, Delivery.digest_date >= cutoff, false())
        .where(Delivery.id > after)
        .order_by(Delivery.id)
        .limit(limit),
        delete_with_items,
    )


def _feedback_sweep(settings: Settings, now: datetime) -> Sweep | str:
    days = settings.retention_feedback_days
    if not days:
        return _forever("retention_feedback_days")
    cutoff = now - timedelta(days=days)
    expired = or_(PaperFeedback.created_at < cutoff,
                  PaperFeedback.created_at < TopicProfile.updated_at)
    # A renewed vote keeps its old id with a new time, so this sweep reads the whole table
    # rather than stopping at the first recent row (a few rows per reader and month).
    return Sweep(
        "paper_feedback",
        f"the last {days} days, given since the reader's topics last changed",
        lambda after, limit: select(PaperFeedback.id, false(), ~expired)
        .join(TopicProfile, TopicProfile.subscriber_id == PaperFeedback.subscriber_id)
        .where(PaperFeedback.id > after)
        .order_by(PaperFeedback.id)
        .limit(limit),
        _delete_by_id(PaperFeedback, "paper_feedback"),
    )


def _events_sweep(settings: Settings, now: datetime) -> Sweep | str:
    days = settings.retention_subscriber_events_days
    if not days:
        return _forever("retention_subscriber_events_days")
    cutoff = now - timedelta(days=days)
    other = aliased(SubscriberEvent)
    latest_opt_in = (
        select(func.max(other.id))
        .where(other.subscriber_id == SubscriberEvent.subscriber_id, other.kind.in_(OPT_IN_KINDS))
        .scalar_subquery()
    )
    kept = and_(SubscriberEvent.kind.in_(OPT_IN_KINDS), SubscriberEvent.id == latest_opt_in)
    return Sweep(
        "subscriber_events",
        f"the last {days} days, and each subscriber's latest opt-in",
        lambda after, limit: select(SubscriberEvent.id, SubscriberEvent.created_at >= cutoff,
                                    kept)
        .where(SubscriberEvent.id > after)
        .order_by(SubscriberEvent.id)
        .limit(limit),
        _delete_by_id(SubscriberEvent, "subscriber_events"),
    )


def _signup_requests_sweep(settings: Settings, now: datetime) -> Sweep | str:
    days = settings.retention_signup_requests_days
    if not days:
        return _forever("retention_signup_requests_days")
    cutoff = now - timedelta(days=days)
    return Sweep(
        "signup_requests",
        f"the last {days} days",
        lambda after, limit: select(SignupRequest.id, SignupRequest.created_at >= cutoff, false())
        .where(SignupRequest.id > after)
        .order_by(SignupRequest.id)
        .limit(limit),
        _delete_by_id(SignupRequest, "signup_requests"),
    )


def _webhook_events_sweep(settings: Settings, now: datetime) -> Sweep | str:
    days = settings.retention_webhook_events_days
    if not days:
        return _forever("retention_webhook_events_days")
    cutoff = now - timedelta(days=days)
    return Sweep(
        "webhook_events",
        f"the last {days} days (replays and provider retries are recognised)",
        lambda after, limit: select(WebhookEvent.id, WebhookEvent.received_at >= cutoff, false())
        .where(WebhookEvent.id > after)
        .order_by(WebhookEvent.id)
        .limit(limit),
        _delete_by_id(WebhookEvent, "webhook_events"),
    )


def _papers_sweep(session: Session, settings: Settings, now: datetime) -> Sweep | str:
    """Papers nobody was sent nor gave feedback on, first seen before RETENTION_PAPERS_DAYS.

    Only papers whose delivery items all still exist can show that nobody got them: a digest
    dated D carried papers first seen by the end of D, and the items of digests from the
    items' cutoff on are kept. So papers first seen before the day after that cutoff stay,
    sent or not: one deleted and ingested again would be new, and could be sent twice.
    """
    days = settings.retention_papers_days
    if not days:
        return _forever("retention_papers_days")
    cutoff = now - timedelta(days=days)
    items_days = settings.retention_delivery_items_days
    provable_from = (
        datetime.combine(_day_cutoff(now, items_days) + timedelta(days=1), time.min,
                         tzinfo=timezone.utc)
        if items_days else None
    )
    archive_floor = _archive_floor(session, now - timedelta(days=settings.lookback_days))
    if archive_floor is None:
        return f"every paper (fewer than {ARCHIVE_PAPERS:,} in the ranking's archive)"
    sent = Paper.id.in_(select(DeliveryItem.paper_id))
    rated = Paper.id.in_(select(PaperFeedback.paper_id))
    kept = or_(sent, rated, Paper.first_seen_at < provable_from) if provable_from else or_(
        sent, rated)
    start_after = 0
    if provable_from is not None:
        first = session.scalar(
            select(Paper.id).where(Paper.first_seen_at >= provable_from)
            .order_by(Paper.first_seen_at).limit(1)
        )
        start_after = (first or 1) - 1
    return Sweep(
        "papers",
        f"every paper sent or rated, of the last {days} days, or in the ranking's archive",
        lambda after, limit: select(
            Paper.id, or_(Paper.first_seen_at >= cutoff, Paper.id >= archive_floor), kept
        )
        .where(Paper.id > after)
        .order_by(Paper.id)
        .limit(limit),
        _delete_by_id(Paper, "papers"),
        start_after=start_after,
    )


def _archive_floor(session: Session, window_start: datetime) -> int | None:
    """The lowest paper id in the newest ARCHIVE_PAPERS papers before the candidate window,
    which the day's ranking is fitted on; None when there are not that many."""
    return session.scalar(
        select(Paper.id).where(Paper.first_seen_at <= window_start)
        .order_by(Paper.id.desc()).offset(ARCHIVE_PAPERS - 1).limit(1)
    )


def prune_embeddings(session: Session, settings: Settings, now: datetime, dry_run: bool) -> int:
    """Drop the stored vectors of papers first seen before RETENTION_EMBEDDINGS_DAYS (and of
    papers deleted): only the day's candidates are embedded, so those are never read again."""
    days = settings.retention_embeddings_days
    store = EmbeddingStore(paper_store_dir(settings))
    if not days or not store.index_path.is_file():
        return 0
    wanted = set(session.scalars(
        select(Paper.id).where(Paper.first_seen_at >= now - timedelta(days=days))
    ))
    return store.retain(wanted.__contains__, dry_run=dry_run)


# --- small parts ---------------------------------------------------------------------------


def _delete_by_id(model: Any, table: str) -> Callable[[Session, list[int]], Counter[str]]:
    def delete_rows(session: Session, ids: list[int]) -> Counter[str]:
        result = session.execute(delete(model).where(db.among(session, model.id, ids)))
        return Counter({table: _rowcount(result)})

    return delete_rows


def _day_cutoff(now: datetime, days: int) -> date:
    """Digests dated before this day are older than `days`."""
    return now.date() - timedelta(days=days)


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)  # a plain DELETE's count is exact on both backends


def _forever(setting: str) -> str:
    return f"everything ({setting.upper()}=0)"
