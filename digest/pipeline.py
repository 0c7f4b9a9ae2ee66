"""The day's story, top-down: plan → prepare once → for each batch: claim, score, render, send.

`run_day` runs a whole day in this process (`digest run`, `digest demo`). The scheduled path
splits the same steps across Celery: `plan_due` (beat) finds subscribers whose local send hour
has come and plans their deliveries; `send_planned_batch` (a worker task) sends one batch.
Both go through `process_batch`, so there is one implementation of a batch.

Per-day work (the paper index, the trending signal, each paper's card) is done once per
process and day by `prepared_day`; per-subscriber work runs in batches whose database round
trips do not grow with the batch. The ledger (`ledger.py`) makes every step safe to repeat.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from . import db, feedback, ledger, metrics
from .embeddings import day_semantic_index
from .journal import Journal, resolve_abandoned
from .mail import (
    OutboxRows,
    OutgoingEmail,
    Sender,
    SendOutcome,
    SendResult,
    batch_sender,
    message_id_for,
    open_sender,
    outbox_rows,
    write_outbox_index,
)
from .mailto import mailto_address
from .models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Paper,
    Subscriber,
    SubscriberStatus,
)
from .render.content import DigestContext, DigestItem, PaperCard, bounded_card
from .render.day import DayRenderer
from .render.plain import RenderedEmail, render_digest
from .score import (
    CandidatePaper,
    DayIndex,
    FeedbackSignal,
    Profile,
    RankingKnobs,
    Selection,
    build_day_index,
    paper_text,
)
from .settings import Settings
from .tokens import Purpose, links

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class StageClock:
    """Seconds spent per pipeline stage in this process, for `digest bench` and profiling."""

    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    items: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def __call__(self, stage: str, items: int = 1) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += perf_counter() - start
            self.items[stage] += items

    def reset(self) -> None:
        self.seconds.clear()
        self.items.clear()


CLOCK = StageClock()

SKIP_NO_MATCH = "no new paper matched their topics"
SKIP_ALREADY_SENT = "already has today's digest"
SKIP_ELSEWHERE = "being handled by another run"


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


@dataclass
class PreparedDay:
    """Everything that is the same for every subscriber on a day."""

    day: date
    now: datetime
    index: DayIndex
    cards: dict[int, PaperCard]
    renderer: DayRenderer  # compiles the skeleton and each card once, fills them per subscriber


# --- the whole day in one process ------------------------------------------------------


def run_day(
    settings: Settings,
    day: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> DayReport:
    """Send each active subscriber their digest for `day`, once, whatever their send hour."""
    report = DayReport(day=day, dry_run=dry_run)
    now = datetime.now(timezone.utc)
    with db.session_scope(settings) as session, CLOCK("plan"):
        due = list(session.scalars(select(Subscriber.id).where(_active()).order_by(Subscriber.id)))
        report.due = len(due)
        if dry_run:
            planned = _not_yet_handled(session, day, due, now)
        else:
            resolve_abandoned(session, settings, now)
            pairs = plan_pairs(session, settings, [(s, day) for s in due], now, retry_now=True)
            planned = [sid for sid, _ in pairs]
        _count_already_handled(session, day, set(due) - set(planned), report)
    with db.session_scope(settings) as session:
        if on_plan:
            on_plan(len(planned))
        with CLOCK("prepare"):
            prepared = prepare_day(session, settings, day)
        report.candidates = len(prepared.index)
        batches = list(chunked(planned, settings.batch_size))
        jobs = 1 if dry_run else run_jobs(settings, len(batches))
        errors: list[str] = []
        if jobs > 1:
            session.commit()  # the children see the plan; this session waits for them
            share, rows, errors = run_in_processes(settings, prepared, batches, jobs, progress)
        else:
            share, rows = run_batches(session, settings, prepared, batches, dry_run, progress)
        report.merge(share)
    if settings.mail_backend == "file" and not dry_run:
        with CLOCK("index"):
            report.outbox_index = write_outbox_index(settings, rows)
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {jobs} run processes failed; run `digest run` again to send the "
            f"digests they had not sent (the beat's tick takes them over after "
            f"CLAIM_LEASE_SECONDS={settings.claim_lease_seconds} s). First error:\n{errors[0]}"
        )
    return report


def run_batches(
    session: Session,
    settings: Settings,
    prepared: PreparedDay,
    batches: Iterable[Sequence[int]],
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[DayReport, OutboxRows]:
    """Send (or, dry, preview) the batches over one mail session; the report, and the
    outbox index rows of what the file backend wrote (the caller writes the index once)."""
    report = DayReport(day=prepared.day, dry_run=dry_run)
    with open_sender(settings, outbox_index=False) as sender:
        for batch in batches:
            if dry_run:
                report.merge(preview_batch(session, settings, prepared, batch))
            else:
                report.merge(process_batch(session, settings, prepared, batch, sender))
            if progress:
                progress(len(batch))
    return report, outbox_rows(sender)


# --- the same day on every core ------------------------------------------------------------

MIN_BATCHES_PER_JOB = 5  # below this, forking a process costs more than it saves


def run_jobs(settings: Settings, batches: int) -> int:
    """How many processes share the day's batches: RUN_JOBS, or one per core if it is 0;
    fewer on a small day, and one (this process) for the newcomer's demo."""
    if multiprocessing.current_process().daemon:
        return 1  # a daemonic process (a Celery pool worker) may not fork children
    wanted = settings.run_jobs or os.cpu_count() or 1
    return max(1, min(wanted, batches // MIN_BATCHES_PER_JOB))


def run_in_processes(
    settings: Settings,
    prepared: PreparedDay,
    batches: Sequence[Sequence[int]],
    jobs: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[DayReport, OutboxRows, list[str]]:
    """Send the planned batches from `jobs` forked processes, each over its own database
    connection and mail session; the day was prepared once, here, and is inherited.
    Returns what `run_batches` does, and the errors of processes that failed.

    The ledger makes this safe as it makes the Celery workers safe: each batch is claimed
    before it is sent. A process that dies leaves its unsent rows claimed until their lease
    ends, for the next run to take up.
    """
    context = multiprocessing.get_context("fork")
    gc.freeze()  # the inherited day stays shared: no collection in a child touches its pages
    taken = context.Value("q", 0)  # the next batch to take: whoever is free takes it
    children: list[tuple[Any, Connection]] = []
    try:
        for k in range(jobs):
            ours, theirs = context.Pipe(duplex=False)
            child = context.Process(
                target=_run_share, args=(settings, prepared, batches, taken, theirs),
                name=f"digest-run-{k + 1}", daemon=True,
            )
            child.start()
            theirs.close()
            children.append((child, ours))
        return _gather(children, prepared.day, progress)
    finally:
        for child, _ in children:
            child.join()
        gc.unfreeze()


def _gather(
    children: Sequence[tuple[Any, Connection]], day: date,
    progress: Callable[[int], None] | None,
) -> tuple[DayReport, OutboxRows, list[str]]:
    """Read the children's progress and results until each has finished or died."""
    report = DayReport(day=day)
    rows: OutboxRows = {}
    errors: list[str] = []
    waiting: dict[Connection, Any] = {conn: child for child, conn in children}
    while waiting:
        for ready in wait(list(waiting)):
            conn = cast(Connection, ready)
            try:
                message: tuple[Any, ...] = conn.recv()
            except EOFError:
                child = waiting.pop(conn)
                child.join()
                errors.append(f"{child.name} stopped (exit code {child.exitcode}) before "
                              "reporting")
                continue
            kind, payload = message[0], message[1:]
            if kind == "progress" and progress:
                progress(payload[0])
            elif kind == "done":
                share, share_rows, seconds, items = payload
                report.merge(share)
                rows.update(share_rows)
                CLOCK.seconds.update(seconds)
                CLOCK.items.update(items)
                waiting.pop(conn)
            elif kind == "error":
                errors.append(payload[0])
                waiting.pop(conn)
    return report, rows, errors


def _run_share(
    settings: Settings, prepared: PreparedDay, batches: Sequence[Sequence[int]], taken: Any,
    conn: Connection,
) -> None:
    """A forked child of `run_in_processes`: batches taken one by one from the shared counter
    until none is left (no process idles while another has a backlog), reported back."""
    db.engine_for(settings.database_url).dispose(close=False)  # the parent's connections
    CLOCK.reset()
    try:
        with db.session_scope(settings) as session:
            report, rows = run_batches(session, settings, prepared, _take(batches, taken),
                                       progress=lambda n: conn.send(("progress", n)))
        conn.send(("done", report, rows, dict(CLOCK.seconds), dict(CLOCK.items)))
    except BaseException:  # noqa: BLE001 - the parent reports it; this process ends here
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _take(batches: Sequence[Sequence[int]], taken: Any) -> Iterator[Sequence[int]]:
    while True:
        with taken.get_lock():
            index = taken.value
            taken.value += 1
        if index >= len(batches):
            return
        yield batches[index]


# --- plan: who is due, and when ---------------------------------------------------------


def _active() -> ColumnElement[bool]:
    return (Subscriber.status == SubscriberStatus.ACTIVE) & Subscriber.paused.is_(False)


def due_subscribers(session: Session, now: datetime) -> list[tuple[int, date]]:
    """(subscriber, their local date) for everyone whose local send hour has come today.

    Each subscriber's hour is read in their own IANA zone at `now`, so DST shifts move it with
    local time. A subscriber whose hour passed while the system was down is still due later
    that local day; one who already has a delivery row for their local date is not due again
    (unless that row was abandoned: planned or claimed, and its lease ran out).
    """
    zones = session.scalars(select(Subscriber.time_zone).where(_active()).distinct()).all()
    due: list[tuple[int, date]] = []
    for zone in sorted(zones):
        local = now.astimezone(_zone(zone))
        handled = exists().where(
            Delivery.subscriber_id == Subscriber.id,
            Delivery.digest_date == local.date(),
            ~ledger.stale_condition(now),  # type: ignore[operator]
        )
        ids = session.scalars(
            select(Subscriber.id)
            .where(
                _active(),
                Subscriber.time_zone == zone,
                Subscriber.send_hour <= local.hour,
                ~handled,
            )
            .order_by(Subscriber.id)
        ).all()
        due += [(sid, local.date()) for sid in ids]
    return due


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r in the database; using UTC", name)
        return ZoneInfo("UTC")


def plan_pairs(
    session: Session,
    settings: Settings,
    pairs: Sequence[tuple[int, date]],
    now: datetime,
    retry_now: bool = False,
) -> list[tuple[int, date]]:
    """Write planned delivery rows; returns the pairs this call planned (not another planner)."""
    message_ids = {
        (sid, day): message_id_for(settings, "digest", sid, day) for sid, day in pairs
    }
    planned = ledger.plan(
        session, pairs, message_ids, now, settings.claim_lease_seconds, retry_now=retry_now
    )
    metrics.count_planned(planned)
    return planned


def plan_due(settings: Settings, now: datetime) -> list[tuple[date, list[int]]]:
    """Beat's step: report abandoned sends, plan who is due now, and cut them into batches."""
    return list(plan_due_batches(settings, now))


def plan_due_batches(settings: Settings, now: datetime) -> Iterator[tuple[date, list[int]]]:
    """`plan_due`, each batch handed out as soon as its part of the plan is committed, so
    the tick enqueues a 100,000-subscriber day's first batches while it plans the rest."""
    with db.session_scope(settings) as session:
        resolve_abandoned(session, settings, now)  # logs what it settled
        due = due_subscribers(session, now)
        message_id = partial(message_id_for, settings, "digest")
        for planned in ledger.plan_in_chunks(
            session, due, message_id, now, settings.claim_lease_seconds
        ):
            metrics.count_planned(planned)
            by_day: dict[date, list[int]] = {}
            for sid, day in planned:
                by_day.setdefault(day, []).append(sid)
            for day, ids in sorted(by_day.items()):
                for batch in chunked(ids, settings.batch_size):
                    yield day, list(batch)


def _not_yet_handled(session: Session, day: date, ids: Sequence[int], now: datetime) -> list[int]:
    handled = set(
        session.scalars(
            select(Delivery.subscriber_id).where(
                Delivery.digest_date == day, ~ledger.stale_condition(now)  # type: ignore[operator]
            )
        )
    )
    return [sid for sid in ids if sid not in handled]


def _count_already_handled(
    session: Session, day: date, ids: set[int], report: DayReport
) -> None:
    if not ids:
        return
    for status, count in session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_date == day, Delivery.subscriber_id.in_(ids))
        .group_by(Delivery.status)
    ):
        if status is DeliveryStatus.SENT:
            report.skipped[SKIP_ALREADY_SENT] += count
        elif status in (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING):
            report.skipped[SKIP_ELSEWHERE] += count
        else:
            report.skipped[f"already {status.value.replace('_', ' ')} today"] += count


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
    with db.session_scope(settings) as session:
        counts = ledger.day_counts(session, day)
        active = session.scalar(select(func.count()).select_from(Subscriber).where(_active()))
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
                .where(Delivery.digest_date == day, ~_active())  # type: ignore[operator]
            )
            or 0
        )
    return DayStatus(day=day, active=active, counts=counts, bounced=int(bounced or 0))


