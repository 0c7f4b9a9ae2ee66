"""The suppression list: addresses no email may go to, whoever asks.

A hard bounce or a spam complaint (from a provider's webhook) or an admin's decision puts an
address here; its subscriber, if any, stops being active at the same time (BOUNCED,
COMPLAINED, or UNSUBSCRIBED for a manual suppression), so the pipeline, which only mails
active subscribers, never mails it.

Policy, decided once here: a suppressed address gets nothing at all, not even the
confirmation email a subscribe form would send (a second bounce or complaint hurts the
sender's reputation for every subscriber). Nothing re-enables it silently: only an admin's
`digest suppressions remove` lifts a suppression, and the subscriber is then UNSUBSCRIBED, so
mail resumes only after they subscribe and confirm again. An unsubscribe is not a
suppression: the owner of the address may come back with the double opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import db
from .models import (
    EventKind,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from .subscribers import SubscriberError, find_subscriber, normalize_email, record_event

# What a suppression does to the subscriber with that address.
STATUS_FOR_REASON = {
    SuppressionReason.BOUNCED: SubscriberStatus.BOUNCED,
    SuppressionReason.COMPLAINED: SubscriberStatus.COMPLAINED,
    SuppressionReason.MANUAL: SubscriberStatus.UNSUBSCRIBED,
}
EVENT_FOR_REASON = {
    SuppressionReason.BOUNCED: EventKind.BOUNCED,
    SuppressionReason.COMPLAINED: EventKind.COMPLAINED,
    SuppressionReason.MANUAL: EventKind.SUPPRESSED,
}
# Statuses that mean "suppressed" even without a row: an SMTP bounce of an older release, or of
# an address the list cannot key, set only the status.
SUPPRESSED_STATUSES = frozenset({SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED})


@dataclass(frozen=True)
class SuppressionChange:
    address: str
    created: bool  # False: it was already suppressed
    subscriber_id: int | None


class SuppressionError(ValueError):
    """An address the list cannot take; the message is fit to show the user."""


def address_key(address: str) -> str:
    """How the list stores an address: trimmed and lower-cased, as lookups compare it."""
    return (address or "").strip().lower()


def suppression_key(address: str) -> str:
    """The list's key for a new entry: a valid address, normalised as every door normalises
    a subscriber's (so it matches theirs), then lower-cased; SuppressionError otherwise."""
    try:
        return address_key(normalize_email(address))
    except SubscriberError as exc:
        raise SuppressionError(str(exc)) from exc


def find_suppression(session: Session, address: str) -> Suppression | None:
    return session.scalars(
        select(Suppression).where(Suppression.address == address_key(address))
    ).one_or_none()


def is_suppressed(session: Session, address: str) -> bool:
    """True if nothing may be sent to `address` (on the list, or its subscriber bounced)."""
    if find_suppression(session, address) is not None:
        return True
    subscriber = find_subscriber(session, address)
    return subscriber is not None and subscriber.status in SUPPRESSED_STATUSES


def suppress_address(
    session: Session,
    address: str,
    reason: SuppressionReason,
    source: str,
    detail: str = "",
    now: datetime | None = None,
) -> SuppressionChange:
    """Put `address` on the list (once) and stop its subscriber; safe to repeat.

    SuppressionError, and nothing changes, when `address` is not an email address.
    """
    now = now or datetime.now(timezone.utc)
    key = suppression_key(address)
    insert = db.dialect_insert(session)
    created = (
        session.execute(
            insert(Suppression)
            .values(address=key, reason=reason, detail=detail[:1000], source=source,
                    created_at=now)
            .on_conflict_do_nothing(index_elements=["address"])
            .returning(Suppression.id)  # rowcount is not reliable for ON CONFLICT on psycopg
        ).first()
        is not None
    )
    subscriber = find_subscriber(session, key)
    if subscriber is not None:
        new_status = STATUS_FOR_REASON[reason]
        # A complaint outranks a bounce, which outranks an unsubscribe.
        if subscriber.status is not SubscriberStatus.COMPLAINED and not (
            subscriber.status is SubscriberStatus.BOUNCED
            and new_status is SubscriberStatus.UNSUBSCRIBED
        ):
            subscriber.status = new_status
        if new_status is SubscriberStatus.UNSUBSCRIBED and subscriber.unsubscribed_at is None:
            subscriber.unsubscribed_at = now
        if created:
            record_event(session, subscriber.id, EVENT_FOR_REASON[reason], source, detail, now)
    session.flush()
    return SuppressionChange(key, created, subscriber.id if subscriber else None)


def unsuppress_address(
    session: Session, address: str, source: str, now: datetime | None = None
) -> SuppressionChange:
    """Take `address` off the list. Its subscriber stays not mailed (UNSUBSCRIBED) until they
    subscribe and confirm again: lifting a suppression never re-enables mail by itself."""
    now = now or datetime.now(timezone.utc)
    key = address_key(address)
    removed = (
        session.execute(
            delete(Suppression).where(Suppression.address == key).returning(Suppression.id)
        ).first()
        is not None
    )
    subscriber: Subscriber | None = find_subscriber(session, key)
    changed_status = subscriber is not None and subscriber.status in SUPPRESSED_STATUSES
    if subscriber is not None and changed_status:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = subscriber.unsubscribed_at or now
    if subscriber is not None and (removed or changed_status):
        record_event(session, subscriber.id, EventKind.UNSUPPRESSED, source,
                     "may subscribe again", now)
    session.flush()
    return SuppressionChange(key, removed or changed_status, subscriber.id if subscriber else None)


def list_suppressions(session: Session) -> list[Suppression]:
    return list(session.scalars(select(Suppression).order_by(Suppression.created_at,
                                                              Suppression.id)))
