"""The day's story, top-down: plan → prepare once → for each batch: score, render, claim,
send, record.

`run_day` runs a whole day in this process, or in forked processes sharing its batches
(`pool.py`): `digest run`, `digest demo`. The scheduled path splits the same steps across
Celery: the beat's tick calls `plan_due_batches`, which finds subscribers whose local send hour
has come, plans their deliveries and hands out their batches; a worker's `send_planned_batch`
sends one. Both go through `process_batch`, so there is one implementation of a batch.

Per-day work (the paper index, the trending signal, each paper's card) is done once per
process and day (`prepare.py`); per-subscriber work runs in batches whose database round
trips do not grow with the batch (`profiles.py` loads them). The ledger (`ledger.py`) makes
every step safe to repeat; `status.py` reports on a run and on a day.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import partial
from time import perf_counter
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    JSON,
    Date,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    column,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from . import db, ledger, metrics
from .clock import CLOCK
from .journal import Journal, resolve_abandoned
from .mail import (
    OutboxRows,
    OutgoingEmail,
    Sender,
    SendOutcome,
    SendResult,
    batch_sender,
    message_id_for,
    message_id_sql,
    open_sender,
    outbox_rows,
    write_outbox_index,
)
from .mailto import mailto_address
from .models import (
    Cadence,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
    delivery_period,
)
from .pool import run_in_processes, run_jobs
from .prepare import PreparedDay, prepare_day, prepared_day
from .profiles import Reader, load_batch, profile_of, reader_of
from .render.content import DigestContext, DigestItem
from .render.plain import RenderedEmail, render_digest
from .score import Profile, Selection
from .settings import Settings
from .status import SKIP_ALREADY_SENT, SKIP_ELSEWHERE, SKIP_NO_MATCH, DayReport, mailable
from .suppressions import SuppressionError, suppress_address
from .tokens import Purpose, archive_link, links

log = logging.getLogger(__name__)
T = TypeVar("T")


# --- the whole day in one run ----------------------------------------------------------


def run_day(
    settings: Settings,
    day: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> DayReport:
    """Send each active subscriber their digest for `day` (a weekly reader's only on their
    weekday), once, whatever their send hour."""
    report = DayReport(day=day, dry_run=dry_run)
    now = datetime.now(timezone.utc)
    with db.session_scope(settings) as session, CLOCK("plan"):
        readers = session.execute(
            select(Subscriber.id, Subscriber.cadence)
            .where(mailable(), due_on_weekday(day.weekday()))
            .order_by(Subscriber.id)
        ).all()
        due = [sid for sid, _ in readers]
        report.due = len(due)
        if dry_run:
            planned = _not_yet_handled(session, day, due, now)
        else:
            resolve_abandoned(session, settings, now)
            due_rows = [(sid, day, delivery_period(day, cadence)) for sid, cadence in readers]
            pairs = plan_pairs(session, settings, due_rows, now, retry_now=True)
            planned = [sid for sid, _ in pairs]
        _count_already_handled(session, day, set(due) - set(planned), report)
        weekly_planned = any(cadence is Cadence.WEEKLY for _, cadence in readers)
    with db.session_scope(settings) as session:
        if on_plan:
            on_plan(len(planned))
        with CLOCK("prepare"):
            prepared = prepare_day(session, settings, day)
            if weekly_planned:  # built before the run processes fork, so they share it
                prepared_day(session, settings, day, weekly=True)
        report.candidates = len(prepared.index)
        batches = list(chunked(planned, settings.batch_size))
        jobs = 1 if dry_run else run_jobs(settings, len(batches))
        errors: list[str] = []
        if jobs > 1:
            session.commit()  # the children see the plan; this session waits for them
            share, rows, errors = run_in_processes(
                settings, day, partial(_send_share, settings, prepared), batches, jobs, progress
            )
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


def _send_share(
    settings: Settings, prepared: PreparedDay, session: Session,
    batches: Iterator[Sequence[int]], progress: Callable[[int], None],
) -> tuple[DayReport, OutboxRows]:
    """A run process's share of the day's batches (`pool.run_in_processes`)."""
    return run_batches(session, settings, prepared, batches, progress=progress)


# --- plan: who is due, and when ---------------------------------------------------------


def due_subscribers(session: Session, now: datetime) -> Iterator[tuple[int, date, str]]:
    """(subscriber, their local date, its period) for everyone whose local send hour has come
    today; for a weekly reader, only when today is their weekday.

    Each subscriber's hour and weekday are read in their own IANA zone at `now`, so DST shifts
    move them with local time. A subscriber whose hour passed while the system was down is
    still due later that local day (not the day after, for a weekly reader either). One who
    already has a delivery row for their local date, or a weekly reader for the ISO week of
    it, is not due again (unless that row was abandoned: planned or claimed, and its lease
    ran out).

    Streamed: read in pages of DUE_PAGE by id (keyset, one query per page whatever the zones
    and cadences), so a day of a million readers is never held whole, and each page is a
    query of its own: the planner commits between pages, which would end a cursor.
    """
    local = _local_times(session, now)
    if not local:
        return
    due_now = or_(*(
        and_(Subscriber.time_zone == zone, Subscriber.send_hour <= at.hour,
             due_on_weekday(at.weekday()), ~_handled(at.date(), now))
        for zone, at in sorted(local.items())
    ))
    postgres = session.get_bind().dialect.name == "postgresql"
    after = 0
    while True:
        if postgres:
            _without_jit(session)
        rows = session.execute(
            select(Subscriber.id, Subscriber.cadence, Subscriber.time_zone)
            .where(mailable(), Subscriber.id > after, due_now)
            .order_by(Subscriber.id)
            .limit(DUE_PAGE)
        ).all()
        for sid, cadence, zone in rows:
            today = local[zone].date()
            yield sid, today, delivery_period(today, cadence)
        if len(rows) < DUE_PAGE:
            return
        after = rows[-1][0]


DUE_PAGE = 5000


def _local_times(session: Session, now: datetime) -> dict[str, datetime]:
    """`now` in each time zone a mailable subscriber has (an unknown zone: UTC)."""
    zones = session.scalars(select(Subscriber.time_zone).where(mailable()).distinct()).all()
    return {zone: now.astimezone(reader_zone(zone)) for zone in zones}


def _without_jit(session: Session) -> None:
    """For this transaction: a planning page's cost estimate (a filter the planner cannot
    size) passes jit_above_cost, and compiling it took 4 s a page, far more than running it."""
    session.execute(text("SET LOCAL jit = off"))


def due_pages(
    session: Session, settings: Settings, now: datetime
) -> Iterator[Select[Any]]:
    """PostgreSQL: `due_subscribers` as SELECTs the database plans from directly
    (`ledger.plan_selected`), one per page of PLAN_CHUNK subscribers by id, each with its
    rows' message ids: the same rows, and none of them read into Python.

    The zones' local dates, hours, weekdays and weeks are computed here (Python's zoneinfo,
    as for `due_subscribers`) and joined as a small table. Each page's upper id is found
    when the page is due (the planner commits between pages), by the primary key alone.
    """
    local = _local_times(session, now)
    if not local:
        return
    zones = json.dumps([
        {"time_zone": zone, "day": at.date().isoformat(), "hour": at.hour,
         "weekday": at.weekday(), "week": delivery_period(at.date(), Cadence.WEEKLY)}
        for zone, at in local.items()
    ])
    zone = (
        func.json_to_recordset(cast(literal(zones, String), JSON))
        .table_valued(column("time_zone", String), column("day", String),
                      column("hour", Integer), column("weekday", Integer),
                      column("week", String))
        .render_derived(name="zone", with_types=True)
    )
    day = cast(zone.c.day, Date)
    select_due = (
        select(
            Subscriber.id.label("subscriber_id"),
            day.label("digest_date"),
            case((Subscriber.cadence == Cadence.WEEKLY, zone.c.week),
                 else_=zone.c.day).label("period"),
            message_id_sql(settings, "digest", Subscriber.id, zone.c.day).label("message_id"),
        )
        .join_from(Subscriber, zone, Subscriber.time_zone == zone.c.time_zone)
        .where(mailable(), Subscriber.send_hour <= zone.c.hour,
               or_(Subscriber.cadence == Cadence.DAILY, Subscriber.send_weekday == zone.c.weekday),
               ~_handled(day, now, zone.c.week))
    )
    after: int | None = 0
    while after is not None:
        _without_jit(session)
        # The page's last id, and the next one's first if there is a next page.
        ends = session.scalars(
            select(Subscriber.id).where(Subscriber.id > after).order_by(Subscriber.id)
            .offset(ledger.PLAN_CHUNK - 1).limit(2)
        ).all()
        page = select_due.where(Subscriber.id > after)
        yield page.where(Subscriber.id <= ends[0]) if ends else page
        after = ends[0] if len(ends) == 2 else None


def _handled(
    today: date | ColumnElement[date], now: datetime, week: str | ColumnElement[str] | None = None
) -> ColumnElement[bool]:
    """A subscriber with a live delivery row for `today`, or a weekly one for its ISO week
    (`week`: given when `today` is a column)."""
    if week is None:
        assert isinstance(today, date)
        week = delivery_period(today, Cadence.WEEKLY)
    return exists().where(
        Delivery.subscriber_id == Subscriber.id,
        or_(
            Delivery.digest_date == today,
            and_(Subscriber.cadence == Cadence.WEEKLY, Delivery.period == week),
        ),
        ~ledger.stale_condition(now),  # type: ignore[operator]
    )


def due_on_weekday(weekday: int) -> ColumnElement[bool]:
    """Readers who get a digest on a day with this weekday: daily ones, and weekly ones whose
    weekday it is."""
    return or_(Subscriber.cadence == Cadence.DAILY, Subscriber.send_weekday == weekday)


def reader_zone(name: str) -> ZoneInfo:
    """A stored time zone (UTC, with a warning, for a zone this system does not know)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r in the database; using UTC", name)
        return ZoneInfo("UTC")


