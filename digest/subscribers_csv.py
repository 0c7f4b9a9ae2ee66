"""Subscribers in and out of CSV: `digest subscribers import/export`.

One bad line fails alone (its reason is reported with its line number); every cell is checked
into range before it reaches the database; exported cells that a spreadsheet would run as a
formula are quoted (OWASP's CSV injection advice), and import takes the quote off again.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import (
    Cadence,
    Subscriber,
    SubscriberStatus,
)
from .settings import Settings
from .subscribers import (
    WEEKDAY_KEYS,
    SubscriberError,
    add_subscriber,
    default_papers,
    parse_cadence,
    parse_weekday,
)

CSV_FIELDS = [
    "email",
    "topics",
    "exclude",
    "status",
    "time_zone",
    "send_hour",
    "papers_per_digest",
    "cadence",
    "weekday",
    "trending_fallback",
    "click_tracking",
    "created_at",
    "confirmed_at",
]
EARLIEST_CSV_DATETIME = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class ImportReport:
    """What an import did: the addresses it added, and each rejected line with its reason."""

    imported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line 4: 'x@' is not a valid ..."

    def summary(self) -> str:
        return f"{len(self.imported)} imported, {len(self.errors)} rejected"


def import_csv(
    session: Session,
    stream: IO[str],
    default_status: SubscriberStatus = SubscriberStatus.ACTIVE,
    settings: Settings | None = None,
) -> ImportReport:
    """Import subscribers from CSV with a header row (`email,topics` at least).

    Each bad line is reported with its number and reason; every valid line is imported. A
    column left out or a cell left empty takes its default: daily, click tracking and the
    trending fallback off, and, with `settings`, DEFAULT_TIME_ZONE, DEFAULT_SEND_HOUR and
    DEFAULT_PAPERS_PER_DIGEST papers (a weekly reader WEEKLY_PAPERS_PER_DIGEST), as a reader
    added by the CLI or the web gets; without settings, those settings' defaults.
    A file that cannot be read as CSV text (binary, compressed, UTF-16) raises
    SubscriberError: the caller rolls back, and nothing of it is kept. Cells neutralised by
    `spreadsheet_cell` come back as they were, and so do the dates of an export.
    """
    report = ImportReport()
    defaults = settings or Settings()
    reader = csv.DictReader(_text_lines(stream))
    try:
        if not reader.fieldnames or "email" not in [
            f.strip().lower() for f in reader.fieldnames
        ]:
            raise SubscriberError(
                "The CSV needs a header row with at least 'email' and 'topics'."
            )
        for row in reader:
            try:
                with session.begin_nested():
                    subscriber = _import_row(session, row, default_status, defaults)
                report.imported.append(subscriber.email)
            except SubscriberError as exc:
                report.errors.append(f"line {reader.line_num}: {exc}")
    except csv.Error as exc:
        raise SubscriberError(
            f"Line {reader.line_num + 1} cannot be read as CSV ({exc}); nothing was imported."
        ) from exc
    return report


def _import_row(
    session: Session,
    raw: Mapping[str | None, str | None],
    default_status: SubscriberStatus,
    defaults: Settings,
) -> Subscriber:
    """One CSV row as a new subscriber; SubscriberError says what is wrong with it."""
    row = {
        key.strip().lower(): from_spreadsheet_cell((value or "").strip())
        for key, value in raw.items()
        if key and isinstance(value, str | None)
    }
    now = datetime.now(timezone.utc)
    created_at = _csv_datetime(row.get("created_at"), "created_at", now)
    confirmed_at = _csv_datetime(row.get("confirmed_at"), "confirmed_at", now)
    cadence = parse_cadence(row["cadence"]) if row.get("cadence") else Cadence.DAILY
    length = default_papers(defaults, cadence)
    click_tracking = _bool(row.get("click_tracking"), "click_tracking")
    subscriber = add_subscriber(
        session,
        row.get("email", ""),
        row.get("topics", ""),
        exclude=row.get("exclude", ""),
        time_zone=row.get("time_zone") or defaults.default_time_zone,
        send_hour=_int(row.get("send_hour"), defaults.default_send_hour, "send_hour"),
        papers_per_digest=_int(row.get("papers_per_digest"), length, "papers_per_digest"),
        trending_fallback=_bool(row.get("trending_fallback"), "trending_fallback"),
        status=_status(row.get("status"), default_status),
        now=now,
        cadence=cadence,
        send_weekday=parse_weekday(row["weekday"]) if row.get("weekday") else 0,
    )
    subscriber.click_tracking = click_tracking
    # An export's dates come back: when someone subscribed and confirmed is their record.
    subscriber.created_at = created_at or subscriber.created_at
    subscriber.confirmed_at = confirmed_at or subscriber.confirmed_at
    return subscriber


NOT_CSV_TEXT = (
    "The file is not UTF-8 text (binary, compressed or UTF-16?): save it as \"CSV UTF-8\" "
    "and import that."
)


def _text_lines(stream: IO[str]) -> Iterator[str]:
    """The stream's lines; SubscriberError at the first sign that it is not text."""
    try:
        for line in stream:
            if "\x00" in line:  # UTF-16 and binary files; no text has it
                raise SubscriberError(NOT_CSV_TEXT)
            yield line
    except UnicodeDecodeError as exc:
        raise SubscriberError(NOT_CSV_TEXT) from exc


