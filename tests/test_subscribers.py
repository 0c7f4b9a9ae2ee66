"""Subscribers: validation, case-insensitive duplicates and preferences, on both databases
(CSV is in test_subscribers_csv.py, the life cycle in test_lifecycle.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from digest.subscribers import (
    InvalidForm,
    Preferences,
    SubscriberError,
    add_subscriber,
    find_subscriber,
    normalize_email,
    read_preferences,
    set_topics,
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


def test_set_topics_restarts_the_learning_for_new_topics_only(session: Session) -> None:
    """The profile's updated_at is when its topics last changed: feedback learning and
    `digest prune` start from it. New words to exclude are not new topics (the CLI's
    set-topics --exclude, as on the preferences page)."""
    sub = add_subscriber(session, "ada@example.org", "LoRA, RLHF")
    learning_since = datetime.now(timezone.utc) - timedelta(days=30)
    sub.profile.updated_at = learning_since
    session.flush()

    set_topics(session, "ada@example.org", "LoRA, RLHF", exclude="medical")
    session.expire_all()
    assert (sub.profile.exclude, sub.profile.updated_at) == ("medical", learning_since)

    set_topics(session, "ada@example.org", "diffusion models", exclude="medical")
    session.expire_all()
    assert sub.profile.updated_at > learning_since + timedelta(days=29)


def test_read_preferences_names_every_bad_field() -> None:
    with pytest.raises(InvalidForm) as caught:
        read_preferences({"topics": " ", "time_zone": "Nowhere/City", "send_hour": "24",
                          "papers_per_digest": "x"})
    assert set(caught.value.errors) == {"topics", "time_zone", "send_hour", "papers_per_digest"}
    assert read_preferences({"topics": "LoRA"}, "Asia/Tokyo", 6, 3) == Preferences(
        "LoRA", "Asia/Tokyo", 6, 3)



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


def test_subscribers_and_the_suppression_list_do_not_import_each_other() -> None:
    # The life cycle (which checks the suppression list) sits above both; a cycle would
    # come back as an import inside a function, so every import in the module counts.
    import ast
    from pathlib import Path

    import digest

    def imported(module: str) -> set[str]:
        tree = ast.parse((Path(digest.__file__).parent / f"{module}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):  # `from .x import y`, `from . import x`
                found |= {node.module} if node.module else {a.name for a in node.names}
        return found

    assert not imported("subscribers") & {"suppressions", "lifecycle", "subscribe_form", "notices"}
    assert not imported("suppressions") & {"lifecycle", "subscribe_form", "notices"}


def test_change_preferences_checks_everything_first_then_saves_one_history_entry(
    session: Session,
) -> None:
    from sqlalchemy import select

    from digest.models import Cadence, SubscriberEvent
    from digest.subscribers import change_preferences

    sub = add_subscriber(session, "ada@example.org", "LoRA", papers_per_digest=5)
    with pytest.raises(SubscriberError, match="Papers per digest"):
        change_preferences(session, "ada@example.org", cadence=Cadence.WEEKLY,
                           papers_per_digest=99)
    assert (sub.cadence, sub.papers_per_digest) == (Cadence.DAILY, 5)
    _, changes = change_preferences(session, "ADA@example.org", cadence=Cadence.WEEKLY,
                                    send_weekday=6, click_tracking=True)
    assert changes == ["cadence: weekly on Sunday", "click tracking: on"]
    assert (sub.cadence, sub.send_weekday, sub.click_tracking, sub.papers_per_digest,
            sub.profile.topics) == (Cadence.WEEKLY, 6, True, 5, "LoRA")
    events = session.scalars(select(SubscriberEvent.detail)).all()
    assert events == ["cadence: weekly on Sunday; click tracking: on"]
    assert change_preferences(session, "ada@example.org", send_weekday=6)[1] == []


@pytest.mark.parametrize("text, number", [("mon", 0), ("Fri", 4), ("SUNDAY", 6), ("thurs", 3)])
def test_weekdays_are_read_by_name(text: str, number: int) -> None:
    from digest.subscribers import parse_weekday

    assert parse_weekday(text) == number


@pytest.mark.parametrize("text", ["", "0", "7", "fr", "sunday!", "friyay", "monday2"])
def test_a_weekday_that_is_no_name_is_refused(text: str) -> None:
    from digest.subscribers import parse_weekday

    with pytest.raises(SubscriberError, match="is not one of mon, tue"):
        parse_weekday(text)