def plan_pairs(
    session: Session,
    settings: Settings,
    pairs: Sequence[tuple[int, date, str]],
    now: datetime,
    retry_now: bool = False,
) -> list[tuple[int, date]]:
    """Write planned delivery rows for (subscriber, day, period); returns the (subscriber, day)
    pairs this call planned (not another planner's, nor those with a row in that period)."""
    return [pair for chunk in _plan(session, settings, pairs, now, retry_now) for pair in chunk]


def plan_due_batches(settings: Settings, now: datetime) -> Iterator[tuple[date, list[int]]]:
    """The beat's step: report abandoned sends, plan who is due now, and cut them into
    batches, each handed out as soon as its part of the plan is committed, so the tick
    enqueues a big day's first batches while it plans the rest."""
    with db.session_scope(settings) as session:
        resolve_abandoned(session, settings, now)  # logs what it settled
        for planned in _plan_due(session, settings, now):
            by_day: dict[date, list[int]] = {}
            for sid, day in sorted(planned):
                by_day.setdefault(day, []).append(sid)
            for day, ids in sorted(by_day.items()):
                for batch in chunked(ids, settings.batch_size):
                    yield day, list(batch)


def _plan_due(session: Session, settings: Settings, now: datetime,
              ) -> Iterator[list[tuple[int, date]]]:
    """Plan who is due now, chunk by committed chunk: on PostgreSQL inside the database, a
    page of subscribers per statement (`due_pages`); on SQLite, the stream of
    `due_subscribers` through `ledger.plan`. Both plan the same rows (tests/test_planning)."""
    if session.get_bind().dialect.name != "postgresql":
        yield from _plan(session, settings, due_subscribers(session, now), now)
        return
    for planned in ledger.plan_selected(session, due_pages(session, settings, now), now,
                                        settings.claim_lease_seconds):
        metrics.count_planned(planned)
        yield planned


