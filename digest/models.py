"""The database schema: papers, subscribers and their topics, the delivery ledger, and the
subscription history, sign-up requests, suppression list, provider webhook events and
readers' feedback.

Constraints that keep the data correct live here and in the migrations, not only in code:
an address is unique whatever its case, a subscriber has at most one delivery per digest date
and per period (a day, or an ISO week for a weekly reader),
a paper can be carried to a subscriber only once (`delivery_items` is unique on both), an
address is suppressed at most once, a provider's event is recorded (and acted on) once, and a
subscriber's click or vote on a paper counts once. A subscriber's or sign-up request's id is
never given to another row (AUTOINCREMENT on SQLite), and each carries a random `link_key`
that its signed links must name.
"""

from __future__ import annotations

import enum
import secrets
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_link_key() -> str:
    """A random key that every signed link to a row carries (tokens.py): a link made for a
    row that was since deleted does nothing for whoever comes next, whatever their id."""
    return secrets.token_urlsafe(16)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class SubscriberStatus(str, enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class SignupOutcome(str, enum.Enum):
    """What a subscribe request led to. The page says the same for every one of them."""

    RECEIVED = "received"  # recorded; the background sender has not looked at it yet
    CONFIRMATION = "confirmation"  # new, pending or unsubscribed: send the confirmation email
    CONFIRMATION_RECENT = "confirmation_recent"  # one went out within the resend window
    ALREADY_ACTIVE = "already_active"  # tell the address's owner, not the visitor
    ALREADY_ACTIVE_RECENT = "already_active_recent"  # the owner was told within the window
    SUPPRESSED = "suppressed"  # nothing may be sent to this address


class DeliveryStatus(str, enum.Enum):
    CLAIMED = "claimed"  # planned or owned by an attempt; not yet handed to the mail backend
    SENDING = "sending"  # being handed to the mail backend by the attempt that owns it
    SENT = "sent"
    FAILED = "failed"  # the backend refused it for good; nothing reached the subscriber
    IN_DOUBT = "in_doubt"  # the backend may have accepted it; never resent blindly
    RETRYING = "retrying"  # a temporary failure; planned again once lease_until has passed
    SKIPPED = "skipped"  # nothing to send today (no paper matched)


class EventKind(str, enum.Enum):
    """What happened to a subscriber; `subscriber_events` is their history."""

    SUBSCRIBED = "subscribed"  # the subscribe form was sent for this address
    CONFIRMATION_SENT = "confirmation_sent"
    NOTICE_SENT = "notice_sent"  # "you are already subscribed", to the address's owner
    CONFIRMED = "confirmed"
    PREFERENCES_CHANGED = "preferences_changed"
    PAUSED = "paused"
    RESUMED = "resumed"
    UNSUBSCRIBED = "unsubscribed"
    RESUBSCRIBED = "resubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    SUPPRESSED = "suppressed"  # by an admin
    UNSUPPRESSED = "unsuppressed"


class FeedbackKind(str, enum.Enum):
    """What a subscriber told us about a paper from their digest."""

    CLICK = "click"  # followed the paper's link: a weak "interesting"
    MORE = "more"  # "more like this"
    LESS = "less"  # "less like this"


# `send_weekday`'s values are indexes into this (Monday 0, as datetime.weekday()).
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class Cadence(str, enum.Enum):
    """How often a reader gets a digest: every day, or once a week on their weekday."""

    DAILY = "daily"
    WEEKLY = "weekly"


def delivery_period(day: date, cadence: Cadence = Cadence.DAILY) -> str:
    """The period a digest of `day` belongs to, for the ledger's one-digest-per-period rule:
    the day itself ("2026-12-07") for a daily reader, the ISO week of that local date
    ("2026-W50") for a weekly one. Both fit in ten characters and never equal each other."""
    if cadence is Cadence.WEEKLY:
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return day.isoformat()


def _daily_period(context: Any) -> str:
    """A delivery row written without a period is a daily one (the ledger always names it)."""
    return delivery_period(context.get_current_parameters()["digest_date"])


class SuppressionReason(str, enum.Enum):
    BOUNCED = "bounced"  # a hard bounce: the address does not exist
    COMPLAINED = "complained"  # the recipient marked a message as spam
    MANUAL = "manual"  # an admin's decision


def _enum(enum_cls: type[enum.Enum], name: str, length: int = 16) -> Enum:
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Paper(Base):
    __tablename__ = "papers"
    __table_args__ = (
        UniqueConstraint("source_id", name="uq_papers_source_id"),
        Index("ix_papers_first_seen_at", "first_seen_at"),
        Index("ix_papers_title_key", "title_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))  # page | daily-papers | arxiv
    # The arXiv id (without version) when known, else "page:<hash of the normalised title>".
    source_id: Mapped[str] = mapped_column(String(128))
    title_key: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    abstract: Mapped[str] = mapped_column(Text, default="")
    authors: Mapped[list[str]] = mapped_column(JSON, default=list)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    pdf_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    upvotes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    comments: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stars: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the code's GitHub stars
    # What the daily-papers API adds; optional, so a paper without them is shown as before.
    ai_summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # a one-line TL;DR
    ai_keywords: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    github_repo: Mapped[str | None] = mapped_column(Text, nullable=True)
    thumbnail: Mapped[str | None] = mapped_column(Text, nullable=True)
    organization: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the paper counts as new: the day its source listed or published it, set once at
    # ingest; empty while no source dated it, when first_seen_at stands in (`paper_new_at`).
    listed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Paper {self.id} {self.source_id} {self.title[:40]!r}>"


def paper_new_at() -> ColumnElement[datetime]:
    """When a paper counts as new: its source's date, else when it was first seen.

    A day's candidates are the papers new in its window, so that a first ingest of an archive
    from 2019 brings none. Queries must spell it exactly so to use `ix_papers_new_at`.
    """
    return func.coalesce(Paper.listed_at, Paper.first_seen_at)


Index("ix_papers_new_at", paper_new_at())


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (
        Index("ix_subscribers_status", "status"),
        # SQLite otherwise gives a deleted row's id to the next row: never reuse one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Carried in every signed link to this subscriber and checked when the link is used.
    link_key: Mapped[str] = mapped_column(String(32), default=new_link_key)
    email: Mapped[str] = mapped_column(String(320))
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.PENDING
    )
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    send_hour: Mapped[int] = mapped_column(Integer, default=7)
    papers_per_digest: Mapped[int] = mapped_column(Integer, default=10)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Paused from the preferences page: still subscribed, but sent nothing until resumed.
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cadence: Mapped[Cadence] = mapped_column(
        _enum(Cadence, "cadence", 8), default=Cadence.DAILY, server_default=Cadence.DAILY.value
    )
    send_weekday: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # Monday 0
    # Paper links go through the click-tracking redirect only if the reader turned this on.
    click_tracking: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    profile: Mapped[TopicProfile] = relationship(
        back_populates="subscriber", uselist=False, cascade="all, delete-orphan", lazy="joined"
    )

    def __repr__(self) -> str:
        return f"<Subscriber {self.id} {self.email} {self.status.value}>"


# Case-insensitive uniqueness of addresses, enforced by the database on every backend.
Index("uq_subscribers_email_lower", func.lower(Subscriber.email), unique=True)


class SignupRequest(Base):
    """One sending of the subscribe form, kept apart from the subscriber it concerns.

    A visitor may type anyone's address: what they chose (topics, time zone, hour, papers)
    stays here and reaches the subscriber only when the address's owner follows this
    request's confirmation link. The requests of the last day also count the per-address
    limit when Redis is down.
    """

    __tablename__ = "signup_requests"
    __table_args__ = (
        Index("ix_signup_requests_address", "address", "created_at"),
        Index("ix_signup_requests_subscriber_id", "subscriber_id"),
        Index("ix_signup_requests_created_at", "created_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    link_key: Mapped[str] = mapped_column(String(32), default=new_link_key)
    email: Mapped[str] = mapped_column(String(320))  # as typed, normalised
    address: Mapped[str] = mapped_column(String(320))  # lower-cased: what limits count
    # Set when the request is processed; None for an address with no subscriber (suppressed).
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=True
    )
    topics: Mapped[str] = mapped_column(Text)
    time_zone: Mapped[str] = mapped_column(String(64))
    send_hour: Mapped[int] = mapped_column(Integer)
    papers_per_digest: Mapped[int] = mapped_column(Integer)
    exclude: Mapped[str] = mapped_column(Text, default="", server_default="")
    trending_fallback: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cadence: Mapped[Cadence] = mapped_column(
        _enum(Cadence, "cadence", 8), default=Cadence.DAILY, server_default=Cadence.DAILY.value
    )
    send_weekday: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # Monday 0
    # Paper links go through the click-tracking redirect only if the reader turned this on.
    click_tracking: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    outcome: Mapped[SignupOutcome] = mapped_column(
        _enum(SignupOutcome, "signup_outcome", 24), default=SignupOutcome.RECEIVED
    )
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    emailed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    email_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The sender that took this request owns it until then (see notices.EmailSender).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TopicProfile(Base):
    __tablename__ = "topic_profiles"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    topics: Mapped[str] = mapped_column(Text, default="")
    exclude: Mapped[str] = mapped_column(Text, default="")
    # Send the day's trending papers even when none matches the topics.
    trending_fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    subscriber: Mapped[Subscriber] = relationship(back_populates="profile")


class Delivery(Base):
    """One digest for one subscriber on one date and in one period (a day for a daily reader,
    an ISO week of their local dates for a weekly one): the ledger that makes retries safe."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "digest_date", name="uq_deliveries_subscriber_date"),
        Index("uq_deliveries_subscriber_period", "subscriber_id", "period", unique=True),
        Index("ix_deliveries_digest_date_status", "digest_date", "status"),
        Index("ix_deliveries_status_lease", "status", "lease_until"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    digest_date: Mapped[date] = mapped_column(Date)
    period: Mapped[str] = mapped_column(String(10), default=_daily_period)  # delivery_period()
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.CLAIMED
    )
    message_id: Mapped[str] = mapped_column(String(255))
    paper_count: Mapped[int] = mapped_column(Integer, default=0)
    trending_fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The attempt (one run of one batch) that owns the row until lease_until.
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    items: Mapped[list[DeliveryItem]] = relationship(
        back_populates="delivery", cascade="all, delete-orphan", order_by="DeliveryItem.rank"
    )


class DeliveryItem(Base):
    """A paper carried by a delivery, with the reason it was picked.

    Its one foreign key is its delivery (migration 0010): the subscriber is the delivery's
    own, kept here for the never-twice unique index, and the paper one the day's index read
    from `papers`, which retention deletes only when no item names it. A key on each cost
    two lookups per row on the table that grows fastest.
    """

    __tablename__ = "delivery_items"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "paper_id", name="uq_delivery_items_subscriber_paper"),
        Index("ix_delivery_items_delivery_id", "delivery_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(Integer)
    paper_id: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    why: Mapped[str] = mapped_column(Text, default="")

    delivery: Mapped[Delivery] = relationship(back_populates="items")
    paper: Mapped[Paper] = relationship(primaryjoin="foreign(DeliveryItem.paper_id) == Paper.id")


class PaperFeedback(Base):
    """A subscriber's click or vote on a paper; the profile learns from these.

    One row per subscriber, paper and kind: a second click is not a second signal, and "more"
    and "less" on the same paper replace each other (the latest wins).
    """

    __tablename__ = "paper_feedback"
    __table_args__ = (
        UniqueConstraint(
            "subscriber_id", "paper_id", "kind", name="uq_paper_feedback_subscriber_paper_kind"
        ),
        Index("ix_paper_feedback_subscriber_id", "subscriber_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id", ondelete="CASCADE"))
    kind: Mapped[FeedbackKind] = mapped_column(_enum(FeedbackKind, "feedback_kind", 8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    paper: Mapped[Paper] = relationship()


class SubscriberEvent(Base):
    """One step of a subscriber's history (deliveries are in `deliveries`)."""

    __tablename__ = "subscriber_events"
    __table_args__ = (Index("ix_subscriber_events_subscriber_id", "subscriber_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind, "subscriber_event_kind", 24))
    detail: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(64))  # web | cli | webhook:<provider> | pipeline
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Suppression(Base):
    """An address no email may go to, whoever asks: not even a confirmation request."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("address", name="uq_suppressions_address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320))  # lower-cased
    reason: Mapped[SuppressionReason] = mapped_column(
        _enum(SuppressionReason, "suppression_reason")
    )
    detail: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEvent(Base):
    """A provider event (or a signed request's nonce) already handled: the replay ledger."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))  # bounce | complaint | unsubscribe | request
    address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
