"""The day's story, top-down: plan → prepare once → for each batch: score, render, send, record.

`run_day` is what `digest run`, `digest demo` and the Celery tasks call. Per-day work
(the paper index, the trending signal, each paper's card) is done once in `prepare_day`;
per-subscriber work runs in batches whose database round trips do not grow with the batch.

The delivery row is the ledger: it is claimed (inserted, unique per subscriber and date)
and committed before the message is handed to the mail backend, then marked with the
outcome. A second run the same day finds the claim and sends nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from . import db
from .models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Paper,
    Subscriber,
    SubscriberStatus,
)
from .render import DigestContext, DigestItem, PaperCard, RenderedEmail, render_digest
from .score import (
    CandidatePaper,
    DayIndex,
    Profile,
    RankingKnobs,
    Selection,
    build_day_index,
)
from .send import (
    OutgoingEmail,
    Sender,
    SendOutcome,
    SendResult,
    message_id_for,
    open_sender,
)
from .settings import Settings
from .tokens import Purpose, link

SKIP_NO_MATCH = "no new paper matched their topics"
SKIP_ALREADY_SENT = "already has today's digest"


@dataclass
class DayReport:
    """What a run did, for the CLI's summary and the tests."""

    day: date
    due: int = 0
    candidates: int = 0
    sent: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (email, reason)
    dry_run: bool = False
    outbox_index: Path | None = None

    def merge(self, other: DayReport) -> None:
        self.sent += other.sent
        self.skipped.update(other.skipped)
        self.failed += other.failed

    def summary(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        lines = [
            f"Digest for {self.day.isoformat()}: {self.due} due, {len(self.sent)} {verb}, "
            f"{sum(self.skipped.values())} skipped, {len(self.failed)} failed "
            f"({self.candidates} candidate papers)."
        ]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.most_common() if n]
        lines += [f"  failed {email}: {reason}" for email, reason in self.failed]
        return "\n".join(lines)


@dataclass
class PreparedDay:
    """Everything that is the same for every subscriber on a day."""

    day: date
    now: datetime
    index: DayIndex
    cards: dict[int, PaperCard]


def run_day(
    settings: Settings,
    day: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> DayReport:
    """Send each active subscriber their digest for `day`, once."""
    report = DayReport(day=day, dry_run=dry_run)
    with db.session_scope(settings) as session:
        subscriber_ids = plan_day(session, day, report)
        if on_plan:
            on_plan(len(subscriber_ids))
        prepared = prepare_day(session, settings, day)
        report.candidates = len(prepared.index)
        with open_sender(settings) as sender:
            for batch in chunked(subscriber_ids, settings.batch_size):
                report.merge(send_batch(session, settings, prepared, batch, sender, dry_run))
                if progress:
                    progress(len(batch))
        if settings.mail_backend == "file" and not dry_run:
            report.outbox_index = Path(settings.outbox_dir) / "index.html"
    return report


def plan_day(session: Session, day: date, report: DayReport | None = None) -> list[int]:
    """Active subscribers who have no delivery for `day` yet."""
    already = select(Delivery.subscriber_id).where(Delivery.digest_date == day)
    active = Subscriber.status == SubscriberStatus.ACTIVE
    ids = list(
        session.scalars(
            select(Subscriber.id)
            .where(active, Subscriber.id.not_in(already))
            .order_by(Subscriber.id)
        )
    )
    if report is not None:
        done = session.scalar(
            select(func.count()).select_from(Subscriber).where(active, Subscriber.id.in_(already))
        )
        report.due = len(ids) + int(done or 0)
        if done:
            report.skipped[SKIP_ALREADY_SENT] += int(done)
    return ids


def day_bounds(day: date, lookback_days: int) -> tuple[datetime, datetime]:
    """Papers first seen in (start, end] are the day's candidates."""
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=timezone.utc)
    return end - timedelta(days=lookback_days), end