def _plan(
    session: Session,
    settings: Settings,
    pairs: Iterable[tuple[int, date, str]],
    now: datetime,
    retry_now: bool = False,
) -> Iterator[list[tuple[int, date]]]:
    """The ledger's plan, chunk by committed chunk, counted for the metrics."""
    message_id = partial(message_id_for, settings, "digest")
    for planned in ledger.plan(
        session, pairs, message_id, now, settings.claim_lease_seconds, retry_now=retry_now
    ):
        metrics.count_planned(planned)
        yield planned


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


# --- one batch: claim, score, render, send, record --------------------------------------


@dataclass(frozen=True)
class Composed:
    """One subscriber's digest, ready to send."""

    subscriber_id: int
    email: str
    selection: Selection
    message: OutgoingEmail


def send_planned_batch(settings: Settings, day: date, subscriber_ids: Sequence[int]) -> DayReport:
    """A worker's step: compose and claim one planned batch, and send it; safe to run twice.

    Over SMTP the composed batch goes to this process's sending thread (`SENDING`), which
    sends it over the kept connections while this task returns and the next one composes and
    claims: the report then holds what was composed and claimed, and the sending thread
    records each outcome in the ledger. Other backends send here, before returning.
    """
    if settings.mail_backend != "smtp":
        with db.session_scope(settings) as session:
            prepared = prepared_day(session, settings, day)
            with batch_sender(settings) as sender:
                return process_batch(session, settings, prepared, subscriber_ids, sender)
    started = perf_counter()
    with db.session_scope(settings) as session:
        prepared = prepared_day(session, settings, day)
        token = uuid.uuid4().hex
        journal = Journal(settings, token)  # before the claim: a dead attempt's claims are freed
        try:
            report, windows = compose_and_claim(session, settings, prepared, subscriber_ids,
                                                token)
        except BaseException:
            journal.close(remove=False)
            raise
    SENDING.submit(ComposedBatch(settings, day, token, journal, windows, report, started))
    return report


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
        report, windows = compose_and_claim(session, settings, prepared, subscriber_ids, token,
                                            first_window=True)
        send_windows(session, settings, prepared.day, token, windows, sender, report, journal,
                     first_marked=True)
    except BaseException:
        journal.close(remove=False)  # what went out before the failure, for the recovery
        raise
    journal.close()
    return report


