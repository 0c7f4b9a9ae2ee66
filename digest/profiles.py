"""Load: a batch's subscribers as scoring profiles, in a constant number of queries.

A profile carries what scoring needs of a subscriber: their topics and exclusions, how many
papers they want, what they already received (and since when), and what their feedback taught.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import db, feedback
from .models import Delivery, DeliveryItem, DeliveryStatus, Subscriber, SubscriberStatus
from .prepare import day_bounds
from .score import FeedbackSignal, Profile


def load_batch(
    session: Session, day: date, subscriber_ids: Sequence[int]
) -> tuple[list[Subscriber], list[Profile]]:
    """A batch's subscribers, profiles, history and feedback in a constant number of queries."""
    subscribers = list(
        session.scalars(
            select(Subscriber)
            .where(db.among(session, Subscriber.id, subscriber_ids),
                   Subscriber.status == SubscriberStatus.ACTIVE)
            .order_by(Subscriber.id)
        ).unique()
    )
    ids = [s.id for s in subscribers]
    last_digest = {
        subscriber_id: last_digest_cutoff(last_date, claimed_at)
        for subscriber_id, last_date, claimed_at in session.execute(
            select(
                Delivery.subscriber_id,
                func.max(Delivery.digest_date),
                func.max(Delivery.claimed_at),
            )
            .where(
                db.among(session, Delivery.subscriber_id, ids),
                Delivery.digest_date < day,
                Delivery.status == DeliveryStatus.SENT,
            )
            .group_by(Delivery.subscriber_id)
        )
    }
    sent: dict[int, set[int]] = {}
    for subscriber_id, paper_id in session.execute(
        select(DeliveryItem.subscriber_id, DeliveryItem.paper_id).where(
            db.among(session, DeliveryItem.subscriber_id, ids)
        )
    ):
        sent.setdefault(subscriber_id, set()).add(paper_id)
    learned = feedback.signals_for(session, ids)
    profiles = [
        profile_of(s, since=last_digest.get(s.id), sent=frozenset(sent.get(s.id, ())),
                   learned=learned.get(s.id, ()))
        for s in subscribers
    ]
    return subscribers, profiles


def last_digest_cutoff(digest_date: date, claimed_at: datetime | None) -> datetime:
    """The newest first-seen time the previous digest could have carried.

    Its own day's window ends at midnight after it, and it could not see papers that arrived
    after it was composed. Wall-clock time alone would be wrong for a catch-up run of a past
    date (`digest run --date`): that digest never saw the papers of the days after it.
    """
    window_end = day_bounds(digest_date, 1)[1]
    claimed = _aware(claimed_at)
    return min(window_end, claimed) if claimed else window_end


def profile_of(
    subscriber: Subscriber,
    since: datetime | None = None,
    sent: frozenset[int] = frozenset(),
    learned: tuple[FeedbackSignal, ...] = (),
) -> Profile:
    """What scoring needs of a subscriber: topics, exclusions, size, what they already have,
    and what their feedback taught."""
    topics = subscriber.profile
    return Profile(
        subscriber_id=subscriber.id,
        topics=topics.topics if topics else "",
        exclude=topics.exclude if topics else "",
        trending_fallback=bool(topics and topics.trending_fallback),
        limit=subscriber.papers_per_digest,
        since=since,
        sent_paper_ids=sent,
        feedback=learned,
    )


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
