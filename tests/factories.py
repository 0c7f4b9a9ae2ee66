"""Small factories for rows the tests need; each returns the flushed object."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta, timezone

from sqlalchemy.orm import Session

from digest.models import (
    Delivery,
    DeliveryStatus,
    Paper,
    Subscriber,
    SubscriberStatus,
    TopicProfile,
)
from digest.score import CandidatePaper

_counter = itertools.count(1)


def make_subscriber(
    session: Session,
    email: str | None = None,
    topics: str = "LoRA, low-rank adaptation, parameter-efficient fine-tuning",
    exclude: str = "",
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    time_zone: str = "UTC",
    send_hour: int = 7,
    papers_per_digest: int = 5,
    trending_fallback: bool = False,
) -> Subscriber:
    n = next(_counter)
    sub = Subscriber(
        email=email or f"reader{n}@example.org",
        status=status,
        time_zone=time_zone,
        send_hour=send_hour,
        papers_per_digest=papers_per_digest,
        confirmed_at=datetime.now(timezone.utc) if status is SubscriberStatus.ACTIVE else None,
    )
    sub.profile = TopicProfile(topics=topics, exclude=exclude, trending_fallback=trending_fallback)
    session.add(sub)
    session.flush()
    return sub


def make_paper(
    session: Session,
    title: str | None = None,
    abstract: str = "We study low-rank adaptation (LoRA) for fine-tuning large language models.",
    source: str = "arxiv",
    source_id: str | None = None,
    upvotes: int | None = None,
    published_at: datetime | None = None,
    first_seen_at: datetime | None = None,
) -> Paper:
    n = next(_counter)
    paper = Paper(
        source=source,
        source_id=source_id or f"2611.{n:05d}",
        title_key=f"key{n}",
        title=title or f"Paper number {n}",
        abstract=abstract,
        authors=["Ada Lovelace", "Alan Turing"],
        url=f"https://arxiv.org/abs/2611.{n:05d}",
        pdf_url=f"https://arxiv.org/pdf/2611.{n:05d}",
        published_at=published_at or datetime.now(timezone.utc),
        upvotes=upvotes,
        first_seen_at=first_seen_at or datetime.now(timezone.utc),
    )
    session.add(paper)
    session.flush()
    return paper


def make_delivery(
    session: Session, subscriber: Subscriber, day: date,
    status: DeliveryStatus = DeliveryStatus.SENT,
) -> Delivery:
    delivery = Delivery(
        subscriber_id=subscriber.id, digest_date=day, status=status,
        message_id=f"<{day}.{subscriber.id}@digest.test>",
    )
    session.add(delivery)
    session.flush()
    return delivery


def candidate_paper(
    pid: int, title: str, abstract: str = "", source: str = "arxiv", *, now: datetime,
    **kw: object,
) -> CandidatePaper:
    """A paper as the ranking sees it (no database row), first seen two hours before `now`."""
    return CandidatePaper(
        id=pid, title=title, abstract=abstract or title, source=source,
        first_seen_at=kw.pop("first_seen_at", now - timedelta(hours=2)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
