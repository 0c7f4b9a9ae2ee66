"""A reader's digests on the web: "View in browser" and the list on the preferences page.

A digest's page is rebuilt from the ledger (its delivery row, its `delivery_items` with each
paper's rank and why, and the papers), not from a stored copy of the email: nothing is kept
per email, and the page wears the web's own styles. Its link (`tokens.archive_link`) is
signed for one reader and one digest date, so it shows that digest of that reader and
nothing else. It works for ARCHIVE_LINK_DAYS after the digest's date; the settings refuse
a retention that would delete the delivery items sooner (`settings._check_reading_links`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from .cards import paper_card
from .models import Cadence, Delivery, DeliveryItem, DeliveryStatus, Paper, delivery_period
from .render.content import PaperCard
from .settings import Settings
from .tokens import LinkOwner, archive_link

# How many past digests the preferences page lists (ARCHIVE_LINK_DAYS of daily digests at
# the default; a longer setting lists the newest this many).
LISTED = 60


class DigestNotShown(LookupError):
    """There is no such digest to show: never sent, or its rows are gone."""


class DigestTooOld(LookupError):
    """The digest is older than ARCHIVE_LINK_DAYS: its link has run out."""


@dataclass(frozen=True)
class ShownPaper:
    """One paper of a past digest, as the digest listed it."""

    rank: int
    card: PaperCard
    why: str


@dataclass(frozen=True)
class ShownDigest:
    """One past digest of one reader, as its page shows it."""

    day: date
    papers: tuple[ShownPaper, ...]
    trending_fallback: bool
    sent_at: datetime | None
    weekly: bool = False  # a weekly digest: its page speaks of the week to `day`


@dataclass(frozen=True)
class PastDigest:
    """A line of the preferences page's list: when, how many papers, and its signed link."""

    day: date
    paper_count: int
    url: str
    weekly: bool = False  # listed as "the week to <day>"


def oldest_shown(settings: Settings, today: date) -> date:
    """The oldest digest date whose page still shows (ARCHIVE_LINK_DAYS back from today)."""
    return today - timedelta(days=settings.archive_link_days)


def shown_digest(
    session: Session, settings: Settings, subscriber_id: int, day: date, today: date
) -> ShownDigest:
    """The reader's digest of `day` as it was sent: its papers in their order, each with why
    it was picked. DigestTooOld past ARCHIVE_LINK_DAYS; DigestNotShown if none was sent.

    Whether it was a weekly digest is the delivery's period (an ISO week), not the reader's
    cadence today: a reader who since switched still sees each digest as it was sent."""
    if day < oldest_shown(settings, today):
        raise DigestTooOld(
            f"Digests stay on the web for {settings.archive_link_days} days; this one is older."
        )
    delivery = session.scalar(
        select(Delivery).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.digest_date == day,
            Delivery.status == DeliveryStatus.SENT,
        )
    )
    if delivery is None:
        raise DigestNotShown("There is no digest of that day for you.")
    rows = session.execute(
        select(DeliveryItem.rank, DeliveryItem.why, Paper)
        .join(Paper, Paper.id == DeliveryItem.paper_id)
        .where(DeliveryItem.delivery_id == delivery.id)
        .order_by(DeliveryItem.rank)
    ).all()
    return ShownDigest(
        day=day,
        papers=tuple(ShownPaper(rank, paper_card(paper), why) for rank, why, paper in rows),
        trending_fallback=delivery.trending_fallback,
        sent_at=delivery.sent_at,
        weekly=delivery.period == delivery_period(day, Cadence.WEEKLY),
    )


def past_digests(
    session: Session, settings: Settings, subscriber: LinkOwner, today: date
) -> list[PastDigest]:
    """The reader's digests still on the web, newest first, each with its signed link."""
    rows = session.execute(
        select(Delivery.digest_date, Delivery.paper_count, Delivery.period)
        .where(
            Delivery.subscriber_id == subscriber.id,
            Delivery.status == DeliveryStatus.SENT,
            Delivery.digest_date >= oldest_shown(settings, today),
        )
        .order_by(Delivery.digest_date.desc())
        .limit(LISTED)
    ).all()
    return [
        PastDigest(day, count, archive_link(settings, subscriber, day),
                   weekly=period == delivery_period(day, Cadence.WEEKLY))
        for day, count, period in rows
    ]
