"""Subscribers: add, validate, change topics, remove, move them in and out of CSV, and their
life cycle: subscribe (double opt-in), confirm, change preferences, pause, unsubscribe,
resubscribe, each step recorded in their history (`subscriber_events`).

Every door (CLI, web form, CSV import) goes through `add_subscriber`, so an address is
validated and normalised the same way everywhere and duplicates are caught whatever their case.
The web app is a thin door over `signup`, `confirm_request`, `update_preferences`,
`unsubscribe` and `resubscribe`; what a visitor types on the subscribe form is kept as a
`SignupRequest` and reaches a subscriber only when the address's owner confirms it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from .models import (
    Delivery,
    EventKind,
    SignupOutcome,
    SignupRequest,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    TopicProfile,
)
from .settings import Settings
from .tokens import Claim

CSV_FIELDS = [
    "email",
    "topics",
    "exclude",
    "status",
    "time_zone",
    "send_hour",
    "papers_per_digest",
    "trending_fallback",
    "created_at",
    "confirmed_at",
]
MAX_TOPICS_LENGTH = 2000
EARLIEST_CSV_DATETIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_PAPERS_PER_DIGEST = 50


class SubscriberError(ValueError):
    """Input that cannot become a subscriber; the message is fit to show the user."""


class InvalidForm(SubscriberError):
    """Form fields that cannot be used, each with a message fit to show next to it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def normalize_email(raw: str) -> str:
    """Validate an address and return its normalised form (domain lower-cased, IDNA-checked)."""
    candidate = (raw or "").strip()
    if not candidate:
        raise SubscriberError("An email address is required.")
    if any(ch in candidate for ch in "\r\n\t\x00") or len(candidate) > 320:
        raise SubscriberError(f"{candidate[:60]!r} is not a valid email address.")
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{candidate!r} is not a valid email address: {exc}") from exc
    return result.normalized


def validate_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SubscriberError(
            f"{name!r} is not a known time zone; use an IANA name such as Europe/Paris."
        ) from exc
    return name


def validate_send_hour(hour: int) -> int:
    if not 0 <= int(hour) <= 23:
        raise SubscriberError(f"Send hour {hour} must be from 0 to 23.")
    return int(hour)


def validate_papers_per_digest(count: int) -> int:
    if not 1 <= int(count) <= MAX_PAPERS_PER_DIGEST:
        raise SubscriberError(f"Papers per digest must be from 1 to {MAX_PAPERS_PER_DIGEST}.")
    return int(count)


def clean_topics(text: str) -> str:
    """Topics as the subscriber typed them, without control characters, bounded in length.

    Empty when there is no word in them at all (" , , ", "--"): nothing could ever match,
    and every door (CLI, web form, CSV import) already refuses empty topics.
    """
    cleaned = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in (text or ""))
    cleaned = " ".join(cleaned.split()) if "\n" not in cleaned else cleaned.strip()
    if len(cleaned) > MAX_TOPICS_LENGTH:
        raise SubscriberError(f"Topics are limited to {MAX_TOPICS_LENGTH} characters.")
    if not any(ch.isalnum() for ch in cleaned):
        return ""
    return cleaned


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """Look an address up whatever its case."""
    return session.scalars(
        select(Subscriber).where(func.lower(Subscriber.email) == email.strip().lower())
    ).one_or_none()


def get_subscriber(session: Session, email: str) -> Subscriber:
    subscriber = find_subscriber(session, email)
    if subscriber is None:
        raise SubscriberError(f"No subscriber with the address {email!r}.")
    return subscriber