# --- prepare: the day's shared work, once ----------------------------------------------


def day_bounds(day: date, lookback_days: int) -> tuple[datetime, datetime]:
    """Papers first seen in (start, end] are the day's candidates."""
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=timezone.utc)
    return end - timedelta(days=lookback_days), end


def prepare_day(session: Session, settings: Settings, day: date) -> PreparedDay:
    """Load the day's candidate papers and do the work every subscriber shares, once."""
    start, end = day_bounds(day, settings.lookback_days)
    now = min(datetime.now(timezone.utc), end)
    papers = list(
        session.scalars(
            select(Paper)
            .where(Paper.first_seen_at > start, Paper.first_seen_at <= end)
            .order_by(Paper.id)
        )
    )
    archive = list(
        session.execute(
            select(Paper.title, Paper.abstract)
            .where(Paper.first_seen_at <= start)
            .order_by(Paper.id.desc())
            .limit(20_000)
        )
    )
    index = build_day_index(
        [candidate_paper(p) for p in papers],
        [paper_text(t, a) for t, a in reversed(archive)],
        now,
        RankingKnobs.from_settings(settings),
        semantic=day_semantic_index(settings, papers),
    )
    return PreparedDay(
        day=day, now=now, index=index, cards={p.id: paper_card(p) for p in papers},
        renderer=DayRenderer(day, settings.public_base_url),
    )


