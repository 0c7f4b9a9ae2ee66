"""The delivery ledger: how many processes send each digest exactly once, whatever fails.

A delivery row (unique per subscriber and date, and per subscriber and period: a day for a
daily reader, an ISO week for a weekly one) moves through:

    planned  CLAIMED, no claim_token, lease_until = plan time + lease
    claimed  CLAIMED, claim_token = the attempt that composed the batch, to send it later
    sending  SENDING: the attempt is handing these messages to the mail server right now
    done     SENT | FAILED | SKIPPED | RETRYING (planned again after lease_until) | IN_DOUBT

An attempt composes its batch first, then claims the rows (`claim_composed`), each straight
into what it became: claimed, or SENDING for the first window of a batch sent at once, or
SKIPPED or FAILED, with the papers each carries, in one transaction. Every later write is
guarded by the attempt's claim_token, so a second copy of a task (a redelivery, a second
beat) finds nothing to claim and sends nothing. A worker killed mid-batch leaves
CLAIMED rows, which the planner hands to a new attempt once their lease has passed (they were
never given to the mail server), and at most one window of SENDING rows, which
`journal.resolve_abandoned` settles from the attempt's send journal: accepted ones are SENT,
ones never handed over are planned again, and only those in flight become IN_DOUBT (the server
may have accepted them), reported and never resent without the operator's word.

Every function here costs one statement whatever the number of rows, so a batch's round trips
do not grow with its size beyond one pair per window of LEDGER_WINDOW messages.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import islice
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from . import db
from .models import Delivery, DeliveryItem, DeliveryStatus

OPEN_STATUSES = (DeliveryStatus.CLAIMED, DeliveryStatus.RETRYING)
# Rows per planning statement and commit (the subscribers of one page, set-based on
# PostgreSQL): each commit is a WAL flush, and a million-reader day's thousand-row chunks
# spent seconds on them alone.
PLAN_CHUNK = 5000


@dataclass(frozen=True)
class Claim:
    subscriber_id: int
    delivery_id: int


def stale_condition(now: datetime) -> ColumnElement[bool]:
    """Rows whose owner went silent: planned or claimed but not sent by the end of the lease."""
    return and_(Delivery.status.in_(OPEN_STATUSES), Delivery.lease_until < now)


def plan(
    session: Session,
    due: Iterable[tuple[int, date, str]],
    message_id: Callable[[int, date], str],
    now: datetime,
    lease_seconds: int,
    retry_now: bool = False,
) -> Iterator[list[tuple[int, date]]]:
    """Write planned rows for due (subscriber, day, period) rows, PLAN_CHUNK at a time; hand
    out the (subscriber, day) pairs each chunk planned as soon as it is committed, so a big
    day's first batches can go out while the rest is planned.

    The database refuses a second row for a subscriber's day or period (`models.
    delivery_period`): a weekly reader already sent this week's digest, or anyone already
    sent today's, is not planned again, whatever their cadence is now.

    New pairs are inserted; stale rows are re-planned (with `retry_now`, RETRYING rows too,
    without waiting for their backoff: an admin's manual run). Pairs another planner got first
    are not handed out, so two beats never enqueue the same subscriber twice.

    Once ANALYZE_AFTER_PLANNING rows are planned the statistics are refreshed (the batches that
    start then need them as much as any), and again at the end if more were planned since.
    """
    rows = iter(due)  # a stream (`pipeline.due_subscribers`): read one chunk at a time

    def chunks() -> Iterator[list[tuple[int, date]]]:
        while chunk := list(islice(rows, PLAN_CHUNK)):
            ids = {(sid, day): message_id(sid, day) for sid, day, _ in chunk}
            planned = _plan_chunk(session, chunk, ids, now, lease_seconds, retry_now)
            yield [(sid, day) for sid, day, _ in chunk if (sid, day) in planned]

    return _committed(session, chunks())


def plan_selected(
    session: Session, pages: Iterable[Select[Any]], now: datetime, lease_seconds: int
) -> Iterator[list[tuple[int, date]]]:
    """PostgreSQL: plan what each page's SELECT names (its columns: subscriber_id,
    digest_date, period, message_id), one statement a page, committed page by page as
    `plan` does; hands out the (subscriber, day) pairs each page planned.

    The rows go from the SELECT into the table inside the database: a million-reader day
    sends PostgreSQL one statement per page and reads back only the planned pairs, where
    `plan` carries every row through Python twice. The same rules as `plan` (without
    `retry_now`): new rows are inserted unless the subscriber has a row for that day or
    period; a stale row of that day is planned again. The page's SELECT is run once
    (a CTE named twice is materialized) for both.
    """
    lease = now + timedelta(seconds=lease_seconds)

    def chunks() -> Iterator[list[tuple[int, date]]]:
        for page in pages:
            yield [(sid, day) for sid, day in
                   _execute(session, _plan_selected_statement(page, now, lease)).all()]

    return _committed(session, chunks())


def _plan_selected_statement(page: Select[Any], now: datetime, lease: datetime) -> Any:
    from sqlalchemy.dialects.postgresql import insert

    table = Delivery.__table__.c
    due = page.cte("due")
    replanned = (
        update(Delivery)
        .where(Delivery.subscriber_id == due.c.subscriber_id,
               Delivery.digest_date == due.c.digest_date, stale_condition(now))
        .values(status=DeliveryStatus.CLAIMED, claim_token=None, lease_until=lease)
        .returning(Delivery.subscriber_id, Delivery.digest_date)
        .cte("replanned")
    )
    values = select(
        due.c.subscriber_id, due.c.digest_date, due.c.period, due.c.message_id,
        literal(DeliveryStatus.CLAIMED, table.status.type), literal(0), literal(False),
        literal(now, table.claimed_at.type), literal(lease, table.lease_until.type), literal(0),
    )
    inserted = (
        insert(Delivery)
        .from_select(["subscriber_id", "digest_date", "period", "message_id", "status",
                      "paper_count", "trending_fallback", "claimed_at", "lease_until",
                      "attempts"], values)
        .on_conflict_do_nothing()  # either unique key: the day's, the period's
        .returning(Delivery.subscriber_id, Delivery.digest_date)
        .cte("inserted")
    )
    return union_all(select(inserted.c.subscriber_id, inserted.c.digest_date),
                     select(replanned.c.subscriber_id, replanned.c.digest_date))


def _committed(
    session: Session, chunks: Iterator[list[tuple[int, date]]]
) -> Iterator[list[tuple[int, date]]]:
    """Commit each planned chunk before handing it out. Once ANALYZE_AFTER_PLANNING rows
    are planned, refresh the statistics, and again at the end if more were planned since."""
    planned_rows = analyzed_at = 0
    for planned in chunks:
        planned_rows += len(planned)
        if not analyzed_at and planned_rows >= ANALYZE_AFTER_PLANNING:
            refresh_statistics(session)
            analyzed_at = planned_rows
        session.commit()
        yield planned
    if analyzed_at and planned_rows > analyzed_at:
        refresh_statistics(session)
        session.commit()


ANALYZE_AFTER_PLANNING = 1000


def refresh_statistics(session: Session) -> None:
    """Tell the query planner how the deliveries table looks now that a day was planned.

    Every batch statement finds its rows by subscriber and date (unique), but also names the
    date and status, which another index covers. Without statistics SQLite picks that one and
    scans the whole day's rows per statement, so a day's cost grows with the square of its
    size. One ANALYZE (approximate on SQLite, sampled on PostgreSQL) per planning fixes the
    choice. The subscribers and their profiles too: after a big import, PostgreSQL without
    statistics reads the whole status index for each batch's subscribers.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA analysis_limit=1000"))
    for table in STATISTICS_TABLES:
        session.execute(text(f"ANALYZE {table}"))


STATISTICS_TABLES = ("deliveries", "subscribers", "topic_profiles")


def _plan_chunk(
    session: Session,
    due: Sequence[tuple[int, date, str]],
    message_ids: dict[tuple[int, date], str],
    now: datetime,
    lease_seconds: int,
    retry_now: bool,
) -> set[tuple[int, date]]:
    lease = now + timedelta(seconds=lease_seconds)
    planned = _insert_planned(session, due, message_ids, now, lease)
    stale = [(sid, day) for sid, day, _ in due if (sid, day) not in planned]
    if stale:
        replanned = _execute(
            session,
            update(Delivery)
            .where(
                _pairs(stale),
                or_(*_replannable(now, retry_now)),
            )
            .values(status=DeliveryStatus.CLAIMED, claim_token=None, lease_until=lease)
            .returning(Delivery.subscriber_id, Delivery.digest_date)
        ).all()
        planned |= {(sid, day) for sid, day in replanned}
    return planned


def _replannable(now: datetime, retry_now: bool) -> list[ColumnElement[bool]]:
    """Which existing rows planning may take: stale ones, and with `retry_now` (an admin's
    run) also RETRYING ones without waiting for their backoff, and rows planned but never
    claimed (by a run that stopped, or a tick whose task has not started): `claim` is atomic,
    so whichever attempt claims them first is the only one that sends."""
    conditions = [stale_condition(now)]
    if retry_now:
        conditions += [
            Delivery.status == DeliveryStatus.RETRYING,
            and_(Delivery.status == DeliveryStatus.CLAIMED, Delivery.claim_token.is_(None)),
        ]
    return conditions


def _insert_planned(
    session: Session,
    due: Sequence[tuple[int, date, str]],
    message_ids: dict[tuple[int, date], str],
    now: datetime,
    lease: datetime,
) -> set[tuple[int, date]]:
    """A chunk's new rows as one JSON parameter of one INSERT ... SELECT, as `attach_items`
    does on PostgreSQL; returns the pairs inserted (not those another planner has, nor those
    whose subscriber has a row for that day or period already: ON CONFLICT names no one
    constraint, so both unique keys count).

    With RETURNING, SQLAlchemy sends an executemany as thousand-row VALUES statements and
    processes each row's nine parameters in Python (and psycopg parses each statement's nine
    thousand placeholders again), while every worker waits for its first batch.
    """
    table = Delivery.__table__
    dialect = session.get_bind().dialect
    status_type = table.c.status.type.compile(dialect)
    # SQLite stores a date as its ISO text; WHERE true parses ON CONFLICT as the upsert.
    rows_sql = _json_rows(dialect.name, (("subscriber_id", "integer"), ("digest_date", "date"),
                                         ("period", "text"), ("message_id", "text")))
    statement = (
        text(
            "INSERT INTO deliveries (subscriber_id, digest_date, period, message_id, status, "
            "paper_count, trending_fallback, claimed_at, lease_until, attempts) "
            f"SELECT subscriber_id, digest_date, period, message_id, "
            f"CAST(:status AS {status_type}), 0, false, :now, :lease, 0 "
            f"FROM ({rows_sql}) AS planned WHERE true ON CONFLICT DO NOTHING "
            "RETURNING subscriber_id, digest_date"
        )
        .bindparams(
            bindparam("status", type_=table.c.status.type),
            bindparam("now", type_=table.c.claimed_at.type),
            bindparam("lease", type_=table.c.lease_until.type),
        )
        .columns(table.c.subscriber_id, table.c.digest_date)
    )
    rows = json.dumps([
        {"subscriber_id": sid, "digest_date": day.isoformat(), "period": period,
         "message_id": message_ids[(sid, day)]}
        for sid, day, period in due
    ])
    inserted = _execute(session, statement, {
        "status": DeliveryStatus.CLAIMED, "now": now, "lease": lease, "rows": rows,
    }).all()
    return {(sid, day) for sid, day in inserted}


@dataclass(frozen=True)
class ComposedRow:
    """What one planned row of a batch becomes once the batch is composed (`claim`)."""

    subscriber_id: int
    status: DeliveryStatus  # CLAIMED (to send later), SENDING (now), SKIPPED or FAILED
    paper_count: int | None = None  # with its papers, for a row to send
    trending_fallback: bool | None = None
    error: str | None = None  # why it FAILED


def claim(
    session: Session,
    day: date,
    subscriber_ids: Sequence[int],
    token: str,
    now: datetime,
    lease_seconds: int,
) -> list[Claim]:
    """Take ownership of a batch's planned rows for this attempt; others' live claims are left
    (committed). `claim_composed` takes them as what each becomes, in the caller's transaction."""
    claims = claim_composed(session, day, token, now, lease_seconds,
                            [ComposedRow(sid, DeliveryStatus.CLAIMED) for sid in subscriber_ids])
    session.commit()
    return claims


def claim_composed(
    session: Session,
    day: date,
    token: str,
    now: datetime,
    lease_seconds: int,
    rows: Sequence[ComposedRow],
) -> list[Claim]:
    """Take a composed batch's planned rows for the attempt `token`, each straight into what
    it becomes (one statement): claimed to send later, SENDING (the first window of a batch
    sent at once), SKIPPED (nothing to send) or FAILED. Returns the rows taken: others' live
    claims are left, and what was composed for them is not sent.

    Taken this late, a batch that dies while composing leaves its rows only planned, for the
    next run or tick; the caller commits the claim with the papers it attaches. A row taken
    over from a dead attempt loses what that attempt attached (it was never sent).
    """
    if not rows:
        return []
    values = json.dumps([
        {"subscriber_id": row.subscriber_id, "status": row.status.value,
         "paper_count": row.paper_count, "trending_fallback": row.trending_fallback,
         "error": row.error}
        for row in rows
    ])
    taken = _execute(session, _statement(session, "claim_composed"), {
        "day": day, "token": token, "rows": values, "now": now,
        "lease": now + timedelta(seconds=lease_seconds),
        **{status.value: status for status in _CLAIMED_AS},
    }).all()
    taken_over = [did for _, did, attempts in taken if attempts > 1]
    if taken_over:
        _execute(
            session, delete(DeliveryItem).where(db.among(session, DeliveryItem.delivery_id,
                                                         taken_over))
        )
    return sorted((Claim(sid, did) for sid, did, _ in taken), key=lambda c: c.subscriber_id)


# What `claim_composed` may make of a planned row, each a typed parameter of its statement.
_CLAIMED_AS = (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING, DeliveryStatus.SKIPPED,
               DeliveryStatus.FAILED)


def _claim_composed_statement(dialect: str) -> Any:
    """`claim_composed`'s one UPDATE: its rows (JSON) joined to theirs by subscriber."""
    table = Delivery.__table__.c
    rows = _json_rows(dialect, (("subscriber_id", "integer"), ("status", "text"),
                                ("paper_count", "integer"), ("trending_fallback", "boolean"),
                                ("error", "text")))
    status = " ".join(f"WHEN '{s.value}' THEN :{s.value}" for s in _CLAIMED_AS)
    return text(
        f"UPDATE deliveries SET status = CASE w.status {status} END, "
        "claim_token = :token, lease_until = :lease, attempts = deliveries.attempts + 1, "
        "claimed_at = :now, error = coalesce(w.error, deliveries.error), "
        "paper_count = coalesce(w.paper_count, deliveries.paper_count), "
        "trending_fallback = coalesce(w.trending_fallback, deliveries.trending_fallback) "
        f"FROM ({rows}) AS w "
        "WHERE deliveries.subscriber_id = w.subscriber_id AND deliveries.digest_date = :day "
        "AND deliveries.status = :claimed "
        "AND (deliveries.claim_token IS NULL OR deliveries.lease_until < :now) "
        "RETURNING deliveries.subscriber_id, deliveries.id, deliveries.attempts"
    ).bindparams(
        bindparam("day", type_=table.digest_date.type),
        bindparam("token", type_=table.claim_token.type),
        bindparam("now", type_=table.claimed_at.type),
        bindparam("lease", type_=table.lease_until.type),
        *(bindparam(s.value, type_=table.status.type) for s in _CLAIMED_AS),
    )


def attach_items(session: Session, items: Sequence[dict[str, object]]) -> None:
    """Record the papers each claimed delivery carries (unique per subscriber and paper)."""
    if not items:
        return
    if session.get_bind().dialect.name == "postgresql":
        _attach_items_postgresql(session, items)
        return
    # SQLite: the rows as tuples, straight to its C driver's executemany. Through a compiled
    # INSERT, SQLAlchemy would process each row's parameters in Python, as much work as the
    # storing. The columns are plain integers, a float and text.
    session.connection().exec_driver_sql(_INSERT_ITEMS_SQLITE, list(map(_item_row, items)))


_ITEM_COLUMNS = ("delivery_id", "subscriber_id", "paper_id", "rank", "score", "why")
_item_row = itemgetter(*_ITEM_COLUMNS)  # a dict's values in column order, at C speed
_INSERT_ITEMS_SQLITE = (
    f"INSERT INTO {DeliveryItem.__tablename__} ({', '.join(_ITEM_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_ITEM_COLUMNS))}) "
    "ON CONFLICT (subscriber_id, paper_id) DO NOTHING"
)


def _attach_items_postgresql(session: Session, items: Sequence[dict[str, object]]) -> None:
    """The batch's thousand rows as one JSON parameter of one INSERT ... SELECT.

    A thousand-row VALUES list has six thousand parameters, and psycopg parses that long
    statement again for every batch; six array parameters cost psycopg's list dumping instead.
    One JSON text is dumped by the C json module and read by PostgreSQL's. The column types
    come from the model.
    """
    table = DeliveryItem.__table__
    dialect = session.get_bind().dialect
    columns = ", ".join(_ITEM_COLUMNS)
    types = ", ".join(f"{name} {table.c[name].type.compile(dialect)}" for name in _ITEM_COLUMNS)
    statement = text(
        f"INSERT INTO {DeliveryItem.__tablename__} ({columns}) "
        f"SELECT {columns} FROM json_to_recordset(CAST(:items AS json)) AS item({types}) "
        "ON CONFLICT (subscriber_id, paper_id) DO NOTHING"
    )
    _execute(session, statement, {"items": json.dumps(list(items))})  # other keys: ignored


def start_sending(
    session: Session, day: date, token: str, subscriber_ids: Sequence[int], now: datetime,
    lease_seconds: int, contents: Mapping[int, tuple[int, bool]] | None = None,
    sent: Sequence[int] = (),
) -> set[int]:
    """Mark a window SENDING (committed before anything goes out); returns the rows still ours.

    In the same statement: each row's paper count and trending flag (`contents`, by
    subscriber), and the previous window's accepted rows (`sent`) closed as SENT, as `finish`
    would. A batch's windows then cost one statement each, where a statement per window to
    mark it, one to close it and one per distinct content value cost more in SQLAlchemy and
    the driver than SQLite spends on the rows.
    """
    window = [
        {"subscriber_id": sid, "sending": True,
         "paper_count": contents[sid][0] if contents else None,
         "trending_fallback": contents[sid][1] if contents else None}
        for sid in subscriber_ids
    ]
    window += [{"subscriber_id": sid, "sending": False, "paper_count": None,
                "trending_fallback": None} for sid in sent]
    rows = _execute(session, _statement(session, "start_sending"), {
        "day": day, "token": token, "rows": json.dumps(window), "now": now,
        "lease": now + timedelta(seconds=lease_seconds), "claimed": DeliveryStatus.CLAIMED,
        "sending": DeliveryStatus.SENDING, "sent": DeliveryStatus.SENT,
    }).scalars()
    owned = set(rows).difference(sent)
    session.commit()
    return owned


def _start_sending_statement(dialect: str) -> Any:
    """`start_sending`'s one UPDATE: its rows (JSON) joined to theirs by subscriber, each
    either marked SENDING with its contents (if still only claimed) or closed as SENT."""
    table = Delivery.__table__.c
    rows = _json_rows(dialect, (("subscriber_id", "integer"), ("sending", "boolean"),
                                ("paper_count", "integer"), ("trending_fallback", "boolean")))
    return text(
        "UPDATE deliveries SET "
        "status = CASE WHEN w.sending THEN :sending ELSE :sent END, "
        "lease_until = CASE WHEN w.sending THEN :lease ELSE deliveries.lease_until END, "
        "sent_at = CASE WHEN w.sending THEN deliveries.sent_at ELSE :now END, "
        "error = CASE WHEN w.sending THEN deliveries.error END, "
        "paper_count = coalesce(w.paper_count, deliveries.paper_count), "
        "trending_fallback = coalesce(w.trending_fallback, deliveries.trending_fallback) "
        f"FROM ({rows}) AS w "
        "WHERE deliveries.subscriber_id = w.subscriber_id AND deliveries.digest_date = :day "
        "AND deliveries.claim_token = :token "
        "AND (NOT w.sending OR deliveries.status = :claimed) "
        "RETURNING deliveries.subscriber_id"
    ).bindparams(
        bindparam("day", type_=table.digest_date.type),
        bindparam("token", type_=table.claim_token.type),
        bindparam("now", type_=table.sent_at.type),
        bindparam("lease", type_=table.lease_until.type),
        *(bindparam(name, type_=table.status.type) for name in ("claimed", "sending", "sent")),
    )


def finish(
    session: Session,
    day: date,
    token: str,
    status: DeliveryStatus,
    subscriber_ids: Iterable[int],
    now: datetime,
    error: str | None = None,
    retry_after_seconds: int = 0,
) -> None:
    """Close rows of this attempt with a final (or retrying) status."""
    ids = list(subscriber_ids)
    if not ids:
        return
    values: dict[str, object] = {
        "day": day, "token": token, "ids": ids, "status": status, "error": error,
    }
    if status is DeliveryStatus.SENT:
        kind, values["now"] = "finish_sent", now
    elif status is DeliveryStatus.RETRYING:
        kind, values["lease"] = "finish_retrying", now + timedelta(seconds=retry_after_seconds)
    else:
        kind = "finish"
    _execute(session, _statement(session, kind), values)
    # Papers of a digest that did not go out may be sent another day. (A skipped row has
    # none: it is skipped before papers are attached, and `claim` cleared a dead attempt's.)
    if status in (DeliveryStatus.FAILED, DeliveryStatus.RETRYING):
        _execute(
            session,
            delete(DeliveryItem).where(
                db.among(session, DeliveryItem.subscriber_id, ids),
                DeliveryItem.delivery_id.in_(
                    select(Delivery.id).where(
                        Delivery.digest_date == day,
                        db.among(session, Delivery.subscriber_id, ids),
                    )
                ),
            )
        )


def day_counts(session: Session, day: date, now: datetime | None = None) -> Counter[str]:
    """How many deliveries of `day` are in each state (claimed rows past their lease: 'stale')."""
    now = now or datetime.now(timezone.utc)
    counts: Counter[str] = Counter()
    for status, count in session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_date == day)
        .group_by(Delivery.status)
    ):
        if status is not DeliveryStatus.CLAIMED:
            counts[status.value] += count
    expired = Delivery.lease_until < now
    stale, claimed, planned = session.execute(
        select(
            func.count().filter(expired),
            func.count().filter(~expired, Delivery.claim_token.is_not(None)),
            func.count().filter(~expired, Delivery.claim_token.is_(None)),
        ).where(Delivery.digest_date == day, Delivery.status == DeliveryStatus.CLAIMED)
    ).one()
    counts.update({"stale": stale, "claimed": claimed, "planned": planned})
    return +counts


def _json_rows(dialect: str, columns: Sequence[tuple[str, str]]) -> str:
    """A SELECT of the rows in the JSON parameter `:rows` (a list of objects), one column per
    (name, PostgreSQL type): `json_to_recordset` on PostgreSQL, `json_each` on SQLite. A batch's
    rows travel as one JSON text, which the C json module writes and the database reads."""
    if dialect == "postgresql":
        fields = ", ".join(f"{name} {type_}" for name, type_ in columns)
        return f"SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS row({fields})"
    picks = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name, _ in columns)
    return f"SELECT {picks} FROM json_each(:rows)"


def _statement(session: Session, name: str) -> Any:
    """A batch statement of the ledger, built once per backend with its values as parameters.

    Run a few times per batch, a statement built afresh costs SQLAlchemy more to build and
    key for its cache than SQLite takes to run it.
    """
    return _statements(session.get_bind().dialect.name)[name]


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    table = Delivery.__table__.c

    def param(name: str, column: Any) -> Any:
        return bindparam(name, type_=column.type)

    ids = db.among_bound(dialect, Delivery.subscriber_id, "ids")
    owned = and_(Delivery.digest_date == param("day", table.digest_date),
                 Delivery.claim_token == param("token", table.claim_token), ids)
    status, error = param("status", table.status), param("error", table.error)
    now, lease = param("now", table.claimed_at), param("lease", table.lease_until)
    return {
        "claim_composed": _claim_composed_statement(dialect),
        "start_sending": _start_sending_statement(dialect),
        "finish": update(Delivery).where(owned).values(status=status, error=error),
        "finish_sent": update(Delivery).where(owned)
        .values(status=status, error=error, sent_at=now),
        "finish_retrying": update(Delivery).where(owned)
        .values(status=status, error=error, lease_until=lease, claim_token=None),
    }


def _execute(session: Session, statement: Any, parameters: Any = None) -> Any:
    """Run a ledger statement on the session's connection, inside its transaction.

    The statements name their rows by key and return what the caller needs. Through the
    ORM's session execution (keeping loaded objects in step with a bulk UPDATE, the bulk
    INSERT machinery over a thousand dicts) they cost more than the database's own work.
    """
    return session.connection().execute(statement, parameters)


def _pairs(pairs: Sequence[tuple[int, date]]) -> ColumnElement[bool]:
    by_day: dict[date, list[int]] = {}
    for sid, day in pairs:
        by_day.setdefault(day, []).append(sid)
    return or_(
        *(
            and_(Delivery.digest_date == day, Delivery.subscriber_id.in_(sids))
            for day, sids in by_day.items()
        )
    )
