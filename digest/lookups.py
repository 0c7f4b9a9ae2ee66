"""Read-only lookups for admins: papers by id or title, a subscriber's latest digests, a day's
digests. The CLI's inspection commands are thin doors over these, so the queries live here, in
the library, and not in the commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .models import Delivery, DeliveryStatus, Paper, Subscriber

MAX_DATABASE_ID_DIGITS = 18  # any number this long fits a 64-bit id column


@dataclass(frozen=True)
class PaperPage:
    """The papers a listing shows, and how many the database holds in all."""

    papers: Sequence[Paper]
    total: int


@dataclass(frozen=True)
class DayDigest:
    """One subscriber's digest of a day, as a summary line shows it."""

    email: str
    paper_count: int
    status: DeliveryStatus


def list_papers(session: Session, limit: int, search: str | None = None) -> PaperPage:
    """The `limit` papers seen most recently (whose title contains `search`, any case)."""
    query = select(Paper).order_by(Paper.first_seen_at.desc(), Paper.id.desc()).limit(limit)
    if search:
        query = query.where(func.lower(Paper.title).contains(search.lower()))
    total = session.scalar(select(func.count()).select_from(Paper)) or 0
    return PaperPage(session.scalars(query).all(), total)


def find_paper(session: Session, key: str) -> Paper | None:
    """A paper by its source id (e.g. an arXiv id) or, when `key` is a number, its database id."""
    conditions = [Paper.source_id == key]
    if key.isascii() and key.isdigit() and len(key) <= MAX_DATABASE_ID_DIGITS:
        conditions.append(Paper.id == int(key))
    return session.scalars(select(Paper).where(or_(*conditions))).first()


def latest_deliveries(session: Session, subscriber_id: int, limit: int = 10) -> Sequence[Delivery]:
    """A subscriber's latest `limit` deliveries, newest first."""
    return session.scalars(
        select(Delivery).where(Delivery.subscriber_id == subscriber_id)
        .order_by(Delivery.digest_date.desc()).limit(limit)
    ).all()


def day_digests(session: Session, day: date) -> list[DayDigest]:
    """Every digest of `day`, by address."""
    rows = session.execute(
        select(Subscriber.email, Delivery.paper_count, Delivery.status)
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.digest_date == day)
        .order_by(Subscriber.email)
    ).all()
    return [DayDigest(email, count, status) for email, count, status in rows]