def candidate_paper(paper: Paper) -> CandidatePaper:
    return CandidatePaper(
        id=paper.id,
        title=paper.title,
        abstract=paper.abstract,
        source=paper.source,
        first_seen_at=paper.first_seen_at,
        published_at=paper.published_at,
        upvotes=paper.upvotes,
        comments=paper.comments,
        stars=paper.stars,
    )


def paper_card(paper: Paper) -> PaperCard:
    return bounded_card(PaperCard(
        paper_id=paper.id,
        title=paper.title,
        authors=tuple(paper.authors or ()),
        abstract=paper.abstract,
        url=paper.url,
        pdf_url=paper.pdf_url,
        published_at=paper.published_at,
        upvotes=paper.upvotes,
        comments=paper.comments,
        source=paper.source,
    ))


_PREPARED: dict[tuple[str, date], tuple[tuple[object, ...], PreparedDay]] = {}
# At one moment the world's local dates span up to three (UTC-12 to UTC+14), and a tick's
# batches of those days reach a worker interleaved: keeping one day made it rebuild at
# every switch (1-2 s each, both workers at once). Three is the most a tick needs.
DAYS_KEPT = 3


def prepared_day(session: Session, settings: Settings, day: date) -> PreparedDay:
    """The day's PreparedDay, built once per process and reused by every batch it runs.

    It is rebuilt only when the day's candidate papers change (a fingerprint query); the
    DAYS_KEPT most recently used days are kept, so batches of different local days can
    interleave.
    """
    start, end = day_bounds(day, settings.lookback_days)
    fingerprint = tuple(
        session.execute(
            select(func.count(), func.max(Paper.id), func.max(Paper.updated_at)).where(
                Paper.first_seen_at > start, Paper.first_seen_at <= end
            )
        ).one()
    )
    key = (settings.database_url, day)
    cached = _PREPARED.pop(key, None)  # put back last: the most recently used
    if cached is None or cached[0] != fingerprint:
        cached = None  # the stale one goes before its successor is built
        while len(_PREPARED) >= DAYS_KEPT:
            del _PREPARED[next(iter(_PREPARED))]
        with CLOCK("prepare"):
            cached = (fingerprint, prepare_day(session, settings, day))
    _PREPARED[key] = cached
    return cached[1]


