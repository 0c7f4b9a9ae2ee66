"""Subscribers: add, validate, change topics, remove, and move them in and out of CSV.

Every door (CLI, web form, CSV import) goes through `add_subscriber`, so an address is
validated and normalised the same way everywhere and duplicates are caught whatever their case.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Subscriber, SubscriberStatus, TopicProfile

CSV_FIELDS = [
    "email",
    "topics",
    "exclude",
    "status",
    "time_zone",
    "send_hour",
    "papers_per_digest",
    "trending_fallback",
    "created_at",
    "confirmed_at",
]
MAX_TOPICS_LENGTH = 2000
MAX_PAPERS_PER_DIGEST = 50


class SubscriberError(ValueError):
    """Input that cannot become a subscriber; the message is fit to show the user."""


def normalize_email(raw: str) -> str:
    """Validate an address and return its normalised form (domain lower-cased, IDNA-checked)."""
    candidate = (raw or "").strip()
    if not candidate:
        raise SubscriberError("An email address is required.")
    if any(ch in candidate for ch in "\r\n\t\x00") or len(candidate) > 320:
        raise SubscriberError(f"{candidate[:60]!r} is not a valid email address.")
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{candidate!r} is not a valid email address: {exc}") from exc
    return result.normalized


def validate_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SubscriberError(
            f"{name!r} is not a known time zone; use an IANA name such as Europe/Paris."
        ) from exc
    return name


def validate_send_hour(hour: int) -> int:
    if not 0 <= int(hour) <= 23:
        raise SubscriberError(f"Send hour {hour} must be from 0 to 23.")
    return int(hour)


def validate_papers_per_digest(count: int) -> int:
    if not 1 <= int(count) <= MAX_PAPERS_PER_DIGEST:
        raise SubscriberError(f"Papers per digest must be from 1 to {MAX_PAPERS_PER_DIGEST}.")
    return int(count)


def clean_topics(text: str) -> str:
    """Topics as the subscriber typed them, without control characters, bounded in length."""
    cleaned = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in (text or ""))
    cleaned = " ".join(cleaned.split()) if "\n" not in cleaned else cleaned.strip()
    if len(cleaned) > MAX_TOPICS_LENGTH:
        raise SubscriberError(f"Topics are limited to {MAX_TOPICS_LENGTH} characters.")
    return cleaned


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """Look an address up whatever its case."""
    return session.scalars(
        select(Subscriber).where(func.lower(Subscriber.email) == email.strip().lower())
    ).one_or_none()


def get_subscriber(session: Session, email: str) -> Subscriber:
    subscriber = find_subscriber(session, email)
    if subscriber is None:
        raise SubscriberError(f"No subscriber with the address {email!r}.")
    return subscriber


def add_subscriber(
    session: Session,
    email: str,
    topics: str,
    *,
    exclude: str = "",
    time_zone: str = "UTC",
    send_hour: int = 7,
    papers_per_digest: int = 10,
    trending_fallback: bool = False,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    now: datetime | None = None,
) -> Subscriber:
    """Create a subscriber with a topic profile; SubscriberError on bad input or a duplicate."""
    address = normalize_email(email)
    if find_subscriber(session, address) is not None:
        raise SubscriberError(f"{address} is already subscribed.")
    topics = clean_topics(topics)
    if not topics:
        raise SubscriberError("Give at least one topic, e.g. 'LoRA, activation sparsity'.")
    now = now or datetime.now(timezone.utc)
    subscriber = Subscriber(
        email=address,
        status=status,
        time_zone=validate_time_zone(time_zone),
        send_hour=validate_send_hour(send_hour),
        papers_per_digest=validate_papers_per_digest(papers_per_digest),
        created_at=now,
        confirmed_at=now if status is SubscriberStatus.ACTIVE else None,
    )
    subscriber.profile = TopicProfile(
        topics=topics, exclude=clean_topics(exclude), trending_fallback=trending_fallback
    )
    session.add(subscriber)
    session.flush()
    return subscriber


def set_topics(
    session: Session, email: str, topics: str, exclude: str | None = None
) -> Subscriber:
    subscriber = get_subscriber(session, email)
    topics = clean_topics(topics)
    if not topics:
        raise SubscriberError("Give at least one topic.")
    subscriber.profile.topics = topics
    if exclude is not None:
        subscriber.profile.exclude = clean_topics(exclude)
    session.flush()
    return subscriber


def remove_subscriber(session: Session, email: str) -> None:
    """Delete a subscriber and their history (use unsubscribe to keep the record)."""
    session.delete(get_subscriber(session, email))
    session.flush()


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line 4: 'x@' is not a valid ..."

    def summary(self) -> str:
        return f"{len(self.imported)} imported, {len(self.errors)} rejected"


def import_csv(
    session: Session, stream: IO[str], default_status: SubscriberStatus = SubscriberStatus.ACTIVE
) -> ImportReport:
    """Import subscribers from CSV with a header row (`email,topics` at least).

    Each bad line is reported with its number and reason; every valid line is imported.
    """
    report = ImportReport()
    reader = csv.DictReader(stream)
    if not reader.fieldnames or "email" not in [f.strip().lower() for f in reader.fieldnames]:
        raise SubscriberError("The CSV needs a header row with at least 'email' and 'topics'.")
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k}
        try:
            with session.begin_nested():
                subscriber = add_subscriber(
                    session,
                    row.get("email", ""),
                    row.get("topics", ""),
                    exclude=row.get("exclude", ""),
                    time_zone=row.get("time_zone") or "UTC",
                    send_hour=_int(row.get("send_hour"), 7, "send_hour"),
                    papers_per_digest=_int(row.get("papers_per_digest"), 10, "papers_per_digest"),
                    trending_fallback=_bool(row.get("trending_fallback")),
                    status=_status(row.get("status"), default_status),
                )
            report.imported.append(subscriber.email)
        except SubscriberError as exc:
            report.errors.append(f"line {line}: {exc}")
    return report


def export_csv(session: Session, stream: IO[str]) -> int:
    """Write every subscriber as CSV with a header row; returns how many."""
    writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
    writer.writeheader()
    count = 0
    for sub in session.scalars(select(Subscriber).order_by(Subscriber.id)):
        writer.writerow(
            {
                "email": sub.email,
                "topics": sub.profile.topics if sub.profile else "",
                "exclude": sub.profile.exclude if sub.profile else "",
                "status": sub.status.value,
                "time_zone": sub.time_zone,
                "send_hour": sub.send_hour,
                "papers_per_digest": sub.papers_per_digest,
                "trending_fallback": int(bool(sub.profile and sub.profile.trending_fallback)),
                "created_at": sub.created_at.isoformat(),
                "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else "",
            }
        )
        count += 1
    return count


def list_subscribers(
    session: Session, status: SubscriberStatus | None = None
) -> Iterable[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.id)
    if status is not None:
        query = query.where(Subscriber.status == status)
    return session.scalars(query)


def _int(value: str | None, default: int, name: str) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise SubscriberError(f"{name} {value!r} is not a whole number.") from exc


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "y", "on")


def _status(value: str | None, default: SubscriberStatus) -> SubscriberStatus:
    if not value:
        return default
    try:
        return SubscriberStatus(value.lower())
    except ValueError as exc:
        names = ", ".join(s.value for s in SubscriberStatus)
        raise SubscriberError(f"status {value!r} is not one of {names}.") from exc