def compose_and_claim(
    session: Session,
    settings: Settings,
    prepared: PreparedDay,
    subscriber_ids: Sequence[int],
    token: str,
    first_window: bool = False,
) -> tuple[DayReport, list[Sequence[Composed]]]:
    """Score and render the batch, then claim its planned rows for the attempt `token`, each
    as what it became (to send, skipped, failed), with the papers each carries: one statement
    and one commit. Returns the report and the digests this attempt owns, cut into windows
    (`window_size`).

    With `first_window` (the same session sends the batch at once) the first window's rows are
    claimed straight into SENDING, the mark `send_windows` would otherwise write before them.
    Rows another attempt holds are left to it, and what was composed for them is dropped. A
    batch that dies before the claim commits leaves its rows planned, and nothing attached.
    """
    day = prepared.day
    report = DayReport(day=day)
    now = datetime.now(timezone.utc)  # the digests' papers are those known by now
    composed, skipped, unsendable = compose_batch(session, settings, prepared, subscriber_ids)
    windows = list(chunked(composed, window_size(settings, len(composed))))
    sending = {c.subscriber_id for c in windows[0]} if first_window and windows else set()
    rows = [
        *(ledger.ComposedRow(
            c.subscriber_id,
            DeliveryStatus.SENDING if c.subscriber_id in sending else DeliveryStatus.CLAIMED,
            len(c.selection.picks), c.selection.trending_fallback) for c in composed),
        *(ledger.ComposedRow(sid, DeliveryStatus.SKIPPED) for sid in skipped),
        *(ledger.ComposedRow(sid, DeliveryStatus.FAILED, error=reason)
          for sid, _, reason in unsendable),
    ]
    with CLOCK("ledger"):
        claims = ledger.claim_composed(session, day, token, now, settings.claim_lease_seconds,
                                       rows)
        owned = {c.subscriber_id: c.delivery_id for c in claims}
        ledger.attach_items(session, delivery_items(
            [c for c in composed if c.subscriber_id in owned], owned))
        session.commit()
    skipped_here = sum(sid in owned for sid in skipped)
    failed_here = [(email, reason) for sid, email, reason in unsendable if sid in owned]
    report.skipped[SKIP_ELSEWHERE] += len(subscriber_ids) - len(owned)
    report.skipped[SKIP_NO_MATCH] += skipped_here
    report.failed += failed_here
    metrics.count_digests(skipped=skipped_here, failed=len(failed_here))
    # Each window keeps its place: the first, if claimed as SENDING, stays the first.
    return report, [[c for c in window if c.subscriber_id in owned] for window in windows]