def prepare_day(session: Session, settings: Settings, day: date) -> PreparedDay:
    """Load the day's candidate papers and do the work every subscriber shares, once."""
    start, end = day_bounds(day, settings.lookback_days)
    now = min(datetime.now(timezone.utc), end)
    papers = list(
        session.scalars(
            select(Paper)
            .where(Paper.first_seen_at > start, Paper.first_seen_at <= end)
            .order_by(Paper.id)
        )
    )
    archive = list(
        session.execute(
            select(Paper.title, Paper.abstract)
            .where(Paper.first_seen_at <= start)
            .order_by(Paper.id.desc())
            .limit(20_000)
        )
    )
    knobs = RankingKnobs(
        min_relevance=settings.min_relevance,
        trending_boost=settings.trending_boost,
        recency_half_life_days=settings.recency_half_life_days,
    )
    index = build_day_index(
        [candidate_paper(p) for p in papers],
        [f"{t}. {t}. {a}" for t, a in reversed(archive)],
        now,
        knobs,
    )
    return PreparedDay(day=day, now=now, index=index, cards={p.id: paper_card(p) for p in papers})


def candidate_paper(paper: Paper) -> CandidatePaper:
    return CandidatePaper(
        id=paper.id,
        title=paper.title,
        abstract=paper.abstract,
        source=paper.source,
        first_seen_at=paper.first_seen_at,
        published_at=paper.published_at,
        upvotes=paper.upvotes,
        comments=paper.comments,
        stars=paper.stars,
    )


def paper_card(paper: Paper) -> PaperCard:
    return PaperCard(
        paper_id=paper.id,
        title=paper.title,
        authors=tuple(paper.authors or ()),
        abstract=paper.abstract,
        url=paper.url,
        pdf_url=paper.pdf_url,
        published_at=paper.published_at,
        upvotes=paper.upvotes,
        comments=paper.comments,
        source=paper.source,
    )


@dataclass(frozen=True)
class Composed:
    """One subscriber's digest, ready to claim and send."""

    subscriber_id: int
    email: str
    selection: Selection
    message: OutgoingEmail


def send_batch(
    session: Session,
    settings: Settings,
    prepared: PreparedDay,
    subscriber_ids: Sequence[int],
    sender: Sender,
    dry_run: bool = False,
) -> DayReport:
    """Score, render, claim, send and record one batch; safe to run twice."""
    report = DayReport(day=prepared.day, dry_run=dry_run)
    subscribers, profiles = load_batch(session, prepared.day, subscriber_ids)
    selections = prepared.index.select(profiles)
    composed: list[Composed] = []
    for subscriber, selection in zip(subscribers, selections, strict=True):
        if not selection.picks:
            report.skipped[SKIP_NO_MATCH] += 1
            continue
        try:
            message = compose_message(settings, prepared, subscriber, selection)
        except ValueError as exc:  # a stored value no message may carry; the rest go on
            report.failed.append((subscriber.email, f"not sendable: {exc}"))
            continue
        composed.append(Composed(subscriber.id, subscriber.email, selection, message))
    if dry_run:
        report.sent = [c.email for c in composed]
        return report
    claimed = claim_deliveries(session, prepared.day, composed)
    if len(claimed) < len(composed):  # another run claimed them first
        report.skipped[SKIP_ALREADY_SENT] += len(composed) - len(claimed)
    outcomes = {c.subscriber_id: sender.send(c.message) for c in claimed}
    record_outcomes(session, prepared.day, claimed, outcomes, report)
    return report


