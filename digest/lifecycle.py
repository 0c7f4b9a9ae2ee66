"""The double opt-in life cycle: a sign-up request, its processing, the confirmation link,
unsubscribe and resubscribe, each step recorded in the subscriber's history.

The subscribe form only records a SignupRequest (what the visitor chose); it never
changes a stored subscriber. Processing the request (`process_signup_request`, in the
background after the form's transaction) decides which email it earns: a new address
becomes a pending subscriber, an active one's owner is told, a suppressed one gets
nothing. The request's choices reach the subscriber only through its confirmation link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from .models import (
    EventKind,
    SignupOutcome,
    SignupRequest,
    Subscriber,
    SubscriberStatus,
)
from .subscribers import (
    Preferences,
    SubscriberError,
    add_subscriber,
    apply_preferences,
    find_subscriber,
    normalize_email,
    record_event,
    subscriber_by_id,
)
from .suppressions import is_suppressed
from .tokens import Claim

NOTICE_FOR = {SignupOutcome.CONFIRMATION: "confirm",
              SignupOutcome.ALREADY_ACTIVE: "already_subscribed"}


@dataclass(frozen=True)
class Signup:
    """What came of a sign-up request, and so which email (if any) it earns."""

    outcome: SignupOutcome
    email: str
    subscriber_id: int | None = None
    request_id: int | None = None

    @property
    def notice(self) -> str | None:
        """The email template the request earns, if any."""
        return NOTICE_FOR.get(self.outcome)


class UnknownSignup(SubscriberError):
    """A confirmation link whose request no longer exists (or was never this one)."""


def record_signup_request(
    session: Session,
    email: str,
    prefs: Preferences,
    *,
    source: str = "web",
    now: datetime | None = None,
) -> SignupRequest:
    """Keep what the subscribe form asked for; nothing else changes until it is processed."""
    address = normalize_email(email)
    request = SignupRequest(
        email=address, address=address.lower(), topics=prefs.topics, time_zone=prefs.time_zone,
        send_hour=prefs.send_hour, papers_per_digest=prefs.papers_per_digest,
        exclude=prefs.exclude, trending_fallback=prefs.trending_fallback,
        cadence=prefs.cadence, send_weekday=prefs.send_weekday,
        click_tracking=prefs.click_tracking,
        outcome=SignupOutcome.RECEIVED, source=source[:64],
        created_at=now or datetime.now(timezone.utc),
    )
    session.add(request)
    session.flush()
    return request


def signup_requests_since(session: Session, email: str, since: datetime) -> int:
    """How many times `email` was submitted since `since`, whatever came of it."""
    return int(session.scalar(
        select(func.count()).select_from(SignupRequest).where(
            SignupRequest.address == email.strip().lower(), SignupRequest.created_at > since)
    ) or 0)


def process_signup_request(
    session: Session,
    request_id: int,
    *,
    resend_after: timedelta = timedelta(minutes=10),
    now: datetime | None = None,
) -> Signup:
    """Decide which email, if any, a recorded request earns; safe to repeat.

    A new address becomes PENDING and gets nothing but the confirmation; a pending or
    unsubscribed one gets it again at most once per `resend_after`, and its saved choices
    stay as they are; an active one is left as it is (the visitor may not be its owner) and
    its owner gets a notice; a suppressed one gets nothing at all.
    """
    now = now or datetime.now(timezone.utc)
    request = session.get(SignupRequest, request_id)
    if request is None:
        raise UnknownSignup("This subscribe request no longer exists.")
    if request.outcome is not SignupOutcome.RECEIVED:
        return signup_of(request)
    subscriber = find_subscriber(session, request.email)
    if is_suppressed(session, request.email):
        outcome = SignupOutcome.SUPPRESSED
    elif subscriber is None:
        subscriber = add_subscriber(
            session, request.email, request.topics, time_zone=request.time_zone,
            send_hour=request.send_hour, papers_per_digest=request.papers_per_digest,
            status=SubscriberStatus.PENDING, now=now,
        )
        apply_preferences(subscriber, preferences_of(request))  # a new row: the visitor's own
        record_event(session, subscriber.id, EventKind.SUBSCRIBED, request.source, "", now)
        outcome = SignupOutcome.CONFIRMATION
    elif subscriber.status is SubscriberStatus.ACTIVE:
        told = _emailed_since(session, request, SignupOutcome.ALREADY_ACTIVE, now - resend_after)
        outcome = SignupOutcome.ALREADY_ACTIVE_RECENT if told else SignupOutcome.ALREADY_ACTIVE
    else:
        again = "again" if subscriber.status is SubscriberStatus.UNSUBSCRIBED else "while pending"
        record_event(session, subscriber.id, EventKind.SUBSCRIBED, request.source, again, now)
        # Recent: within the window and, for one who left, since they left.
        since = max(now - resend_after, subscriber.unsubscribed_at or now - resend_after)
        sent = _emailed_since(session, request, SignupOutcome.CONFIRMATION, since)
        outcome = SignupOutcome.CONFIRMATION_RECENT if sent else SignupOutcome.CONFIRMATION
    request.subscriber_id = subscriber.id if subscriber is not None else None
    request.outcome = outcome
    session.flush()
    return signup_of(request)


def signup_of(request: SignupRequest) -> Signup:
    return Signup(request.outcome, request.email, request.subscriber_id, request.id)


def _emailed_since(
    session: Session, request: SignupRequest, outcome: SignupOutcome, since: datetime
) -> bool:
    """Whether another request for the same address earned `outcome`'s email after `since`
    (sent, or still on its way: only one whose sending failed does not count)."""
    return bool(session.scalar(select(exists().where(
        SignupRequest.address == request.address, SignupRequest.id != request.id,
        SignupRequest.outcome == outcome, SignupRequest.created_at > since,
        SignupRequest.email_error.is_(None),
    ))))


def record_signup_email(
    session: Session, signup: Signup, error: str | None, now: datetime | None = None
) -> None:
    """Note that the email a request earned was sent (or why it was not)."""
    now = now or datetime.now(timezone.utc)
    request = session.get(SignupRequest, signup.request_id)
    if request is None:
        return
    if error is not None:
        request.email_error = error[:500]
        return
    request.emailed_at = now
    if signup.subscriber_id is not None:
        kind = (EventKind.CONFIRMATION_SENT if signup.notice == "confirm"
                else EventKind.NOTICE_SENT)
        record_event(session, signup.subscriber_id, kind, request.source, "", now)


def request_subscription(
    session: Session,
    email: str,
    prefs: Preferences,
    *,
    resend_after: timedelta = timedelta(minutes=10),
    source: str = "web",
    now: datetime | None = None,
) -> Signup:
    """Record a subscribe request and process it at once (the web form defers the second)."""
    request = record_signup_request(session, email, prefs, source=source, now=now)
    return process_signup_request(session, request.id, resend_after=resend_after, now=now)


def request_of(session: Session, claim: Claim) -> SignupRequest:
    """The sign-up request a confirmation link was made for; UnknownSignup otherwise."""
    request = session.get(SignupRequest, claim.id)
    if (
        request is None or request.subscriber_id is None or claim.key is None
        or not claim.binds(request.link_key, request.created_at)
    ):
        raise UnknownSignup(
            "This confirmation link is no longer valid. Subscribe again to get a new one."
        )
    return request


def preferences_of(request: SignupRequest) -> Preferences:
    """What the subscribe form asked for: the choices its confirmation link would save."""
    return Preferences(
        request.topics, request.time_zone, request.send_hour, request.papers_per_digest,
        exclude=request.exclude, trending_fallback=request.trending_fallback,
        cadence=request.cadence, send_weekday=request.send_weekday,
        click_tracking=request.click_tracking,
    )


@dataclass(frozen=True)
class Confirmation:
    """The subscriber a confirmation link activated."""

    subscriber: Subscriber
    already: bool  # they were active before: nothing changed


def confirm_request(
    session: Session, claim: Claim, source: str = "web", now: datetime | None = None
) -> Confirmation:
    """Activate the subscriber a confirmation link names, with that request's choices.

    Following the link proves the mailbox is theirs, so only now does what the form asked
    for become their profile. Safe to repeat; an active subscriber is left as they are.
    """
    now = now or datetime.now(timezone.utc)
    request = request_of(session, claim)
    subscriber = subscriber_by_id(session, request.subscriber_id or 0)
    if subscriber.status is SubscriberStatus.ACTIVE:
        return Confirmation(subscriber, already=True)
    if is_suppressed(session, subscriber.email):
        raise SubscriberError(
            "This address cannot be subscribed: mail to it bounced or was reported as spam."
        )
    left = subscriber.unsubscribed_at
    if left is not None and request.created_at <= left:
        raise SubscriberError(
            "This link was sent before you unsubscribed. Subscribe again to get a new one."
        )
    changes = apply_preferences(subscriber, preferences_of(request))
    request.confirmed_at = now
    kind = (EventKind.RESUBSCRIBED if subscriber.status is SubscriberStatus.UNSUBSCRIBED
            else EventKind.CONFIRMED)
    detail = "; ".join(["confirmed by email", *changes])
    return Confirmation(_activate(session, subscriber, kind, source, detail, now, now), False)


def unsubscribe(
    session: Session,
    subscriber_id: int,
    source: str = "web",
    detail: str = "",
    now: datetime | None = None,
) -> Subscriber:
    """Stop all mail to a subscriber (they keep their history); safe to repeat."""
    now = now or datetime.now(timezone.utc)
    subscriber = subscriber_by_id(session, subscriber_id)
    if subscriber.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now
        record_event(session, subscriber.id, EventKind.UNSUBSCRIBED, source, detail, now)
        session.flush()
    return subscriber


def can_resubscribe(subscriber: Subscriber) -> bool:
    """Whether the unsubscribe page may bring them back with their saved choices: only one
    who once confirmed has choices of their own (a never-confirmed row holds a visitor's)."""
    return (subscriber.status is SubscriberStatus.UNSUBSCRIBED
            and subscriber.confirmed_at is not None)


def resubscribe(
    session: Session, subscriber_id: int, source: str = "web", now: datetime | None = None
) -> Subscriber:
    """Undo an unsubscribe from the page that did it (the link proves the mailbox is theirs)."""
    now = now or datetime.now(timezone.utc)
    subscriber = subscriber_by_id(session, subscriber_id)
    if subscriber.status is SubscriberStatus.ACTIVE:
        return subscriber
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED and subscriber.confirmed_at is None:
        raise SubscriberError(
            "This address was never confirmed. Subscribe on the start page to choose your topics."
        )
    if not can_resubscribe(subscriber) or is_suppressed(session, subscriber.email):
        raise SubscriberError(
            "This address cannot be subscribed again here: mail to it bounced or was reported "
            "as spam."
        )
    return _activate(session, subscriber, EventKind.RESUBSCRIBED, source, "", now,
                     subscriber.confirmed_at or now)


def _activate(
    session: Session,
    subscriber: Subscriber,
    kind: EventKind,
    source: str,
    detail: str,
    now: datetime,
    confirmed_at: datetime,
) -> Subscriber:
    """Make a subscriber active again (not paused, not unsubscribed) and say so in history."""
    subscriber.status = SubscriberStatus.ACTIVE
    subscriber.confirmed_at = confirmed_at
    subscriber.unsubscribed_at = None
    subscriber.paused = False
    record_event(session, subscriber.id, kind, source, detail, now)
    session.flush()
    return subscriber
