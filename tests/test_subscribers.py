"""Subscribers: validation, case-insensitive duplicates, CSV in and out, and the life cycle
(double opt-in, unsubscribe, resubscribe, preferences, history), on both databases."""

from __future__ import annotations

import io
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
    InvalidForm,
    Preferences,
    SubscriberError,
    add_subscriber,
    find_subscriber,
    normalize_email,
    read_preferences,
    set_topics,
    subscriber_history,
    update_preferences,
)
from digest.subscribers_csv import export_csv, import_csv
from digest.tokens import Claim


def test_add_normalises_and_refuses_a_duplicate_in_any_case(session: Session) -> None:
    sub = add_subscriber(session, "  Ada@EXAMPLE.org ", "LoRA")
    assert sub.email == "Ada@example.org"
    with pytest.raises(SubscriberError, match="already subscribed"):
        add_subscriber(session, "ada@example.ORG", "RLHF")
    assert find_subscriber(session, "ADA@example.org") is sub


@pytest.mark.parametrize(
    "address", ["", "plainaddress", "a@b", "ada@example.org\r\nBcc: x@y.org", "a b@example.org",
                "@example.org", "ada@exa_mple.org"],
)
def test_invalid_addresses_are_refused_with_a_reason(address: str) -> None:
    with pytest.raises(SubscriberError):
        normalize_email(address)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"time_zone": "Mars/Olympus"}, "time zone"),
        ({"send_hour": 24}, "Send hour"),
        ({"papers_per_digest": 0}, "Papers per digest"),
    ],
)
def test_bad_preferences_are_refused(session: Session, kwargs: dict, message: str) -> None:
    with pytest.raises(SubscriberError, match=message):
        add_subscriber(session, "ada@example.org", "LoRA", **kwargs)


def test_topics_are_required_and_control_characters_dropped(session: Session) -> None:
    with pytest.raises(SubscriberError, match="topic"):
        add_subscriber(session, "ada@example.org", "   ")
    sub = add_subscriber(session, "bob@example.org", "LoRA\x00, RLHF\x1b")
    assert "\x00" not in sub.profile.topics and "\x1b" not in sub.profile.topics
    set_topics(session, "BOB@example.org", "graph neural networks", exclude="medical")
    assert (sub.profile.topics, sub.profile.exclude) == ("graph neural networks", "medical")


CSV = """email,topics,time_zone,send_hour,status
ada@example.org,"LoRA, RLHF",Europe/Paris,8,active
not-an-email,LoRA,UTC,7,active
ADA@example.org,duplicate in another case,UTC,7,active
grace@example.org,,UTC,7,active
alan@example.org,RL,Nowhere/City,7,active
barbara@example.org,diffusion,UTC,seven,active
emmy@example.org,graphs,UTC,6,pending
"""


def test_csv_import_reports_each_bad_line_and_keeps_the_good_ones(session: Session) -> None:
    report = import_csv(session, io.StringIO(CSV))
    assert report.imported == ["ada@example.org", "emmy@example.org"]
    lines = [e.split(":")[0] for e in report.errors]
    assert lines == ["line 3", "line 4", "line 5", "line 6", "line 7"]
    assert "already subscribed" in report.errors[1]
    assert find_subscriber(session, "emmy@example.org").status is SubscriberStatus.PENDING
    assert find_subscriber(session, "ada@example.org").time_zone == "Europe/Paris"


def test_csv_without_header_is_refused(session: Session) -> None:
    with pytest.raises(SubscriberError, match="header"):
        import_csv(session, io.StringIO("ada@example.org,LoRA\n"))


def test_export_round_trips_through_import(session: Session) -> None:
    add_subscriber(session, "ada@example.org", "LoRA, RLHF", exclude="medical",
                   time_zone="Asia/Tokyo", send_hour=6, papers_per_digest=4)
    out = io.StringIO()
    assert export_csv(session, out) == 1
    session.delete(find_subscriber(session, "ada@example.org"))
    session.flush()
    report = import_csv(session, io.StringIO(out.getvalue()))
    assert report.errors == []
    again = find_subscriber(session, "ada@example.org")
    assert (again.profile.topics, again.profile.exclude, again.time_zone, again.send_hour,
            again.papers_per_digest) == ("LoRA, RLHF", "medical", "Asia/Tokyo", 6, 4)


# --- the life cycle -------------------------------------------------------------------------

PREFS = Preferences("LoRA, RLHF", "Europe/Paris", 8, 5)
NOON = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)


def test_read_preferences_names_every_bad_field() -> None:
    with pytest.raises(InvalidForm) as caught:
        read_preferences({"topics": " ", "time_zone": "Nowhere/City", "send_hour": "24",
                          "papers_per_digest": "x"})
    assert set(caught.value.errors) == {"topics", "time_zone", "send_hour", "papers_per_digest"}
    assert read_preferences({"topics": "LoRA"}, "Asia/Tokyo", 6, 3) == Preferences(
        "LoRA", "Asia/Tokyo", 6, 3)


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


@pytest.mark.parametrize("topics", [
    "Buy cheap pills at https://spam.example", "spam.example", "visit www.spam", "SPAM.EXAMPLE",
    "write to me@spam.example", "ftp://x", "10.0.0.1", "node.js", "example。com",
    "xn--80ak6aa92e.com", "LoRA\nsee spam.example/offer",
])
def test_topics_that_a_mail_client_could_turn_into_a_link_are_refused(topics: str) -> None:
    with pytest.raises(InvalidForm) as caught:
        read_preferences({"topics": topics})
    assert "cannot contain web or email addresses" in caught.value.errors["topics"]


@pytest.mark.parametrize("topics", [
    "LoRA, low-rank adaptation", "GPT-4.5, Llama 3.1", "e.g. RLHF, i.e. reward models",
    "U.S. policy", "C++ compilers; Rust", "vision-language models: CLIP et al.", "A/B testing",
])
def test_ordinary_topics_pass(topics: str) -> None:
    assert read_preferences({"topics": topics}).topics == topics


@pytest.mark.parametrize("value", ["²", "٣", "+5", "-1", "1e3", "9" * 5000, "5.0"])
def test_numbers_in_forms_are_plain_digits_in_range(value: str) -> None:
    with pytest.raises(InvalidForm) as caught:
        read_preferences({"topics": "LoRA", "send_hour": value, "papers_per_digest": value})
    assert set(caught.value.errors) == {"send_hour", "papers_per_digest"}
