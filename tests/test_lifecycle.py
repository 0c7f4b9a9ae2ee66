"""The double opt-in life cycle: a sign-up request and what it earns, the confirmation link,
unsubscribe, resubscribe and their history, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from digest.lifecycle import (
    UnknownSignup,
    confirm_request,
    record_signup_email,
    request_subscription,
    resubscribe,
    unsubscribe,
)
from digest.models import SignupOutcome, SignupRequest, SubscriberStatus
from digest.subscribers import (
    Preferences,
    SubscriberError,
    add_subscriber,
    find_subscriber,
    subscriber_history,
    update_preferences,
)
from digest.tokens import Claim

PREFS = Preferences("LoRA, RLHF", "Europe/Paris", 8, 5)
NOON = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)


def claim_of(session: Session, request_id: int | None) -> Claim:
    """What a genuine confirmation link for that request says."""
    request = session.get(SignupRequest, request_id)
    assert request is not None
    return Claim(request.id, request.link_key, datetime.now(timezone.utc))


def test_double_opt_in_from_request_to_confirmation(session: Session) -> None:
    first = request_subscription(session, "Ada@Example.org", PREFS, now=NOON)
    assert first.outcome is SignupOutcome.CONFIRMATION and first.notice == "confirm"
    sub = find_subscriber(session, "ada@example.org")
    assert sub is not None and sub.status is SubscriberStatus.PENDING
    assert (sub.time_zone, sub.send_hour, sub.papers_per_digest) == ("Europe/Paris", 8, 5)
    record_signup_email(session, first, None, now=NOON)
    other = Preferences("diffusion", "Asia/Tokyo", 6, 3)
    soon = request_subscription(session, "ada@example.org", other,
                                now=NOON + timedelta(minutes=5))
    assert soon.outcome is SignupOutcome.CONFIRMATION_RECENT and soon.notice is None
    later = request_subscription(session, "ada@example.org", other, now=NOON + timedelta(hours=1))
    assert later.outcome is SignupOutcome.CONFIRMATION
    assert (sub.profile.topics, sub.time_zone) == ("LoRA, RLHF", "Europe/Paris")  # unchanged
    # The owner confirms the later request: its choices become the profile, only now.
    done = confirm_request(session, claim_of(session, later.request_id),
                           now=NOON + timedelta(hours=2))
    assert done.subscriber is sub and not done.already
    assert sub.status is SubscriberStatus.ACTIVE and sub.confirmed_at is not None
    assert (sub.profile.topics, sub.time_zone, sub.send_hour, sub.papers_per_digest) == (
        "diffusion", "Asia/Tokyo", 6, 3)
    # The first request's link now changes nothing.
    assert confirm_request(session, claim_of(session, first.request_id)).already
    assert sub.profile.topics == "diffusion"
    active = request_subscription(session, "ada@example.org", PREFS)
    assert active.outcome is SignupOutcome.ALREADY_ACTIVE and active.notice == "already_subscribed"
    assert sub.profile.topics == "diffusion"


def test_a_failed_email_does_not_hold_back_the_next_request(session: Session) -> None:
    first = request_subscription(session, "ada@example.org", PREFS, now=NOON)
    record_signup_email(session, first, "451 try later", now=NOON)
    again = request_subscription(session, "ada@example.org", PREFS, now=NOON + timedelta(minutes=1))
    assert again.outcome is SignupOutcome.CONFIRMATION


def test_a_confirmation_link_needs_its_own_request_key(session: Session) -> None:
    signup = request_subscription(session, "ada@example.org", PREFS, now=NOON)
    claim = claim_of(session, signup.request_id)
    for forged in (claim._replace(key="x" * 22), claim._replace(key=None),
                   claim._replace(id=claim.id + 1)):
        with pytest.raises(UnknownSignup):
            confirm_request(session, forged)
    assert find_subscriber(session, "ada@example.org").status is SubscriberStatus.PENDING  # type: ignore[union-attr]


def test_unsubscribe_resubscribe_and_history(session: Session) -> None:
    sub = add_subscriber(session, "ada@example.org", "LoRA", now=NOON)
    before = request_subscription(session, "ada@example.org", PREFS, now=NOON)
    unsubscribe(session, sub.id, "web:one-click", now=NOON + timedelta(hours=1))
    unsubscribe(session, sub.id, "web", now=NOON + timedelta(hours=2))  # harmless again
    assert sub.status is SubscriberStatus.UNSUBSCRIBED and sub.unsubscribed_at is not None
    with pytest.raises(SubscriberError, match="before you unsubscribed"):
        confirm_request(session, claim_of(session, before.request_id))
    resubscribe(session, sub.id, now=NOON + timedelta(hours=3))
    assert sub.status is SubscriberStatus.ACTIVE and sub.unsubscribed_at is None
    changes = update_preferences(session, sub.id, Preferences("RLHF", "UTC", 9, 3), paused=True,
                                 now=NOON + timedelta(hours=4))
    assert changes == ["topics: RLHF", "hour: 09:00", "papers: 3", "paused"]
    assert update_preferences(session, sub.id, Preferences("RLHF", "UTC", 9, 3),
                              paused=True) == []
    assert [(h.what, h.source) for h in subscriber_history(session, sub)] == [
        ("unsubscribed", "web:one-click"), ("resubscribed", "web"),
        ("preferences_changed", "web"), ("paused", "web")]


def test_a_never_confirmed_address_cannot_come_back_with_a_strangers_choices(
    session: Session,
) -> None:
    """A pending row holds what the first visitor typed: the unsubscribe page's "resubscribe"
    would make it a profile without its owner ever choosing it."""
    request_subscription(session, "ada@example.org", Preferences("pills", "UTC", 3, 50))
    sub = find_subscriber(session, "ada@example.org")
    assert sub is not None
    unsubscribe(session, sub.id)
    with pytest.raises(SubscriberError, match="never confirmed"):
        resubscribe(session, sub.id)
    assert sub.status is SubscriberStatus.UNSUBSCRIBED