def window_size(settings: Settings, composed: int) -> int:
    """How many of a batch's digests are marked SENDING together.

    A window bounds what a crash can leave in doubt where nothing else can tell what went out.
    The file outbox can: a message is in it whole or not at all, and `journal.resolve_abandoned`
    settles a dead attempt's SENDING rows exactly from it. So the file backend sends its whole
    batch as one window, one ledger statement instead of one per LEDGER_WINDOW messages.
    """
    return max(1, composed) if settings.mail_backend == "file" else settings.ledger_window


def compose_batch(
    session: Session, settings: Settings, prepared: PreparedDay, subscriber_ids: Sequence[int]
) -> tuple[list[Composed], list[int], list[tuple[int, str, str]]]:
    """Score and render a batch: (digests to send, ids with nothing to send, unsendable)."""
    with CLOCK("load", len(subscriber_ids)):
        subscribers, profiles = load_batch(session, prepared.day, subscriber_ids)
    days = prepared_for(session, settings, prepared, subscribers)
    with CLOCK("score", len(profiles)):
        selections = select_on(days, profiles)
    composed: list[Composed] = []
    nothing: list[int] = []
    unsendable: list[tuple[int, str, str]] = []
    for subscriber, own_day, selection in zip(subscribers, days, selections, strict=True):
        if not selection.picks:
            nothing.append(subscriber.id)
            continue
        try:
            with CLOCK("render"):
                message = compose_message(settings, own_day, subscriber, selection)
        except ValueError as exc:  # a stored value no message may carry; the rest go on
            unsendable.append((subscriber.id, subscriber.email, f"not sendable: {exc}"))
            continue
        composed.append(Composed(subscriber.id, subscriber.email, selection, message))
    # Claimed rows whose subscriber stopped being active meanwhile: nothing to send.
    loaded = {s.id for s in subscribers}
    nothing += [sid for sid in subscriber_ids if sid not in loaded]
    return composed, nothing, unsendable


def prepared_for(
    session: Session, settings: Settings, prepared: PreparedDay, subscribers: Sequence[Reader]
) -> list[PreparedDay]:
    """Each subscriber's PreparedDay: the day's, or a weekly reader's the week's (built once per
    process and day, and only for a batch that has a weekly reader: one query more at most)."""
    if all(s.cadence is not Cadence.WEEKLY for s in subscribers) or prepared.weekly:
        return [prepared] * len(subscribers)
    week = prepared_day(session, settings, prepared.day, weekly=True)
    return [week if s.cadence is Cadence.WEEKLY else prepared for s in subscribers]


def select_on(days: Sequence[PreparedDay], profiles: Sequence[Profile]) -> list[Selection]:
    """Each profile scored on its own PreparedDay's index, one call per index in the batch."""
    if all(day is days[0] for day in days):
        return days[0].index.select(profiles) if days else []
    selections: list[Selection | None] = [None] * len(profiles)
    groups: dict[int, list[int]] = {}
    for i, day in enumerate(days):
        groups.setdefault(id(day), []).append(i)
    for members in groups.values():
        picked = days[members[0]].index.select([profiles[i] for i in members])
        for i, selection in zip(members, picked, strict=True):
            selections[i] = selection
    return [s for s in selections if s is not None]


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


def send_windows(
    session: Session,
    settings: Settings,
    day: date,
    token: str,
    windows: Sequence[Sequence[Composed]],
    sender: Sender,
    report: DayReport,
    journal: Journal | None = None,
    first_marked: bool = False,
) -> None:
    """Send an attempt's windows one after the other, each marked SENDING before it goes out
    (the first already is if `first_marked`: `compose_and_claim` claimed it so).

    A window's outcomes are committed with the next window's SENDING mark, in one transaction
    (its accepted rows closed by that mark's statement): at every commit at most one window is
    SENDING, as with a commit for each, and the connections wait for one round trip to the
    database between windows instead of two.
    """
    sent: list[int] = []
    for k, window in enumerate(windows):
        sent = send_window(session, settings, day, token, window, sender, report, journal,
                           commit=k == len(windows) - 1, sent_before=sent,
                           marked=first_marked and k == 0)


