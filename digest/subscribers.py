"""Subscribers: add, validate, change topics, remove, find; their preferences and their
history (`subscriber_events`).

Every door (CLI, web form, CSV import) goes through `add_subscriber`, so an address is
validated and normalised the same way everywhere and duplicates are caught whatever their case.
The double opt-in life cycle (sign-up requests, confirmation, unsubscribe, resubscribe) is in
`lifecycle.py`, the subscribe form in `subscribe_form.py`, CSV in `subscribers_csv.py`; this
module imports none of them, nor the suppression list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from .models import (
    WEEKDAYS,
    Cadence,
    Delivery,
    EventKind,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    TopicProfile,
)
from .settings import MAX_PAPERS_PER_DIGEST
from .tokens import Claim

if TYPE_CHECKING:
    from .settings import Settings

MAX_TOPICS_LENGTH = 2000


class SubscriberError(ValueError):
    """Input that cannot become a subscriber; the message is fit to show the user."""


class DuplicateAddress(SubscriberError):
    """The address already has a subscriber (whatever its case)."""


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


def validate_weekday(weekday: int) -> int:
    if not 0 <= int(weekday) <= 6:
        raise SubscriberError(f"Weekday {weekday} must be from 0 (Monday) to 6 (Sunday).")
    return int(weekday)


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
    cadence: Cadence = Cadence.DAILY,
    send_weekday: int = 0,
) -> Subscriber:
    """Create a subscriber with a topic profile; SubscriberError on bad input or a duplicate."""
    address = normalize_email(email)
    if find_subscriber(session, address) is not None:
        raise DuplicateAddress(f"{address} is already subscribed.")
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
        cadence=cadence,
        send_weekday=validate_weekday(send_weekday),
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
    """Replace a subscriber's topics and, given, their words to exclude (the CLI's set-topics).

    New topics restart the profile's learning (its updated_at, as on the preferences page);
    the same topics with other words to exclude do not (`_keep_learning`).
    """
    subscriber = get_subscriber(session, email)
    topics = clean_topics(topics)
    if not topics:
        raise SubscriberError("Give at least one topic.")
    profile = subscriber.profile
    exclude = profile.exclude if exclude is None else clean_topics(exclude)
    if profile.topics == topics and profile.exclude != exclude:
        _keep_learning(profile)
    profile.topics, profile.exclude = topics, exclude
    session.flush()
    return subscriber


def remove_subscriber(session: Session, email: str) -> None:
    """Delete a subscriber and their history (use unsubscribe to keep the record)."""
    session.delete(get_subscriber(session, email))
    session.flush()


def list_subscribers(
    session: Session, status: SubscriberStatus | None = None
) -> Iterable[Subscriber]:
    """Every subscriber, or those with one status, oldest first."""
    query = select(Subscriber).order_by(Subscriber.id)
    if status is not None:
        query = query.where(Subscriber.status == status)
    return session.scalars(query)


# --- History --------------------------------------------------------------


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


# --- Preferences ---------------------------------------------------------------------




@dataclass(frozen=True)
class Preferences:
    """What a subscriber chooses on the subscribe and preferences pages."""

    topics: str
    time_zone: str
    send_hour: int
    papers_per_digest: int
    exclude: str = ""  # words that keep a paper out, comma-separated like the topics
    trending_fallback: bool = False  # nothing matched: send the day's trending papers
    cadence: Cadence = Cadence.DAILY
    send_weekday: int = 0  # a weekly digest's day, Monday 0 (datetime.weekday())
    click_tracking: bool = False  # paper links go through the counting redirect


def read_preferences(
    values: Mapping[str, str], default_time_zone: str = "UTC", default_send_hour: int = 7,
    default_papers: int = 10, default_weekly_papers: int | None = None,
) -> Preferences:
    """Preferences from form fields (strings); InvalidForm names each field that is wrong.
    With no length chosen, a weekly reader gets `default_weekly_papers` (when given)."""
    errors: dict[str, str] = {}
    cadence = Cadence.DAILY
    try:
        cadence = Cadence((values.get("cadence") or Cadence.DAILY.value).strip())
    except ValueError:
        errors["cadence"] = "Choose daily or weekly."
    if cadence is Cadence.WEEKLY and default_weekly_papers is not None:
        default_papers = default_weekly_papers
    topics = _words_field(values, "topics", "Topics", errors)
    if not topics and "topics" not in errors:
        errors["topics"] = "Give at least one topic, e.g. “LoRA, activation sparsity”."
    exclude = _words_field(values, "exclude", "Words to exclude", errors)
    time_zone = (values.get("time_zone") or "").strip() or default_time_zone
    try:
        validate_time_zone(time_zone)
    except SubscriberError:
        errors["time_zone"] = "Choose a time zone from the list, e.g. Europe/Paris."
    send_hour = _form_int(values, "send_hour", default_send_hour, 0, 23, errors,
                          "Choose an hour from 0 to 23.")
    papers = _form_int(values, "papers_per_digest", default_papers, 1, MAX_PAPERS_PER_DIGEST,
                       errors, f"Choose from 1 to {MAX_PAPERS_PER_DIGEST} papers.")
    weekday = _form_int(values, "send_weekday", 0, 0, 6, errors,
                        "Choose a day of the week from the list.")
    if errors:
        raise InvalidForm(errors)
    return Preferences(topics, time_zone, send_hour, papers, exclude=exclude,
                       trending_fallback=_form_flag(values, "trending_fallback"),
                       cadence=cadence, send_weekday=weekday,
                       click_tracking=_form_flag(values, "click_tracking"))


def _words_field(
    values: Mapping[str, str], name: str, label: str, errors: dict[str, str]
) -> str:
    """Topics or words to exclude: cleaned, and refused (in `errors`) if they hold anything
    a mail client could turn into a link, since both are shown in emails."""
    try:
        words = clean_topics(values.get(name, ""))
    except SubscriberError as exc:
        errors[name] = str(exc).replace("Topics are", f"{label} are")
        return ""
    if (found := link_like_text(words)) is not None:
        errors[name] = (
            f"{label} cannot contain web or email addresses (“{found[:60]}”): "
            "write the words alone, e.g. “node js” for node.js."
        )
    return words


def _form_flag(values: Mapping[str, str], name: str) -> bool:
    """A checkbox: present ("on", as browsers send it) or absent."""
    return (values.get(name) or "").strip().lower() in ("on", "1", "true", "yes")


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


def apply_preferences(subscriber: Subscriber, prefs: Preferences) -> list[str]:
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
    profile = subscriber.profile
    if (profile.exclude, profile.trending_fallback) != (prefs.exclude, prefs.trending_fallback):
        if profile.exclude != prefs.exclude:
            changes.append(f"exclude: {prefs.exclude[:200] or '-'}")
        if profile.trending_fallback != prefs.trending_fallback:
            changes.append(f"trending fallback: {'on' if prefs.trending_fallback else 'off'}")
        profile.exclude, profile.trending_fallback = prefs.exclude, prefs.trending_fallback
        if not any(change.startswith("topics:") for change in changes):
            _keep_learning(profile)
    if (subscriber.cadence, subscriber.send_weekday) != (prefs.cadence, prefs.send_weekday):
        changes.append(f"cadence: {cadence_text(prefs.cadence, prefs.send_weekday)}")
        subscriber.cadence, subscriber.send_weekday = prefs.cadence, prefs.send_weekday
    if subscriber.click_tracking != prefs.click_tracking:
        changes.append(f"click tracking: {'on' if prefs.click_tracking else 'off'}")
        subscriber.click_tracking = prefs.click_tracking
    return changes


def _keep_learning(profile: TopicProfile) -> None:
    """Leave the profile's `updated_at` as it is: it says when the topics last changed, which
    feedback learning and pruning start from (feedback.py), and words to exclude or the
    trending fallback are not new topics. Written back as it was, so the column's onupdate
    does not renew it."""
    profile.updated_at = profile.updated_at
    flag_modified(profile, "updated_at")


def cadence_text(cadence: Cadence, weekday: int) -> str:
    """"daily", or "weekly on Monday": how the history and the pages name a cadence."""
    if cadence is Cadence.WEEKLY:
        return f"weekly on {WEEKDAYS[weekday % 7]}"
    return "daily"


# How the CLI and the CSV write a weekday: "mon" .. "sun", Monday first (datetime.weekday()).
WEEKDAY_KEYS = tuple(name[:3].lower() for name in WEEKDAYS)


def parse_weekday(text: str) -> int:
    """A weekday written as "fri" or "Friday" (any case) -> 4. Numbers are refused: cron
    counts Sunday as 0 and Python Monday, so "0" means either."""
    key = (text or "").strip().lower()
    if key[:3] in WEEKDAY_KEYS and WEEKDAYS[WEEKDAY_KEYS.index(key[:3])].lower().startswith(key):
        return WEEKDAY_KEYS.index(key[:3])
    raise SubscriberError(
        f"Weekday {text[:20]!r} is not one of {', '.join(WEEKDAY_KEYS)} (or the full name)."
    )


def parse_cadence(text: str) -> Cadence:
    """"daily" or "weekly" (any case) as a Cadence; SubscriberError names the choices."""
    try:
        return Cadence((text or "").strip().lower())
    except ValueError:
        choices = " or ".join(c.value for c in Cadence)
        raise SubscriberError(f"Cadence {text[:20]!r} is not {choices}.") from None


def default_papers(settings: Settings, cadence: Cadence) -> int:
    """A new reader's papers per digest when they chose none: a week's digest is longer
    (WEEKLY_PAPERS_PER_DIGEST). Once stored, the length is theirs: switching cadence keeps it."""
    if cadence is Cadence.WEEKLY:
        return settings.weekly_papers_per_digest
    return settings.default_papers_per_digest


def current_preferences(subscriber: Subscriber) -> Preferences:
    """A subscriber's choices as they stand, to change some and save them all again."""
    profile = subscriber.profile
    return Preferences(
        topics=profile.topics, time_zone=subscriber.time_zone, send_hour=subscriber.send_hour,
        papers_per_digest=subscriber.papers_per_digest, exclude=profile.exclude,
        trending_fallback=profile.trending_fallback, cadence=subscriber.cadence,
        send_weekday=subscriber.send_weekday, click_tracking=subscriber.click_tracking,
    )


