"""Load: a batch's subscribers as scoring profiles, in a constant number of queries.

A profile carries what scoring needs of a subscriber: their topics and exclusions, how many
papers they want, what they already received (and since when), and what their feedback taught.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import bindparam, false, func, select
from sqlalchemy.orm import Session

from . import db, feedback
from .models import (
    Cadence,
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
    TopicProfile,
)
from .prepare import day_bounds
from .score import FeedbackSignal, Profile


class Reader(NamedTuple):
    """What a digest needs of its subscriber (their links, their topics, how many papers),
    read as one row: a batch's hundred ORM instances, with their profiles and identity-map
    bookkeeping, cost more to build than the query that read them."""

    id: int
    email: str
    link_key: str
    cadence: Cadence
    papers_per_digest: int
    click_tracking: bool
    topics: str
    exclude: str
    trending_fallback: bool


def reader_of(subscriber: Subscriber) -> Reader:
    """A loaded subscriber as the Reader a digest is made for (a preview, a single send)."""
    topics = subscriber.profile
    return Reader(
        id=subscriber.id, email=subscriber.email, link_key=subscriber.link_key,
        cadence=subscriber.cadence, papers_per_digest=subscriber.papers_per_digest,
        click_tracking=subscriber.click_tracking,
        topics=topics.topics if topics else "", exclude=topics.exclude if topics else "",
        trending_fallback=bool(topics and topics.trending_fallback),
    )


READER_COLUMNS = (
    Subscriber.id, Subscriber.email, Subscriber.link_key, Subscriber.cadence,
    Subscriber.papers_per_digest, Subscriber.click_tracking,
    func.coalesce(TopicProfile.topics, ""), func.coalesce(TopicProfile.exclude, ""),
    func.coalesce(TopicProfile.trending_fallback, false()),
)


def load_batch(
    session: Session, day: date, subscriber_ids: Sequence[int]
) -> tuple[list[Reader], list[Profile]]:
    """A batch's active readers, profiles, history and feedback in a constant number of
    queries."""
    connection = session.connection()
    statements = _statements(connection.dialect.name)
    subscribers = [Reader._make(row) for row in connection.execute(
        statements["readers"], {"ids": list(subscriber_ids)})]
    ids = [s.id for s in subscribers]
    last_digest = {
        subscriber_id: last_digest_cutoff(last_date, claimed_at)
        for subscriber_id, last_date, claimed_at in connection.execute(
            statements["last_digest"], {"ids": ids, "day": day})
    }
    sent: dict[int, set[int]] = {}
    for subscriber_id, paper_id in connection.execute(statements["sent"], {"ids": ids, "day": day}):
        sent.setdefault(subscriber_id, set()).add(paper_id)
    learned = feedback.signals_for(session, ids)
    profiles = [
        profile_of(s, since=last_digest.get(s.id), sent=frozenset(sent.get(s.id, ())),
                   learned=learned.get(s.id, ()))
        for s in subscribers
    ]
    return subscribers, profiles


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    """load_batch's queries, built once per backend with the batch's ids as one parameter
    (`db.among_bound`): built afresh, with an IN list rendered per id, they cost SQLAlchemy
    more per batch than the database takes to run them."""
    return {
        "readers": select(*READER_COLUMNS)
        .outerjoin(TopicProfile, TopicProfile.subscriber_id == Subscriber.id)
        .where(db.among_bound(dialect, Subscriber.id, "ids"),
               Subscriber.status == SubscriberStatus.ACTIVE)
        .order_by(Subscriber.id),
        "last_digest": select(
            Delivery.subscriber_id, func.max(Delivery.digest_date), func.max(Delivery.claimed_at)
        )
        .where(db.among_bound(dialect, Delivery.subscriber_id, "ids"),
               Delivery.digest_date < bindparam("day", type_=Delivery.__table__.c.digest_date.type),
               Delivery.status == DeliveryStatus.SENT)
        .group_by(Delivery.subscriber_id),
        # Papers of the day's own row are not "sent before": they are what a dead attempt
        # attached to it, which the claim replaces (`ledger.claim_composed`).
        "sent": select(DeliveryItem.subscriber_id, DeliveryItem.paper_id)
        .where(db.among_bound(dialect, DeliveryItem.subscriber_id, "ids"),
               DeliveryItem.delivery_id.not_in(
                   select(Delivery.id).where(
                       db.among_bound(dialect, Delivery.subscriber_id, "ids"),
                       Delivery.digest_date == bindparam(
                           "day", type_=Delivery.__table__.c.digest_date.type)))),
    }


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
    reader: Reader,
    since: datetime | None = None,
    sent: frozenset[int] = frozenset(),
    learned: tuple[FeedbackSignal, ...] = (),
) -> Profile:
    """What scoring needs of a reader: topics, exclusions, size, what they already have,
    and what their feedback taught."""
    return Profile(
        subscriber_id=reader.id,
        topics=reader.topics,
        exclude=reader.exclude,
        trending_fallback=bool(reader.trending_fallback),
        limit=reader.papers_per_digest,
        since=since,
        sent_paper_ids=sent,
        feedback=learned,
    )


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