def send_window(
    session: Session,
    settings: Settings,
    day: date,
    token: str,
    window: Sequence[Composed],
    sender: Sender,
    report: DayReport,
    journal: Journal | None = None,
    commit: bool = True,
    sent_before: Sequence[int] = (),
    marked: bool = False,
) -> list[int]:
    """Mark a window SENDING (committing with it what the session holds, such as the previous
    window's outcomes, and closing `sent_before`, that window's accepted rows, as SENT), hand
    it to the mail backend, record each outcome (committed unless `commit` is False: then the
    next window's mark commits them, and closes the accepted rows this returns).

    If the process dies here this window's rows stay SENDING; the attempt's `journal` then
    tells which of them the backend accepted, and only those in flight stay in doubt. A window
    already `marked` SENDING (by the claim, just committed) goes out as it is.
    """
    if marked:
        owned = {c.subscriber_id for c in window}
    else:
        owned = _mark_sending(session, settings, day, token, window, sent_before)
    with CLOCK("send", len(owned)):
        ours = [c for c in window if c.subscriber_id in owned]
        results: dict[int, SendResult] = dict(zip(
            (c.subscriber_id for c in ours), sender.send_many([c.message for c in ours], journal),
            strict=True,
        ))
    with CLOCK("ledger"):
        return record_outcomes(session, settings, day, token, window, results, report, commit,
                               defer_sent=not commit)


def _mark_sending(
    session: Session, settings: Settings, day: date, token: str, window: Sequence[Composed],
    sent_before: Sequence[int],
) -> set[int]:
    """Mark `window` SENDING, closing `sent_before` as SENT (committed); the rows still ours."""
    with CLOCK("ledger"):
        return ledger.start_sending(
            session, day, token, [c.subscriber_id for c in window], datetime.now(timezone.utc),
            settings.claim_lease_seconds,
            {c.subscriber_id: (len(c.selection.picks), c.selection.trending_fallback)
             for c in window},
            sent_before,
        )


def record_outcomes(
    session: Session,
    settings: Settings,
    day: date,
    token: str,
    window: Sequence[Composed],
    results: dict[int, SendResult],
    report: DayReport,
    commit: bool = True,
    defer_sent: bool = False,
) -> list[int]:
    """Close each row of the window with what the mail backend said, in bulk. With
    `defer_sent`, the accepted rows are left to the next window's SENDING mark
    (`ledger.start_sending`), in the same transaction: returns them."""
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
            if not defer_sent:
                ledger.finish(session, day, token, status, ids, now)
        else:
            # One statement per distinct error keeps this bulk in the common case.
            for detail in {errors[i] for i in ids}:
                ledger.finish(
                    session, day, token, status, [i for i in ids if errors[i] == detail], now,
                    error=detail, retry_after_seconds=RETRY_AFTER_SECONDS,
                )
    refused = set(by_status.get(DeliveryStatus.FAILED, ()))
    suppress_bounces(session, [(c.subscriber_id, c.email, errors[c.subscriber_id])
                               for c in window if c.subscriber_id in refused], now)
    if commit:
        session.commit()
    metrics.count_outcomes(by_status)
    return by_status.get(DeliveryStatus.SENT, []) if defer_sent else []


RETRY_AFTER_SECONDS = 300


# --- a worker's sending, overlapped with composing its next batch --------------------------


@dataclass(frozen=True)
class ComposedBatch:
    """A composed and claimed batch, handed to the sending thread by `send_planned_batch`."""

    settings: Settings
    day: date
    token: str
    journal: Journal  # the attempt's, locked by this process until its outcomes are recorded
    windows: list[Sequence[Composed]]
    report: DayReport
    started: float  # perf_counter at the claim, for the batch duration metric