# --- one batch: claim, score, render, send, record --------------------------------------


@dataclass(frozen=True)
class Composed:
    """One subscriber's digest, ready to send."""

    subscriber_id: int
    email: str
    selection: Selection
    message: OutgoingEmail


def send_planned_batch(settings: Settings, day: date, subscriber_ids: Sequence[int]) -> DayReport:
    """A worker's step: send one planned batch over one mail connection; safe to run twice."""
    with db.session_scope(settings) as session:
        prepared = prepared_day(session, settings, day)
        with batch_sender(settings) as sender:  # its SMTP connections serve the next batch too
            return process_batch(session, settings, prepared, subscriber_ids, sender)


@metrics.BATCH_SECONDS.time()
def process_batch(
    session: Session,
    settings: Settings,
    prepared: PreparedDay,
    subscriber_ids: Sequence[int],
    sender: Sender,
) -> DayReport:
    """Claim the batch for this attempt, then score, render, send and record in windows."""
    token = uuid.uuid4().hex
    journal = Journal(settings, token)  # before the claim: a dead attempt's claims are freed
    try:
        report = _process_batch(session, settings, prepared, subscriber_ids, sender, token,
                                journal)
    except BaseException:
        journal.close(remove=False)  # what went out before the failure, for the recovery
        raise
    journal.close()
    return report


