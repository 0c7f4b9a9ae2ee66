"""Subscribers: validation, case-insensitive duplicates, CSV in and out (both databases)."""

from __future__ import annotations

import io

import pytest
from sqlalchemy.orm import Session

from digest.models import SubscriberStatus
from digest.subscribers import (
    SubscriberError,
    add_subscriber,
    export_csv,
    find_subscriber,
    import_csv,
    normalize_email,
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
