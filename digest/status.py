"""Reports on a day's digests: what one run did (`DayReport`) and how the day stands
(`DayStatus`, for `digest status` and operators).

Who counts as due is decided here too (`mailable`), so the planner and the status agree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from . import db, ledger
from .models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from .settings import Settings

SKIP_NO_MATCH = "no new paper matched their topics"
SKIP_ALREADY_SENT = "already has today's digest"
SKIP_ELSEWHERE = "being handled by another run"


def mailable() -> ColumnElement[bool]:
    """Subscribers a digest goes to: active and not paused."""
    return (Subscriber.status == SubscriberStatus.ACTIVE) & Subscriber.paused.is_(False)


@dataclass
class DayReport:
    """What a run did, for the CLI's summary, the task result and the tests."""

    day: date
    due: int = 0
    candidates: int = 0
    sent: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (email, reason)
    dry_run: bool = False
    outbox_index: Path | None = None

    def merge(self, other: DayReport) -> None:
        self.sent += other.sent
        self.skipped.update(other.skipped)
        self.failed += other.failed

    def summary(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        lines = [
            f"Digest for {self.day.isoformat()}: {self.due} due, {len(self.sent)} {verb}, "
            f"{sum(self.skipped.values())} skipped, {len(self.failed)} failed "
            f"({self.candidates} candidate papers)."
        ]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.most_common() if n]
        lines += [f"  failed {email}: {reason}" for email, reason in self.failed]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """JSON-safe, for Celery task results."""
        return {
            "day": self.day.isoformat(),
            "sent": len(self.sent),
            "skipped": dict(self.skipped),
            "failed": [list(f) for f in self.failed],
        }


@dataclass(frozen=True)
class DayStatus:
    """How a day's digests stand, for `digest status` and operators."""

    day: date
    active: int
    counts: Counter[str]
    bounced: int

    @property
    def not_planned(self) -> int:
        return max(self.active - sum(self.counts.values()), 0)

    def lines(self) -> list[str]:
        c = self.counts
        rows = [
            ("due (active subscribers)", self.active),
            ("sent", c["sent"]),
            ("pending (planned or claimed, not yet sent)", c["planned"] + c["claimed"]),
            ("sending now", c["sending"]),
            ("retrying after a temporary failure", c["retrying"]),
            ("stale (worker gone, will be planned again)", c["stale"]),
            ("failed (refused by the mail server)", c["failed"]),
            ("   of which bounced addresses", self.bounced),
            ("in doubt (may have been sent; not resent)", c["in_doubt"]),
            ("skipped (nothing matched)", c["skipped"]),
            ("not planned yet (send hour not reached)", self.not_planned),
        ]
        return [f"{label:<46} {count:>8}" for label, count in rows]


def day_status(settings: Settings, day: date) -> DayStatus:
    """The day's deliveries by state, next to how many subscribers are due."""
    with db.session_scope(settings) as session:
        counts = ledger.day_counts(session, day)
        active = session.scalar(select(func.count()).select_from(Subscriber).where(mailable()))
        bounced = session.scalar(
            select(func.count())
            .select_from(Delivery)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(
                Delivery.digest_date == day,
                Delivery.status == DeliveryStatus.FAILED,
                Subscriber.status == SubscriberStatus.BOUNCED,
            )
        )
        # Subscribers who left since being sent still count as due that day.
        active = int(active or 0) + int(
            session.scalar(
                select(func.count())
                .select_from(Delivery)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.digest_date == day, ~mailable())  # type: ignore[operator]
            )
            or 0
        )
    return DayStatus(day=day, active=active, counts=counts, bounced=int(bounced or 0))