class SendingThread:
    """One thread per worker process that sends composed batches, one window at a time and in
    the order they came, while the task's thread composes and claims the next batch.

    Without it a worker's connections wait while it loads, scores and renders each batch and
    while Celery acknowledges the task and fetches the next. What can be in doubt after a
    crash does not widen: windows are marked SENDING by this one thread only, one after the
    other (`send_windows`), so a process has at most one window SENDING at any commit; a
    batch waiting its turn is only claimed, and a dead process's claims are planned again.
    `submit` waits while one batch already waits, so composing runs at most one batch ahead.
    """

    _queue: queue.Queue[ComposedBatch]
    _thread: threading.Thread | None
    _lock: threading.Lock

    def __init__(self) -> None:
        self.forget()

    def submit(self, batch: ComposedBatch) -> None:
        self._start()
        self._queue.put(batch)

    def finish(self) -> None:
        """Wait until every batch handed over is sent and recorded (a worker's shutdown,
        tests)."""
        if self._thread is not None:
            self._queue.join()

    def forget(self) -> None:
        """In a forked child: the parent's thread and batches are not this process's."""
        self._queue = queue.Queue(maxsize=1)
        self._thread = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="digest-sending",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                send_composed(batch)
            except Exception:  # its rows stay SENDING or claimed: the recovery settles them
                log.exception("sending batch %s failed; the next tick settles its rows from "
                              "its journal", batch.token)
            finally:
                self._queue.task_done()


def send_composed(batch: ComposedBatch) -> None:
    """Send a composed batch's windows over the worker's kept connections and record them."""
    settings = batch.settings
    try:
        with db.session_scope(settings) as session, batch_sender(settings) as sender:
            send_windows(session, settings, batch.day, batch.token, batch.windows, sender,
                         batch.report, batch.journal)
    except BaseException:
        batch.journal.close(remove=False)  # what went out before the failure, for the recovery
        raise
    batch.journal.close()
    metrics.BATCH_SECONDS.observe(perf_counter() - batch.started)


SENDING = SendingThread()
os.register_at_fork(after_in_child=SENDING.forget)
atexit.register(SENDING.finish)


def suppress_bounces(
    session: Session, refused: Sequence[tuple[int, str, str]], now: datetime
) -> None:
    """Put each (subscriber, address, reply) the mail server refused for good on the
    suppression list, as a provider's bounce webhook does: the same suppression row, status
    and history event, whichever told us first."""
    for subscriber_id, email, detail in refused:
        try:
            suppress_address(session, email, SuppressionReason.BOUNCED, BOUNCE_SOURCE, detail, now)
        except SuppressionError:  # a stored address the list cannot key: stop it all the same
            session.execute(update(Subscriber).where(Subscriber.id == subscriber_id)
                            .values(status=SubscriberStatus.BOUNCED))


BOUNCE_SOURCE = "smtp"


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


EMAIL_LINKS = (Purpose.PREFERENCES, Purpose.UNSUBSCRIBE, Purpose.FEEDBACK)


def digest_context(
    settings: Settings, prepared: PreparedDay, subscriber: Reader, selection: Selection
) -> DigestContext:
    items = tuple(
        DigestItem(card=prepared.cards[pick.paper_id], reasons=pick.reasons, score=pick.score)
        for pick in selection.picks
    )
    own = links(settings, subscriber, EMAIL_LINKS)
    return DigestContext(
        day=prepared.day,
        recipient=subscriber.email,
        topics=subscriber.topics,
        items=items,
        preferences_url=own[Purpose.PREFERENCES],
        unsubscribe_url=own[Purpose.UNSUBSCRIBE],
        feedback_url=own[Purpose.FEEDBACK],
        click_tracking=subscriber.click_tracking,
        archive_url=archive_link(settings, subscriber, prepared.day),
        site_url=settings.public_base_url,
        trending_fallback=selection.trending_fallback,
        weekly=prepared.weekly,
    )


def compose_message(
    settings: Settings, prepared: PreparedDay, subscriber: Reader, selection: Selection
) -> OutgoingEmail:
    context = digest_context(settings, prepared, subscriber, selection)
    rendered = prepared.renderer.render(context)
    return OutgoingEmail(
        to=subscriber.email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        text_quoted=rendered.text_quoted,
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
        subscriber = reader_of(get_subscriber(session, email))
        prepared = prepare_day(session, settings, day, subscriber.cadence is Cadence.WEEKLY)
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