def load_batch(
    session: Session, day: date, subscriber_ids: Sequence[int]
) -> tuple[list[Subscriber], list[Profile]]:
    """A batch's subscribers, profiles and history in a constant number of queries."""
    subscribers = list(
        session.scalars(
            select(Subscriber)
            .where(Subscriber.id.in_(subscriber_ids), Subscriber.status == SubscriberStatus.ACTIVE)
            .order_by(Subscriber.id)
        ).unique()
    )
    ids = [s.id for s in subscribers]
    last_digest = dict(
        session.execute(
            select(Delivery.subscriber_id, func.max(Delivery.claimed_at))
            .where(
                Delivery.subscriber_id.in_(ids),
                Delivery.digest_date < day,
                Delivery.status == DeliveryStatus.SENT,
            )
            .group_by(Delivery.subscriber_id)
        ).all()
    )
    sent: dict[int, set[int]] = {}
    for subscriber_id, paper_id in session.execute(
        select(DeliveryItem.subscriber_id, DeliveryItem.paper_id).where(
            DeliveryItem.subscriber_id.in_(ids)
        )
    ):
        sent.setdefault(subscriber_id, set()).add(paper_id)
    profiles = [
        Profile(
            subscriber_id=s.id,
            topics=s.profile.topics if s.profile else "",
            exclude=s.profile.exclude if s.profile else "",
            trending_fallback=bool(s.profile and s.profile.trending_fallback),
            limit=s.papers_per_digest,
            since=_aware(last_digest.get(s.id)),
            sent_paper_ids=frozenset(sent.get(s.id, ())),
        )
        for s in subscribers
    ]
    return subscribers, profiles


def digest_context(
    settings: Settings, prepared: PreparedDay, subscriber: Subscriber, selection: Selection
) -> DigestContext:
    items = tuple(
        DigestItem(card=prepared.cards[pick.paper_id], reasons=pick.reasons, score=pick.score)
        for pick in selection.picks
    )
    return DigestContext(
        day=prepared.day,
        recipient=subscriber.email,
        topics=subscriber.profile.topics if subscriber.profile else "",
        items=items,
        preferences_url=link(settings, Purpose.PREFERENCES, subscriber.id),
        unsubscribe_url=link(settings, Purpose.UNSUBSCRIBE, subscriber.id),
        site_url=settings.public_base_url,
        trending_fallback=selection.trending_fallback,
    )


def compose_message(
    settings: Settings, prepared: PreparedDay, subscriber: Subscriber, selection: Selection
) -> OutgoingEmail:
    rendered = render_digest(digest_context(settings, prepared, subscriber, selection))
    return OutgoingEmail(
        to=subscriber.email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=message_id_for(settings, "digest", subscriber.id, prepared.day),
        unsubscribe_url=link(settings, Purpose.UNSUBSCRIBE, subscriber.id),
        date=datetime.now(timezone.utc),
        kind="digest",
    )


def claim_deliveries(session: Session, day: date, composed: Sequence[Composed]) -> list[Composed]:
    """Insert the batch's delivery rows; only those this process inserted are sent.

    ON CONFLICT DO NOTHING on (subscriber, date) means a concurrent or repeated run that
    claimed first wins, and this one sends nothing for that subscriber.
    """
    if not composed:
        return []
    insert = db.dialect_insert(session)
    now = datetime.now(timezone.utc)
    rows = [
        {
            "subscriber_id": c.subscriber_id,
            "digest_date": day,
            "status": DeliveryStatus.CLAIMED,
            "message_id": c.message.message_id,
            "paper_count": len(c.selection.picks),
            "trending_fallback": c.selection.trending_fallback,
            "claimed_at": now,
        }
        for c in composed
    ]
    result = session.execute(
        insert(Delivery)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["subscriber_id", "digest_date"])
        .returning(Delivery.id, Delivery.subscriber_id)
    )
    delivery_ids = {subscriber_id: delivery_id for delivery_id, subscriber_id in result}
    claimed = [c for c in composed if c.subscriber_id in delivery_ids]
    items = [
        {
            "delivery_id": delivery_ids[c.subscriber_id],
            "subscriber_id": c.subscriber_id,
            "paper_id": pick.paper_id,
            "rank": rank,
            "score": pick.score,
            "why": " · ".join(pick.reasons),
        }
        for c in claimed
        for rank, pick in enumerate(c.selection.picks, start=1)
    ]
    if items:
        session.execute(
            insert(DeliveryItem)
            .values(items)
            .on_conflict_do_nothing(index_elements=["subscriber_id", "paper_id"])
        )
    session.commit()
    return claimed