def _process_batch(
    session: Session,
    settings: Settings,
    prepared: PreparedDay,
    subscriber_ids: Sequence[int],
    sender: Sender,
    token: str,
    journal: Journal,
) -> DayReport:
    day = prepared.day
    report = DayReport(day=day)
    now = datetime.now(timezone.utc)
    with CLOCK("ledger"):
        claims = ledger.claim(
            session, day, subscriber_ids, token, now, settings.claim_lease_seconds
        )
    if len(claims) < len(subscriber_ids):
        report.skipped[SKIP_ELSEWHERE] += len(subscriber_ids) - len(claims)
    delivery_ids = {c.subscriber_id: c.delivery_id for c in claims}
    composed, skipped, unsendable = compose_batch(session, settings, prepared, list(delivery_ids))
    report.skipped[SKIP_NO_MATCH] += len(skipped)
    ledger.finish(session, day, token, DeliveryStatus.SKIPPED, skipped, now)
    for sid, email, reason in unsendable:
        report.failed.append((email, reason))
        ledger.finish(session, day, token, DeliveryStatus.FAILED, [sid], now, error=reason)
    ledger.set_contents(
        session, day, token,
        {c.subscriber_id: (len(c.selection.picks), c.selection.trending_fallback)
         for c in composed},
    )
    with CLOCK("ledger"):
        ledger.attach_items(session, delivery_items(composed, delivery_ids))
        session.commit()
    metrics.count_digests(skipped=len(skipped), failed=len(unsendable))
    for window in chunked(composed, settings.ledger_window):
        send_window(session, settings, day, token, window, sender, report, journal)
    return report


def compose_batch(
    session: Session, settings: Settings, prepared: PreparedDay, subscriber_ids: Sequence[int]
) -> tuple[list[Composed], list[int], list[tuple[int, str, str]]]:
    """Score and render a batch: (digests to send, ids with nothing to send, unsendable)."""
    with CLOCK("load", len(subscriber_ids)):
        subscribers, profiles = load_batch(session, prepared.day, subscriber_ids)
    with CLOCK("score", len(profiles)):
        selections = prepared.index.select(profiles)
    composed: list[Composed] = []
    nothing: list[int] = []
    unsendable: list[tuple[int, str, str]] = []
    for subscriber, selection in zip(subscribers, selections, strict=True):
        if not selection.picks:
            nothing.append(subscriber.id)
            continue
        try:
            with CLOCK("render"):
                message = compose_message(settings, prepared, subscriber, selection)
        except ValueError as exc:  # a stored value no message may carry; the rest go on
            unsendable.append((subscriber.id, subscriber.email, f"not sendable: {exc}"))
            continue
        composed.append(Composed(subscriber.id, subscriber.email, selection, message))
    # Claimed rows whose subscriber stopped being active meanwhile: nothing to send.
    loaded = {s.id for s in subscribers}
    nothing += [sid for sid in subscriber_ids if sid not in loaded]
    return composed, nothing, unsendable


def delivery_items(
    composed: Sequence[Composed], delivery_ids: dict[int, int]
) -> list[dict[str, object]]:
    return [
        {
            "delivery_id": delivery_ids[c.subscriber_id],
            "subscriber_id": c.subscriber_id,
            "paper_id": pick.paper_id,
            "rank": rank,
            "score": pick.score,
            "why": " · ".join(pick.reasons),
        }
        for c in composed
        for rank, pick in enumerate(c.selection.picks, start=1)
    ]