def change_preferences(
    session: Session,
    email: str,
    *,
    cadence: Cadence | None = None,
    send_weekday: int | None = None,
    papers_per_digest: int | None = None,
    send_hour: int | None = None,
    time_zone: str | None = None,
    click_tracking: bool | None = None,
    trending_fallback: bool | None = None,
    source: str = "cli",
    now: datetime | None = None,
) -> tuple[Subscriber, list[str]]:
    """Change some of a subscriber's choices (None: as it is), checked as `add_subscriber`
    checks them, and saved as the preferences page saves them (one history entry). Returns
    the subscriber and what changed; SubscriberError before anything changes."""
    subscriber = get_subscriber(session, email)
    given: dict[str, Any] = {
        "cadence": cadence,
        "send_weekday": None if send_weekday is None else validate_weekday(send_weekday),
        "papers_per_digest": (None if papers_per_digest is None
                              else validate_papers_per_digest(papers_per_digest)),
        "send_hour": None if send_hour is None else validate_send_hour(send_hour),
        "time_zone": None if time_zone is None else validate_time_zone(time_zone),
        "click_tracking": click_tracking,
        "trending_fallback": trending_fallback,
    }
    prefs = replace(current_preferences(subscriber),
                    **{name: value for name, value in given.items() if value is not None})
    changes = update_preferences(session, subscriber.id, prefs, subscriber.paused, source, now)
    return subscriber, changes


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
    changes = apply_preferences(subscriber, prefs)
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
