"""The send journal: what an attempt handed to the mail backend and what it answered,
written as it happens, so that a crash leaves in doubt only the messages truly in flight.

The ledger records a window's outcomes after the window has gone out; a process killed in the
middle of a window leaves that whole window SENDING, and without more to go on every one of
those rows is in doubt. So each attempt (one run of one batch) also appends a line per message
to `DATA_DIR/journal/<claim token>.log` on an unbuffered append-only file descriptor:

    > <message-id>      about to hand it to the backend
    + <message-id>      the backend accepted it
    ? <message-id>      the backend may have it (no answer to DATA)
    x <message-id>      refused for good
    t <message-id>      a temporary failure: not delivered

A line is in the kernel as soon as `write` returns, so a process killed with SIGKILL loses
nothing it wrote (a machine that loses power may; then the rows stay in doubt, as before).
The file is removed once the attempt's outcomes are committed to the ledger.

`resolve_abandoned` turns what a dead attempt left into ledger facts: accepted messages become
SENT, messages never handed over go back to be planned (they were never sent, so sending them is
safe), and only a message handed over without an answer stays IN_DOUBT. Where no journal is at
hand (another host's worker died), the file outbox can still tell, since a message is there or
not; SMTP cannot, so the rest stay IN_DOUBT for the operator (`digest in-doubt`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from . import metrics
from .models import Delivery, DeliveryStatus
from .settings import Settings

log = logging.getLogger(__name__)

HANDING, ACCEPTED, MAYBE, REFUSED, NOT_DELIVERED = ">", "+", "?", "x", "t"
_TOKEN = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, as process_batch makes it


def journal_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "journal"


class Journal:
    """One attempt's journal; safe to write from the sender's connection threads at once."""

    def __init__(self, settings: Settings, token: str) -> None:
        folder = journal_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{token}.log"
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Held while the attempt lives: a recovery that can take it knows the attempt is dead.
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, mark: str, message_id: str) -> None:
        """One line, in one `write` call: O_APPEND makes each line whole even across threads."""
        if self._fd is not None:
            os.write(self._fd, f"{mark} {message_id}\n".encode())

    def handing(self, message_id: str) -> None:
        self.write(HANDING, message_id)

    def answered(self, message_id: str, mark: str) -> None:
        self.write(mark, message_id)

    def close(self, remove: bool = True) -> None:
        """Close the file and, once the ledger holds every outcome, remove it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            self.path.unlink(missing_ok=True)


def read_journal(path: Path) -> dict[str, str]:
    """The last mark of each message id in a journal file (a torn last line is ignored)."""
    marks: dict[str, str] = {}
    try:
        text = path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return marks
    for line in text.splitlines():
        mark, _, message_id = line.partition(" ")
        if mark in (HANDING, ACCEPTED, MAYBE, REFUSED, NOT_DELIVERED) and message_id:
            if mark == HANDING and marks.get(message_id, HANDING) != HANDING:
                continue  # a retry's second hand-over never hides the first answer
            marks[message_id] = mark
    return marks


@dataclass
class Recovery:
    """What `resolve_abandoned` did with a dead attempt's rows."""

    sent: int = 0  # the journal or the outbox shows the backend accepted them
    replanned: int = 0  # never handed to the backend: planned again, safe to send
    failed: int = 0  # refused for good before the crash
    in_doubt: int = 0  # handed over with no answer, or nothing to tell: left to the operator
    journals_removed: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.sent + self.replanned + self.failed + self.in_doubt

    def summary(self) -> str:
        return (f"recovered from stopped attempts: {self.sent} sent, {self.replanned} planned "
                f"again (never handed over), {self.failed} failed, {self.in_doubt} in doubt")