def add_subscriber(
    session: Session,
    email: str,
    topics: str,
    *,
    exclude: str = "",
    time_zone: str = "UTC",
    send_hour: int = 7,
    papers_per_digest: int = 10,
    trending_fallback: bool = False,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    now: datetime | None = None,
) -> Subscriber:
    """Create a subscriber with a topic profile; SubscriberError on bad input or a duplicate."""
    address = normalize_email(email)
    if find_subscriber(session, address) is not None:
        raise SubscriberError(f"{address} is already subscribed.")
    topics = clean_topics(topics)
    if not topics:
        raise SubscriberError("Give at least one topic, e.g. 'LoRA, activation sparsity'.")
    now = now or datetime.now(timezone.utc)
    subscriber = Subscriber(
        email=address,
        status=status,
        time_zone=validate_time_zone(time_zone),
        send_hour=validate_send_hour(send_hour),
        papers_per_digest=validate_papers_per_digest(papers_per_digest),
        created_at=now,
        confirmed_at=now if status is SubscriberStatus.ACTIVE else None,
    )
    subscriber.profile = TopicProfile(
        topics=topics, exclude=clean_topics(exclude), trending_fallback=trending_fallback
    )
    session.add(subscriber)
    session.flush()
    return subscriber


def set_topics(
    session: Session, email: str, topics: str, exclude: str | None = None
) -> Subscriber:
    subscriber = get_subscriber(session, email)
    topics = clean_topics(topics)
    if not topics:
        raise SubscriberError("Give at least one topic.")
    subscriber.profile.topics = topics
    if exclude is not None:
        subscriber.profile.exclude = clean_topics(exclude)
    session.flush()
    return subscriber


def remove_subscriber(session: Session, email: str) -> None:
    """Delete a subscriber and their history (use unsubscribe to keep the record)."""
    session.delete(get_subscriber(session, email))
    session.flush()


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line 4: 'x@' is not a valid ..."

    def summary(self) -> str:
        return f"{len(self.imported)} imported, {len(self.errors)} rejected"


def import_csv(
    session: Session, stream: IO[str], default_status: SubscriberStatus = SubscriberStatus.ACTIVE
) -> ImportReport:
    """Import subscribers from CSV with a header row (`email,topics` at least).

    Each bad line is reported with its number and reason; every valid line is imported.
    A file that cannot be read as CSV text (binary, compressed, UTF-16) raises
    SubscriberError: the caller rolls back, and nothing of it is kept. Cells neutralised by
    `spreadsheet_cell` come back as they were, and so do the dates of an export.
    """
    report = ImportReport()
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
                    subscriber = _import_row(session, row, default_status)
                report.imported.append(subscriber.email)
            except SubscriberError as exc:
                report.errors.append(f"line {reader.line_num}: {exc}")
    except csv.Error as exc:
        raise SubscriberError(
            f"Line {reader.line_num + 1} cannot be read as CSV ({exc}); nothing was imported."
        ) from exc
    return report


def _import_row(
    session: Session, raw: Mapping[str | None, str | None], default_status: SubscriberStatus
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
    subscriber = add_subscriber(
        session,
        row.get("email", ""),
        row.get("topics", ""),
        exclude=row.get("exclude", ""),
        time_zone=row.get("time_zone") or "UTC",
        send_hour=_int(row.get("send_hour"), 7, "send_hour"),
        papers_per_digest=_int(row.get("papers_per_digest"), 10, "papers_per_digest"),
        trending_fallback=_bool(row.get("trending_fallback")),
        status=_status(row.get("status"), default_status),
        now=now,
    )
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
        "trending_fallback": int(bool(sub.profile and sub.profile.trending_fallback)),
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


def list_subscribers(
    session: Session, status: SubscriberStatus | None = None
) -> Iterable[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.id)
    if status is not None:
        query = query.where(Subscriber.status == status)
    return session.scalars(query)


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


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "y", "on")


def _status(value: str | None, default: SubscriberStatus) -> SubscriberStatus:
    if not value:
        return default
    try:
        return SubscriberStatus(value.lower())
    except ValueError as exc:
        names = ", ".join(s.value for s in SubscriberStatus)
        raise SubscriberError(f"status {value!r} is not one of {names}.") from exc


# --- The life cycle: history --------------------------------------------------------------