def record_outcomes(
    session: Session,
    day: date,
    claimed: Sequence[Composed],
    outcomes: dict[int, SendResult],
    report: DayReport,
) -> None:
    """Mark each claimed delivery with what the mail backend said, in bulk."""
    now = datetime.now(timezone.utc)
    sent_ids: list[int] = []
    retry_ids: list[int] = []
    doubt_ids: list[int] = []
    bounced: list[tuple[int, str]] = []
    for c in claimed:
        result = outcomes[c.subscriber_id]
        outcome, detail = result.outcome, result.detail
        if result.in_doubt:
            # The server may have queued it: never resend blindly; report it instead.
            doubt_ids.append(c.subscriber_id)
            report.failed.append((c.email, f"in doubt, not resent: {detail}"))
        elif outcome is SendOutcome.SENT:
            sent_ids.append(c.subscriber_id)
            report.sent.append(c.email)
        elif outcome is SendOutcome.PERMANENT:
            bounced.append((c.subscriber_id, detail))
            report.failed.append((c.email, f"refused, address suppressed: {detail}"))
        else:
            retry_ids.append(c.subscriber_id)
            report.failed.append((c.email, f"temporary failure, will retry: {detail}"))
    if sent_ids:
        session.execute(
            update(Delivery)
            .where(Delivery.digest_date == day, Delivery.subscriber_id.in_(sent_ids))
            .values(status=DeliveryStatus.SENT, sent_at=now)
        )
    if doubt_ids:
        session.execute(
            update(Delivery)
            .where(Delivery.digest_date == day, Delivery.subscriber_id.in_(doubt_ids))
            .values(status=DeliveryStatus.IN_DOUBT, error="connection lost after the message")
        )
    for subscriber_id, detail in bounced:
        session.execute(
            update(Delivery)
            .where(Delivery.digest_date == day, Delivery.subscriber_id == subscriber_id)
            .values(status=DeliveryStatus.FAILED, error=detail[:1000])
        )
    failed_ids = retry_ids + [s for s, _ in bounced]
    if failed_ids:
        # Papers of an undelivered digest may still be sent later.
        session.execute(
            delete(DeliveryItem).where(
                DeliveryItem.subscriber_id.in_(failed_ids),
                DeliveryItem.delivery_id.in_(
                    select(Delivery.id).where(
                        Delivery.digest_date == day, Delivery.subscriber_id.in_(failed_ids)
                    )
                ),
            )
        )
    if retry_ids:
        # A temporary failure releases the claim so the next run tries again.
        session.execute(
            delete(Delivery).where(
                Delivery.digest_date == day, Delivery.subscriber_id.in_(retry_ids)
            )
        )
    if bounced:
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_([s for s, _ in bounced]))
            .values(status=SubscriberStatus.BOUNCED)
        )
    session.commit()


def preview_digest(settings: Settings, email: str, day: date) -> RenderedEmail | None:
    """Render what `email` would receive for `day`, without claiming or sending anything."""
    from .subscribers import get_subscriber

    with db.session_scope(settings) as session:
        subscriber = get_subscriber(session, email)
        prepared = prepare_day(session, settings, day)
        _, profiles = load_batch(session, day, [subscriber.id])
        if not profiles:  # not active: preview their topics anyway
            profiles = [
                Profile(
                    subscriber_id=subscriber.id,
                    topics=subscriber.profile.topics,
                    exclude=subscriber.profile.exclude,
                    trending_fallback=subscriber.profile.trending_fallback,
                    limit=subscriber.papers_per_digest,
                )
            ]
        selection = prepared.index.select(profiles)[0]
        if not selection.picks:
            return None
        return render_digest(digest_context(settings, prepared, subscriber, selection))


def chunked(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