def resolve_abandoned(session: Session, settings: Settings, now: datetime) -> Recovery:
    """Settle the rows that dead attempts left SENDING (and IN_DOUBT rows a journal or the
    outbox can still settle), then mark whatever cannot be told IN_DOUBT. Commits."""
    recovery = Recovery()
    journals, live = _journals(settings)
    settle = [and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now)]
    if journals:
        # A dead attempt's rows are settled at once, whatever their lease says.
        settle.append(and_(
            Delivery.status.in_(
                (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING, DeliveryStatus.IN_DOUBT)
            ),
            Delivery.claim_token.in_(list(journals)),
        ))
    if settings.mail_backend == "file":
        settle.append(and_(
            Delivery.status == DeliveryStatus.IN_DOUBT,
            Delivery.digest_date >= (now - timedelta(days=OUTBOX_LOOKBACK_DAYS)).date(),
        ))
    rows = session.execute(
        select(Delivery.id, Delivery.claim_token, Delivery.message_id, Delivery.digest_date,
               Delivery.status)
        .where(or_(*settle))
    ).all()
    outbox = _OutboxIndex(settings) if settings.mail_backend == "file" else None
    marks_by_token: dict[str, dict[str, str]] = {}
    verdicts: dict[str, list[int]] = {}
    for row_id, token, message_id, day, status in rows:
        if token in live:
            continue  # still at work on this host, only slower than its lease
        marks = marks_by_token.get(token or "")
        if marks is None and token in journals:
            marks = marks_by_token[token] = read_journal(journals[token])
        if status is DeliveryStatus.CLAIMED:
            verdict = "replan"  # claimed, not yet handed over when the attempt died
        else:
            verdict = _verdict(marks, outbox, message_id, day)
        if verdict == "in_doubt" and status is DeliveryStatus.IN_DOUBT:
            continue
        verdicts.setdefault(verdict, []).append(row_id)
    _apply(session, verdicts, now, recovery)
    session.commit()
    metrics.count_recovery(recovery)
    recovery.journals_removed = _remove_settled(session, journals)
    if recovery.total:
        log.warning("%s", recovery.summary())
    return recovery


OUTBOX_LOOKBACK_DAYS = 7


def _verdict(
    marks: dict[str, str] | None, outbox: _OutboxIndex | None, message_id: str, day: date
) -> str:
    if outbox is not None and outbox.has(message_id, day):
        return "sent"
    if marks is not None:
        mark = marks.get(message_id)
        if mark is None or mark == NOT_DELIVERED:
            return "replan"
        if mark == ACCEPTED:
            return "sent"
        if mark == REFUSED:
            return "failed"
        if outbox is not None:
            return "replan"  # handed to the file backend, whose write the kill cut short
        return "in_doubt"  # handed over (or answered "maybe") with no definite answer
    if outbox is not None:
        return "replan"  # the file backend writes atomically: absent means not written
    return "in_doubt"


def _apply(
    session: Session, verdicts: dict[str, list[int]], now: datetime, recovery: Recovery
) -> None:
    values: dict[str, dict[str, object]] = {
        "sent": {"status": DeliveryStatus.SENT, "sent_at": now,
                 "error": "recovered: the mail backend had accepted it before the worker stopped"},
        # Stale at once: the next run or tick plans it again (`ledger.stale_condition`).
        "replan": {"status": DeliveryStatus.CLAIMED, "lease_until": now - timedelta(seconds=1),
                   "error": "recovered: the worker stopped before handing it over"},
        "failed": {"status": DeliveryStatus.FAILED,
                   "error": "recovered: refused by the mail server before the worker stopped"},
        "in_doubt": {"status": DeliveryStatus.IN_DOUBT,
                     "error": "the worker stopped while handing this message to the mail server"},
    }
    for verdict, ids in verdicts.items():
        for start in range(0, len(ids), 1000):
            session.execute(update(Delivery).where(Delivery.id.in_(ids[start:start + 1000]))
                            .values(**values[verdict]))
        field_name = "replanned" if verdict == "replan" else verdict
        setattr(recovery, field_name, getattr(recovery, field_name) + len(ids))


def _journals(settings: Settings) -> tuple[dict[str, Path], set[str]]:
    """This host's journals of dead attempts, and the tokens of live ones."""
    folder = journal_dir(settings)
    if not folder.is_dir():
        return {}, set()
    dead: dict[str, Path] = {}
    live: set[str] = set()
    for path in folder.glob("*.log"):
        if _TOKEN.match(path.stem):
            if _held(path):
                live.add(path.stem)
            else:
                dead[path.stem] = path
    return dead, live