def send_window(
    session: Session,
    settings: Settings,
    day: date,
    token: str,
    window: Sequence[Composed],
    sender: Sender,
    report: DayReport,
    journal: Journal | None = None,
) -> None:
    """Mark a window SENDING, hand it to the mail backend, record each outcome.

    If the process dies here this window's rows stay SENDING; the attempt's `journal` then
    tells which of them the backend accepted, and only those in flight stay in doubt.
    """
    with CLOCK("ledger"):
        owned = ledger.start_sending(
            session, day, token, [c.subscriber_id for c in window], datetime.now(timezone.utc),
            settings.claim_lease_seconds,
        )
    with CLOCK("send", len(owned)):
        ours = [c for c in window if c.subscriber_id in owned]
        results: dict[int, SendResult] = dict(zip(
            (c.subscriber_id for c in ours), sender.send_many([c.message for c in ours], journal),
            strict=True,
        ))
    with CLOCK("ledger"):
        record_outcomes(session, settings, day, token, window, results, report)


def record_outcomes(
    session: Session,
    settings: Settings,
    day: date,
    token: str,
    window: Sequence[Composed],
    results: dict[int, SendResult],
    report: DayReport,
) -> None:
    """Close each row of the window with what the mail backend said, in bulk."""
    now = datetime.now(timezone.utc)
    by_status: dict[DeliveryStatus, list[int]] = {}
    errors: dict[int, str] = {}
    for c in window:
        result = results.get(c.subscriber_id)
        if result is None:
            continue  # another attempt owns it
        if result.in_doubt:
            status = DeliveryStatus.IN_DOUBT
            report.failed.append((c.email, f"in doubt, not resent: {result.detail}"))
        elif result.outcome is SendOutcome.SENT:
            status = DeliveryStatus.SENT
            report.sent.append(c.email)
        elif result.outcome is SendOutcome.PERMANENT:
            status = DeliveryStatus.FAILED
            report.failed.append((c.email, f"refused, address suppressed: {result.detail}"))
        else:
            status = DeliveryStatus.RETRYING
            report.failed.append((c.email, f"temporary failure, will retry: {result.detail}"))
        by_status.setdefault(status, []).append(c.subscriber_id)
        errors[c.subscriber_id] = result.detail[:1000]
    for status, ids in by_status.items():
        if status is DeliveryStatus.SENT:
            ledger.finish(session, day, token, status, ids, now)
        else:
            # One statement per distinct error keeps this bulk in the common case.
            for detail in {errors[i] for i in ids}:
                ledger.finish(
                    session, day, token, status, [i for i in ids if errors[i] == detail], now,
                    error=detail, retry_after_seconds=RETRY_AFTER_SECONDS,
                )
    bounced = by_status.get(DeliveryStatus.FAILED, [])
    if bounced:
        suppress(session, bounced, SubscriberStatus.BOUNCED)
    session.commit()
    metrics.count_outcomes(by_status)


RETRY_AFTER_SECONDS = 300


def suppress(session: Session, subscriber_ids: Sequence[int], status: SubscriberStatus) -> None:
    """Stop mailing these addresses (a hard bounce, a complaint)."""
    session.execute(
        update(Subscriber).where(Subscriber.id.in_(subscriber_ids)).values(status=status)
    )


def preview_batch(
    session: Session, settings: Settings, prepared: PreparedDay, subscriber_ids: Sequence[int]
) -> DayReport:
    """Dry run of a batch: score and render, claim and send nothing."""
    report = DayReport(day=prepared.day, dry_run=True)
    composed, nothing, unsendable = compose_batch(session, settings, prepared, subscriber_ids)
    report.sent = [c.email for c in composed]
    report.skipped[SKIP_NO_MATCH] += len(nothing)
    report.failed += [(email, reason) for _, email, reason in unsendable]
    return report