def export_csv(session: Session, stream: IO[str]) -> int:
    """Write every subscriber as CSV with a header row; returns how many."""
    subscribers = session.scalars(select(Subscriber).order_by(Subscriber.id))
    return write_csv(stream, CSV_FIELDS, (_csv_row(sub) for sub in subscribers))


def _csv_row(sub: Subscriber) -> dict[str, object]:
    return {
        "email": sub.email,
        "topics": sub.profile.topics if sub.profile else "",
        "exclude": sub.profile.exclude if sub.profile else "",
        "status": sub.status.value,
        "time_zone": sub.time_zone,
        "send_hour": sub.send_hour,
        "papers_per_digest": sub.papers_per_digest,
        "cadence": sub.cadence.value,
        "weekday": WEEKDAY_KEYS[sub.send_weekday % 7],
        "trending_fallback": int(bool(sub.profile and sub.profile.trending_fallback)),
        "click_tracking": int(sub.click_tracking),
        "created_at": sub.created_at.isoformat(),
        "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else "",
    }


# OWASP's CSV injection advice: a spreadsheet runs a cell that starts with one of these.
FORMULA_STARTS = frozenset("=+-@\t\r")


def write_csv(
    stream: IO[str], fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]
) -> int:
    """Write a header and rows as CSV that is safe to open in a spreadsheet; returns how
    many rows. Every CSV the project writes goes through here.

    Anyone can put text in a cell (the subscribe form takes any topics), so each cell goes
    through `spreadsheet_cell`, and each is quoted: a ';' or a tab inside a value cannot
    start a new cell in a spreadsheet that splits on it.
    """
    writer = csv.writer(stream, quoting=csv.QUOTE_ALL)
    writer.writerow(fieldnames)
    count = 0
    for row in rows:
        writer.writerow([spreadsheet_cell(row.get(name)) for name in fieldnames])
        count += 1
    return count


def spreadsheet_cell(value: object) -> str:
    """`value` as a cell a spreadsheet shows as text and never runs as a formula.

    A value that starts with =, +, -, @, a tab or a carriage return (or a space before one)
    gets a leading apostrophe, as OWASP advises; `from_spreadsheet_cell` takes it off. So
    that this is exact, a value whose leading apostrophes come before such a character
    gets one more as well.
    """
    text = "" if value is None else str(value)
    return "'" + text if _starts_formula(text) else text


def from_spreadsheet_cell(cell: str) -> str:
    """The value `spreadsheet_cell` made `cell` from; any other cell is left as it is."""
    return cell[1:] if cell.startswith("'") and _starts_formula(cell) else cell


def _starts_formula(text: str) -> bool:
    head = text.lstrip("'")[:1]
    return head in FORMULA_STARTS or head.isspace()



def _int(value: str | None, default: int, name: str) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise SubscriberError(f"{name} {value!r} is not a whole number.") from exc


def _csv_datetime(value: str | None, name: str, now: datetime) -> datetime | None:
    """An ISO date and time from a CSV cell (UTC when it has no offset), from 1970 to now."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        in_range = EARLIEST_CSV_DATETIME <= moment <= now
    except (ValueError, OverflowError) as exc:
        raise SubscriberError(
            f"{name} {value[:40]!r} is not a date and time like 2026-11-23T07:00:00+00:00."
        ) from exc
    if not in_range:
        raise SubscriberError(f"{name} {value[:40]!r} must be from 1970 to now.")
    return moment


TRUE_CELLS = frozenset({"1", "true", "yes", "y", "on"})
FALSE_CELLS = frozenset({"", "0", "false", "no", "n", "off"})


def _bool(value: str | None, name: str) -> bool:
    """A yes/no cell; anything else is refused rather than read as "no"."""
    cell = (value or "").strip().lower()
    if cell in TRUE_CELLS:
        return True
    if cell not in FALSE_CELLS:
        raise SubscriberError(f"{name} {(value or '')[:20]!r} is not 1 or 0 (yes or no).")
    return False


def _status(value: str | None, default: SubscriberStatus) -> SubscriberStatus:
    if not value:
        return default
    try:
        return SubscriberStatus(value.lower())
    except ValueError as exc:
        names = ", ".join(s.value for s in SubscriberStatus)
        raise SubscriberError(f"status {value!r} is not one of {names}.") from exc