def _held(path: Path) -> bool:
    """Whether a live attempt holds the journal's lock (a dead process holds nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _remove_settled(session: Session, journals: dict[str, Path]) -> int:
    """Remove the journals whose attempt has nothing left SENDING or IN_DOUBT."""
    if not journals:
        return 0
    open_tokens = set(session.scalars(
        select(Delivery.claim_token).where(
            Delivery.claim_token.in_(list(journals)),
            Delivery.status.in_((DeliveryStatus.SENDING, DeliveryStatus.IN_DOUBT)),
        ).distinct()
    ))
    removed = 0
    for token, path in journals.items():
        if token not in open_tokens:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class _OutboxIndex:
    """Which Message-IDs the file outbox holds.

    The file backend names each .eml after a hash of its Message-ID and writes it atomically,
    so a message is in the outbox whole or not at all. Its folder is the day of its Date
    header: from the day before its digest date (a reader east of UTC) to the day it was sent
    (a run for a past date), so the folders from the day before on are read, each once."""

    def __init__(self, settings: Settings) -> None:
        self.outbox_dir = Path(settings.outbox_dir)
        self._hashes: set[str] = set()
        self._read_from: str | None = None  # folders named from this day on are read

    def has(self, message_id: str, day: date) -> bool:
        self._read_folders_from((day - timedelta(days=1)).isoformat())
        return hashlib.sha256(message_id.encode()).hexdigest()[:12] in self._hashes

    def _read_folders_from(self, first: str) -> None:
        from .mail.outbox import is_message_name  # mail imports this module

        if self._read_from is not None and self._read_from <= first:
            return
        if not self.outbox_dir.is_dir():
            return
        for folder in self.outbox_dir.iterdir():
            name = folder.name
            if folder.is_dir() and name >= first and (
                self._read_from is None or name < self._read_from
            ):
                self._hashes.update(name[: -len(".eml")].rsplit("--", 1)[-1]
                                    for name in os.listdir(folder) if is_message_name(name))
        self._read_from = first


# --- the operator's choice for what stays in doubt ----------------------------------------


@dataclass(frozen=True)
class DoubtfulDelivery:
    delivery_id: int
    email: str
    digest_date: date
    error: str


def in_doubt(session: Session, day: date | None = None) -> list[DoubtfulDelivery]:
    """Deliveries left IN_DOUBT (of `day`, or all), oldest day first."""
    from .models import Subscriber

    query = (
        select(Delivery.id, Subscriber.email, Delivery.digest_date, Delivery.error)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.status == DeliveryStatus.IN_DOUBT)
        .order_by(Delivery.digest_date, Subscriber.email)
    )
    if day is not None:
        query = query.where(Delivery.digest_date == day)
    return [DoubtfulDelivery(i, e, d, err or "") for i, e, d, err in session.execute(query)]


def settle_in_doubt(
    session: Session, delivery_ids: Sequence[int], resend: bool, now: datetime
) -> int:
    """The operator's decision: resend (planned again; the reader may get it twice) or mark
    sent (the reader may have got nothing). Only rows still IN_DOUBT change. Commits."""
    if resend:
        values: dict[str, object] = {
            "status": DeliveryStatus.CLAIMED, "lease_until": now - timedelta(seconds=1),
            "error": "in doubt; resent by the operator",
        }
    else:
        values = {"status": DeliveryStatus.SENT, "sent_at": now,
                  "error": "in doubt; marked sent by the operator"}
    changed = 0
    for start in range(0, len(delivery_ids), 1000):
        chunk = list(delivery_ids[start:start + 1000])
        result = session.execute(
            update(Delivery)
            .where(Delivery.id.in_(chunk), Delivery.status == DeliveryStatus.IN_DOUBT)
            .values(**values)
        )
        changed += int(result.rowcount or 0)  # type: ignore[attr-defined]
    session.commit()
    return changed


def mark_for(result_in_doubt: bool, sent: bool, permanent: bool) -> str:
    """The journal mark for a backend's answer."""
    if sent:
        return ACCEPTED
    if result_in_doubt:
        return MAYBE
    return REFUSED if permanent else NOT_DELIVERED