def record_event(
    session: Session,
    subscriber_id: int,
    kind: EventKind,
    source: str,
    detail: str = "",
    now: datetime | None = None,
) -> SubscriberEvent:
    event = SubscriberEvent(
        subscriber_id=subscriber_id,
        kind=kind,
        source=source[:64],
        detail=detail[:1000],
        created_at=now or datetime.now(timezone.utc),
    )
    session.add(event)
    return event


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    what: str  # an EventKind value, or "delivery"
    detail: str
    source: str


def subscriber_history(session: Session, subscriber: Subscriber) -> list[HistoryEntry]:
    """Everything that happened to a subscriber, oldest first: their events and deliveries."""
    entries = [
        HistoryEntry(e.created_at, e.kind.value, e.detail, e.source)
        for e in session.scalars(
            select(SubscriberEvent)
            .where(SubscriberEvent.subscriber_id == subscriber.id)
            .order_by(SubscriberEvent.id)
        )
    ]
    for d in session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber.id)):
        papers = f"{d.paper_count} paper{'' if d.paper_count == 1 else 's'}"
        detail = f"digest of {d.digest_date}: {d.status.value}, {papers}"
        if d.error:
            detail += f" ({d.error[:120]})"
        entries.append(HistoryEntry(d.sent_at or d.claimed_at, "delivery", detail, "pipeline"))
    return sorted(entries, key=lambda e: e.at)


def last_event_at(session: Session, subscriber_id: int, kind: EventKind) -> datetime | None:
    return session.scalar(
        select(func.max(SubscriberEvent.created_at)).where(
            SubscriberEvent.subscriber_id == subscriber_id, SubscriberEvent.kind == kind
        )
    )


# --- The life cycle: preferences ----------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """What a subscriber chooses on the subscribe and preferences pages."""

    topics: str
    time_zone: str
    send_hour: int
    papers_per_digest: int


def read_preferences(
    values: Mapping[str, str], default_time_zone: str = "UTC", default_send_hour: int = 7,
    default_papers: int = 10,
) -> Preferences:
    """Preferences from form fields (strings); InvalidForm names each field that is wrong."""
    errors: dict[str, str] = {}
    topics = ""
    try:
        topics = clean_topics(values.get("topics", ""))
        if not topics:
            errors["topics"] = "Give at least one topic, e.g. “LoRA, activation sparsity”."
        elif (found := link_like_text(topics)) is not None:
            errors["topics"] = (
                f"Topics cannot contain web or email addresses (“{found[:60]}”): "
                "write the words alone, e.g. “node js” for node.js."
            )
    except SubscriberError as exc:
        errors["topics"] = str(exc)
    time_zone = (values.get("time_zone") or "").strip() or default_time_zone
    try:
        validate_time_zone(time_zone)
    except SubscriberError:
        errors["time_zone"] = "Choose a time zone from the list, e.g. Europe/Paris."
    send_hour = _form_int(values, "send_hour", default_send_hour, 0, 23, errors,
                          "Choose an hour from 0 to 23.")
    papers = _form_int(values, "papers_per_digest", default_papers, 1, MAX_PAPERS_PER_DIGEST,
                       errors, f"Choose from 1 to {MAX_PAPERS_PER_DIGEST} papers.")
    if errors:
        raise InvalidForm(errors)
    return Preferences(topics, time_zone, send_hour, papers)


_DOT = r"[.\u3002\uff0e\uff61]"  # mail clients take the ideographic and full-width dots too
_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
_LINK_LIKE = re.compile(
    rf"""
    [a-z][a-z0-9+.-]*:/+            # a scheme: https://, ftp://, file:///
    | \bwww{_DOT}                   # www. without a scheme
    | [^\s@,;]@[^\s@,;]             # an email address, or the start of one
    | \b\d{{1,3}}(?:{_DOT}\d{{1,3}}){{3}}\b   # an IPv4 address
    | \b{_LABEL}(?:{_DOT}{_LABEL})*{_DOT}[^\W\d_]{{2,}}\b  # a domain: spam.example, node.js
    """,
    re.IGNORECASE | re.VERBOSE,
)