def load_batch(
    session: Session, day: date, subscriber_ids: Sequence[int]
) -> tuple[list[Subscriber], list[Profile]]:
    """A batch's subscribers, profiles, history and feedback in a constant number of queries."""
    subscribers = list(
        session.scalars(
            select(Subscriber)
            .where(db.among(session, Subscriber.id, subscriber_ids),
                   Subscriber.status == SubscriberStatus.ACTIVE)
            .order_by(Subscriber.id)
        ).unique()
    )
    ids = [s.id for s in subscribers]
    last_digest = {
        subscriber_id: last_digest_cutoff(last_date, claimed_at)
        for subscriber_id, last_date, claimed_at in session.execute(
            select(
                Delivery.subscriber_id,
                func.max(Delivery.digest_date),
                func.max(Delivery.claimed_at),
            )
            .where(
                db.among(session, Delivery.subscriber_id, ids),
                Delivery.digest_date < day,
                Delivery.status == DeliveryStatus.SENT,
            )
            .group_by(Delivery.subscriber_id)
        )
    }
    sent: dict[int, set[int]] = {}
    for subscriber_id, paper_id in session.execute(
        select(DeliveryItem.subscriber_id, DeliveryItem.paper_id).where(
            db.among(session, DeliveryItem.subscriber_id, ids)
        )
    ):
        sent.setdefault(subscriber_id, set()).add(paper_id)
    learned = feedback.signals_for(session, ids)
    profiles = [
        profile_of(s, since=last_digest.get(s.id), sent=frozenset(sent.get(s.id, ())),
                   learned=learned.get(s.id, ()))
        for s in subscribers
    ]
    return subscribers, profiles


def last_digest_cutoff(digest_date: date, claimed_at: datetime | None) -> datetime:
    """The newest first-seen time the previous digest could have carried.

    Its own day's window ends at midnight after it, and it could not see papers that arrived
    after it was composed. Wall-clock time alone would be wrong for a catch-up run of a past
    date (`digest run --date`): that digest never saw the papers of the days after it.
    """
    window_end = day_bounds(digest_date, 1)[1]
    claimed = _aware(claimed_at)
    return min(window_end, claimed) if claimed else window_end


def profile_of(
    subscriber: Subscriber,
    since: datetime | None = None,
    sent: frozenset[int] = frozenset(),
    learned: tuple[FeedbackSignal, ...] = (),
) -> Profile:
    """What scoring needs of a subscriber: topics, exclusions, size, what they already have,
    and what their feedback taught."""
    topics = subscriber.profile
    return Profile(
        subscriber_id=subscriber.id,
        topics=topics.topics if topics else "",
        exclude=topics.exclude if topics else "",
        trending_fallback=bool(topics and topics.trending_fallback),
        limit=subscriber.papers_per_digest,
        since=since,
        sent_paper_ids=sent,
        feedback=learned,
    )


EMAIL_LINKS = (Purpose.PREFERENCES, Purpose.UNSUBSCRIBE, Purpose.FEEDBACK)


def digest_context(
    settings: Settings, prepared: PreparedDay, subscriber: Subscriber, selection: Selection
) -> DigestContext:
    items = tuple(
        DigestItem(card=prepared.cards[pick.paper_id], reasons=pick.reasons, score=pick.score)
        for pick in selection.picks
    )
    own = links(settings, subscriber, EMAIL_LINKS)
    return DigestContext(
        day=prepared.day,
        recipient=subscriber.email,
        topics=subscriber.profile.topics if subscriber.profile else "",
        items=items,
        preferences_url=own[Purpose.PREFERENCES],
        unsubscribe_url=own[Purpose.UNSUBSCRIBE],
        feedback_url=own[Purpose.FEEDBACK],
        site_url=settings.public_base_url,
        trending_fallback=selection.trending_fallback,
    )


def compose_message(
    settings: Settings, prepared: PreparedDay, subscriber: Subscriber, selection: Selection
) -> OutgoingEmail:
    context = digest_context(settings, prepared, subscriber, selection)
    rendered = prepared.renderer.render(context)
    return OutgoingEmail(
        to=subscriber.email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=message_id_for(settings, "digest", subscriber.id, prepared.day),
        unsubscribe_url=context.unsubscribe_url,  # the same signed link as in the body
        date=datetime.now(timezone.utc),
        kind="digest",
        unsubscribe_mailto=mailto_address(settings, subscriber),
    )


def preview_digest(settings: Settings, email: str, day: date) -> RenderedEmail | None:
    """Render what `email` would receive for `day`, without claiming or sending anything."""
    from .subscribers import get_subscriber

    with db.session_scope(settings) as session:
        subscriber = get_subscriber(session, email)
        prepared = prepare_day(session, settings, day)
        _, profiles = load_batch(session, day, [subscriber.id])
        if not profiles:  # not active: preview their topics anyway
            profiles = [profile_of(subscriber)]
        selection = prepared.index.select(profiles)[0]
        if not selection.picks:
            return None
        return render_digest(digest_context(settings, prepared, subscriber, selection))


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
