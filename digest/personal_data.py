"""What is stored about a reader: the copy they can download, and deleting them entirely.

Both start from a subscriber a signed preferences link proved to be theirs, and reach only
that subscriber's rows and the sign-up requests made for their address.

The export holds every row about the reader, as plain JSON: their settings and topics, the
sign-up requests made for the address, their history, each digest with the papers it
carried, and their clicks and votes. It leaves out what is not about them but about how links
are checked (`link_key`) or how a send is coordinated (claims, leases).

Deleting removes the subscriber and everything hanging from them (profile, deliveries and
their papers, feedback, history) and every sign-up request for the address, and takes the
address off the providers' webhook events, in one transaction; their old links then name
nobody (`tokens.Claim.binds`), so they do nothing.
It adds no suppression: the address may subscribe again, with the double opt-in, like any
other. An existing suppression (a bounce, a spam complaint, an admin's decision) stays, and
a subscriber who bounced or complained without a row on the list (an older release marked
only the status) gets one, so that deleting never re-enables mail to such an address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from .models import (
    Delivery,
    DeliveryItem,
    Paper,
    PaperFeedback,
    SignupRequest,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    SuppressionReason,
    TopicProfile,
    WebhookEvent,
)
from .subscribers import cadence_text, subscriber_by_id
from .suppressions import address_key, find_suppression, suppress_address

EXPORT_FORMAT = "paper-digest personal data, version 1"
# A subscriber whose mail bounced or was reported keeps a suppression when they delete.
KEEP_SUPPRESSED = {SubscriberStatus.BOUNCED: SuppressionReason.BOUNCED,
                   SubscriberStatus.COMPLAINED: SuppressionReason.COMPLAINED}


def _when(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def export_subscriber(
    session: Session, subscriber_id: int, now: datetime | None = None
) -> dict[str, Any]:
    """Everything stored about one subscriber, as JSON-ready data, in a fixed number of
    queries whatever the length of their history."""
    subscriber = subscriber_by_id(session, subscriber_id)
    return {
        "format": EXPORT_FORMAT,
        "exported_at": _when(now or datetime.now(timezone.utc)),
        "subscriber": _settings(subscriber),
        "profile": _profile(subscriber.profile),
        "signup_requests": _signup_requests(session, subscriber),
        "history": _history(session, subscriber.id),
        "deliveries": _deliveries(session, subscriber.id),
        "feedback": _feedback(session, subscriber.id),
        "suppression": _suppression(session, subscriber.email),
    }


def _settings(subscriber: Subscriber) -> dict[str, Any]:
    return {
        "email": subscriber.email,
        "status": subscriber.status.value,
        "created_at": _when(subscriber.created_at),
        "confirmed_at": _when(subscriber.confirmed_at),
        "unsubscribed_at": _when(subscriber.unsubscribed_at),
        "paused": subscriber.paused,
        "time_zone": subscriber.time_zone,
        "send_hour": subscriber.send_hour,
        "papers_per_digest": subscriber.papers_per_digest,
        "cadence": subscriber.cadence.value,
        "send_weekday": subscriber.send_weekday,
        "schedule": cadence_text(subscriber.cadence, subscriber.send_weekday),
        "click_tracking": subscriber.click_tracking,
    }


def _profile(profile: TopicProfile | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    return {
        "topics": profile.topics,
        "exclude": profile.exclude,
        "trending_fallback": profile.trending_fallback,
        "updated_at": _when(profile.updated_at),
    }


def _signup_requests_of(subscriber: Subscriber) -> Any:
    """The sign-up requests for this subscriber or their address (whoever typed it)."""
    return or_(SignupRequest.subscriber_id == subscriber.id,
               SignupRequest.address == address_key(subscriber.email))


def _signup_requests(session: Session, subscriber: Subscriber) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(SignupRequest).where(_signup_requests_of(subscriber)).order_by(SignupRequest.id)
    )
    return [
        {
            "created_at": _when(r.created_at),
            "email": r.email,
            "source": r.source,
            "topics": r.topics,
            "exclude": r.exclude,
            "trending_fallback": r.trending_fallback,
            "time_zone": r.time_zone,
            "send_hour": r.send_hour,
            "papers_per_digest": r.papers_per_digest,
            "cadence": r.cadence.value,
            "send_weekday": r.send_weekday,
            "click_tracking": r.click_tracking,
            "outcome": r.outcome.value,
            "emailed_at": _when(r.emailed_at),
            "email_error": r.email_error,
            "confirmed_at": _when(r.confirmed_at),
        }
        for r in rows
    ]


def _history(session: Session, subscriber_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(SubscriberEvent).where(SubscriberEvent.subscriber_id == subscriber_id)
        .order_by(SubscriberEvent.id)
    )
    return [{"at": _when(e.created_at), "event": e.kind.value, "source": e.source,
             "detail": e.detail} for e in rows]


def _deliveries(session: Session, subscriber_id: int) -> list[dict[str, Any]]:
    deliveries = session.scalars(
        select(Delivery).where(Delivery.subscriber_id == subscriber_id)
        .order_by(Delivery.digest_date, Delivery.id)
    ).all()
    papers: dict[int, list[dict[str, Any]]] = {}
    for item, paper in session.execute(
        select(DeliveryItem, Paper).join(Paper, Paper.id == DeliveryItem.paper_id)
        .where(DeliveryItem.subscriber_id == subscriber_id)
        .order_by(DeliveryItem.delivery_id, DeliveryItem.rank)
    ):
        papers.setdefault(item.delivery_id, []).append({
            "rank": item.rank, "paper_id": paper.id, "title": paper.title, "url": paper.url,
            "score": round(item.score, 6), "why": item.why,
        })
    return [
        {
            "digest_date": _when(d.digest_date),
            "status": d.status.value,
            "sent_at": _when(d.sent_at),
            "message_id": d.message_id,
            "paper_count": d.paper_count,
            "trending_fallback": d.trending_fallback,
            "error": d.error,
            "papers": papers.get(d.id, []),
        }
        for d in deliveries
    ]


def _feedback(session: Session, subscriber_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(PaperFeedback, Paper.title).join(Paper, Paper.id == PaperFeedback.paper_id)
        .where(PaperFeedback.subscriber_id == subscriber_id)
        .order_by(PaperFeedback.created_at, PaperFeedback.id)
    )
    return [{"at": _when(f.created_at), "kind": f.kind.value, "paper_id": f.paper_id,
             "title": title} for f, title in rows]


def _suppression(session: Session, email: str) -> dict[str, Any] | None:
    row = find_suppression(session, email)
    if row is None:
        return None
    return {"reason": row.reason.value, "since": _when(row.created_at), "source": row.source}


@dataclass(frozen=True)
class Deletion:
    """What deleting a subscriber removed, and whether the address stays suppressed."""

    email: str
    deliveries: int
    feedback: int
    events: int
    signup_requests: int
    still_suppressed: bool


def delete_subscriber(
    session: Session, subscriber_id: int, now: datetime | None = None
) -> Deletion:
    """Delete a subscriber and every row about them, in the caller's transaction.

    Explicit DELETEs rather than the foreign keys' cascades, so that the work is the same on
    every backend and the counts can be reported; the delivery items go with their
    deliveries, the profile with the subscriber.
    """
    subscriber = subscriber_by_id(session, subscriber_id)
    email = subscriber.email
    if subscriber.status in KEEP_SUPPRESSED and find_suppression(session, email) is None:
        suppress_address(session, email, KEEP_SUPPRESSED[subscriber.status], "web:delete",
                         "kept when the subscriber deleted their data", now)
    requests = _count(session, delete(SignupRequest).where(_signup_requests_of(subscriber)))
    _count(session, delete(DeliveryItem).where(DeliveryItem.subscriber_id == subscriber_id))
    deliveries = _count(session, delete(Delivery).where(Delivery.subscriber_id == subscriber_id))
    feedback = _count(session, delete(PaperFeedback)
                      .where(PaperFeedback.subscriber_id == subscriber_id))
    events = _count(session, delete(SubscriberEvent)
                    .where(SubscriberEvent.subscriber_id == subscriber_id))
    # The providers' events stay as the replay ledger (a retried event must not act twice),
    # without the address.
    session.execute(
        update(WebhookEvent).where(func.lower(WebhookEvent.address) == address_key(email))
        .values(address=None).execution_options(synchronize_session=False)
    )
    _count(session, delete(TopicProfile).where(TopicProfile.subscriber_id == subscriber_id))
    _count(session, delete(Subscriber).where(Subscriber.id == subscriber_id))
    session.expunge(subscriber)
    still_suppressed = find_suppression(session, email) is not None
    session.flush()
    return Deletion(email, deliveries, feedback, events, requests, still_suppressed)


def _count(session: Session, statement: Any) -> int:
    """Run a bulk DELETE; how many rows it removed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