def link_like_text(text: str) -> str | None:
    """The first piece of `text` that a mail client could turn into a link, if any.

    Topics appear in emails sent to addresses a visitor typed, so they must carry no
    address of any kind: "Buy pills at spam.example" would arrive as a clickable link.
    """
    match = _LINK_LIKE.search(text)
    return match.group(0) if match else None


def _form_int(
    values: Mapping[str, str], name: str, default: int, low: int, high: int,
    errors: dict[str, str], message: str,
) -> int:
    raw = (values.get(name) or "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        errors[name] = message
        return default
    number = int(raw)
    if not low <= number <= high:
        errors[name] = message
    return number


def _apply_preferences(subscriber: Subscriber, prefs: Preferences) -> list[str]:
    """Set `prefs` on a subscriber; returns what changed, for the history."""
    changes = []
    if subscriber.profile.topics != prefs.topics:
        changes.append(f"topics: {prefs.topics[:200]}")
        subscriber.profile.topics = prefs.topics
    if subscriber.time_zone != prefs.time_zone:
        changes.append(f"time zone: {prefs.time_zone}")
        subscriber.time_zone = prefs.time_zone
    if subscriber.send_hour != prefs.send_hour:
        changes.append(f"hour: {prefs.send_hour:02d}:00")
        subscriber.send_hour = prefs.send_hour
    if subscriber.papers_per_digest != prefs.papers_per_digest:
        changes.append(f"papers: {prefs.papers_per_digest}")
        subscriber.papers_per_digest = prefs.papers_per_digest
    return changes


def update_preferences(
    session: Session,
    subscriber_id: int,
    prefs: Preferences,
    paused: bool,
    source: str = "web",
    now: datetime | None = None,
) -> list[str]:
    """Save a subscriber's preferences; they apply from the next digest. Returns the changes."""
    now = now or datetime.now(timezone.utc)
    subscriber = subscriber_by_id(session, subscriber_id)
    changes = _apply_preferences(subscriber, prefs)
    if changes:
        record_event(session, subscriber.id, EventKind.PREFERENCES_CHANGED, source,
                     "; ".join(changes), now)
    if paused != subscriber.paused:
        subscriber.paused = paused
        kind = EventKind.PAUSED if paused else EventKind.RESUMED
        record_event(session, subscriber.id, kind, source, "", now)
        changes.append("paused" if paused else "resumed")
    session.flush()
    return changes


def subscriber_by_id(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise UnknownSubscriber("This subscription no longer exists.")
    return subscriber


class UnknownSubscriber(SubscriberError):
    """A signed link names a subscriber who has since been deleted."""


def linked_subscriber(session: Session, claim: Claim) -> Subscriber:
    """The subscriber a signed link was made for; UnknownSubscriber if that person is gone.

    The id alone may name someone else (see tokens.py): the row must also be the one the
    link's key was made for.
    """
    subscriber = session.get(Subscriber, claim.id)
    if subscriber is None or not claim.binds(subscriber.link_key, subscriber.created_at):
        raise UnknownSubscriber("This subscription no longer exists.")
    return subscriber


# --- The life cycle: double opt-in -------------------------------------------------------
#
# The subscribe form only records a SignupRequest (what the visitor chose); it never
# changes a stored subscriber. Processing the request (`process_signup_request`, in the
# background after the form's transaction) decides which email it earns: a new address
# becomes a pending subscriber, an active one's owner is told, a suppressed one gets
# nothing. The request's choices reach the subscriber only through its confirmation link.

NOTICE_FOR = {SignupOutcome.CONFIRMATION: "confirm",
              SignupOutcome.ALREADY_ACTIVE: "already_subscribed"}


@dataclass(frozen=True)
class Signup:
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
    from .suppressions import is_suppressed

    now = now or datetime.now(timezone.utc)
    request = session.get(SignupRequest, request_id)
    if request is None:
        raise UnknownSignup("This subscribe request no longer exists.")
    if request.outcome is not SignupOutcome.RECEIVED:
        return _signup_of(request)
    subscriber = find_subscriber(session, request.email)
    if is_suppressed(session, request.email):
        outcome = SignupOutcome.SUPPRESSED
    elif subscriber is None:
        subscriber = add_subscriber(
            session, request.email, request.topics, time_zone=request.time_zone,
            send_hour=request.send_hour, papers_per_digest=request.papers_per_digest,
            status=SubscriberStatus.PENDING, now=now,
        )
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
    return _signup_of(request)


def _signup_of(request: SignupRequest) -> Signup:
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
    return Preferences(request.topics, request.time_zone, request.send_hour,
                       request.papers_per_digest)


@dataclass(frozen=True)
class Confirmation:
    subscriber: Subscriber
    already: bool  # they were active before: nothing changed


def confirm_request(
    session: Session, claim: Claim, source: str = "web", now: datetime | None = None
) -> Confirmation:
    """Activate the subscriber a confirmation link names, with that request's choices.

    Following the link proves the mailbox is theirs, so only now does what the form asked
    for become their profile. Safe to repeat; an active subscriber is left as they are.
    """
    from .suppressions import is_suppressed

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
    changes = _apply_preferences(subscriber, preferences_of(request))
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
    from .suppressions import is_suppressed

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


def signup(
    settings: Settings,
    values: Mapping[str, str],
    client: str,
    source: str = "web",
    now: datetime | None = None,
) -> Signup:
    """The subscribe form: rate limits, validation, and the request recorded for the sender.

    Raises RateLimited (too many attempts from `client`, or for the address) or InvalidForm
    (per field). Otherwise the same work is done whatever the address is (new, pending,
    active or suppressed), and the email it earns goes out in the background, after this
    transaction: the answer, and its timing, tell the visitor nothing about the address.
    """
    from . import db, notices, ratelimit

    per_client = ratelimit.hit(settings.redis_url, "subscribe-client", client,
                               settings.subscribe_rate_limit_per_hour, 3600)
    if not per_client.allowed:
        raise ratelimit.RateLimited(
            "Too many subscribe requests from your network. Please try again later.",
            per_client.retry_after,
        )
    address, prefs = _read_signup_form(settings, values)
    limit = settings.subscribe_address_limit_per_day
    per_address = ratelimit.hit(settings.redis_url, "subscribe-address", address, limit, 86400)
    now = now or datetime.now(timezone.utc)
    with db.session_scope(settings) as session:
        if not per_address.counted and limit > 0:
            # Redis is down: the requests of the last day are the count.
            day_ago = now - timedelta(days=1)
            per_address = ratelimit.Verdict(
                signup_requests_since(session, address, day_ago) < limit, 0, limit, 3600)
        if not per_address.allowed:
            # Says nothing about the address itself: only that it was asked for too often.
            raise ratelimit.RateLimited(
                "This address was submitted too many times today. Please try again tomorrow.",
                per_address.retry_after,
            )
        request = record_signup_request(session, address, prefs, source=source, now=now)
        result = _signup_of(request)
    notices.send_in_background(settings, request.id)
    return result


def _read_signup_form(settings: Settings, values: Mapping[str, str]) -> tuple[str, Preferences]:
    """The address and choices of the subscribe form; InvalidForm names each bad field."""
    errors: dict[str, str] = {}
    address = ""
    try:
        address = normalize_email(values.get("email", ""))
    except SubscriberError as exc:
        errors["email"] = str(exc)
    try:
        prefs = read_preferences(values, settings.default_time_zone,
                                 settings.default_send_hour, settings.default_papers_per_digest)
    except InvalidForm as exc:
        errors.update(exc.errors)
    if errors:
        raise InvalidForm(errors)
    return address, prefs
