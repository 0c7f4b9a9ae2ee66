"""Subscribers: validation, case-insensitive duplicates, CSV in and out, and the life cycle
(double opt-in, unsubscribe, resubscribe, preferences, history), on both databases."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from digest.models import EventKind, SubscriberStatus
from digest.subscribers import (
    InvalidForm,
    Preferences,
    SignupOutcome,
    SubscriberError,
    add_subscriber,
    confirm,
    export_csv,
    find_subscriber,
    import_csv,
    normalize_email,
    read_preferences,
    record_event,
    request_subscription,
    resubscribe,
    set_topics,
    subscriber_history,
    unsubscribe,
    update_preferences,
)


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


def test_double_opt_in_from_request_to_confirmation(session: Session) -> None:
    first = request_subscription(session, "Ada@Example.org", PREFS, now=NOON)
    assert first.outcome is SignupOutcome.CONFIRMATION and first.notice == "confirm"
    sub = find_subscriber(session, "ada@example.org")
    assert sub is not None and sub.status is SubscriberStatus.PENDING
    assert (sub.time_zone, sub.send_hour, sub.papers_per_digest) == ("Europe/Paris", 8, 5)
    record_event(session, sub.id, EventKind.CONFIRMATION_SENT, "web", now=NOON)
    soon = request_subscription(session, "ada@example.org", PREFS, now=NOON + timedelta(minutes=5))
    assert soon.outcome is SignupOutcome.CONFIRMATION_RECENT and soon.notice is None
    later = request_subscription(session, "ada@example.org", PREFS, now=NOON + timedelta(hours=1))
    assert later.outcome is SignupOutcome.CONFIRMATION
    confirm(session, sub.id, now=NOON + timedelta(hours=2))
    assert sub.status is SubscriberStatus.ACTIVE and sub.confirmed_at is not None
    active = request_subscription(session, "ada@example.org", PREFS)
    assert active.outcome is SignupOutcome.ALREADY_ACTIVE and active.notice == "already_subscribed"


def test_unsubscribe_resubscribe_and_history(session: Session) -> None:
    sub = add_subscriber(session, "ada@example.org", "LoRA", now=NOON)
    unsubscribe(session, sub.id, "web:one-click", now=NOON + timedelta(hours=1))
    unsubscribe(session, sub.id, "web", now=NOON + timedelta(hours=2))  # harmless again
    assert sub.status is SubscriberStatus.UNSUBSCRIBED and sub.unsubscribed_at is not None
    with pytest.raises(SubscriberError, match="before you unsubscribed"):
        confirm(session, sub.id)
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


def test_tokens_are_exactly_what_itsdangerous_makes(tmp_path: Path) -> None:
    from itsdangerous import URLSafeTimedSerializer

    from digest.tokens import Purpose, make_tokens, read_token

    from .conftest import make_settings

    settings = make_settings(tmp_path)
    for subscriber_id in (0, 1, 42, 99_999, 123_456_789, 999_999_999, 10**9, 10**18):
        tokens = make_tokens(settings, subscriber_id, list(Purpose))
        for purpose, token in tokens.items():
            reference = URLSafeTimedSerializer(settings.signing_key(),
                                               salt=f"paper-digest:{purpose.value}")
            assert token == reference.dumps(subscriber_id)  # same second: same token
            assert read_token(settings, purpose, token) == subscriber_id
