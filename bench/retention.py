"""How the database grows, and what a day costs, with and without retention (`digest prune`).

    python -m bench.retention [--subscribers 10000] [--days 1,30,365] [--backends sqlite,postgresql]

For each backend it writes a history of simulated days by bulk insert, at the volumes of a
list of N subscribers (per subscriber and day: a digest of 10 papers and a provider's
"delivered" event, for three in ten an "open" too; per day: 1,000 new papers, clicks on one
digest in ten, votes on one in a hundred, a history event per 300 subscribers, a sign-up
request per 500), and at each checkpoint runs one real day on top of it
(`pipeline.run_day`, file backend, every subscriber) and prints the database's size before
that day (PostgreSQL: pg_database_size; SQLite: the file, its WAL checkpointed) and the day's
time.

Without pruning: one history, measured at each checkpoint. With pruning (the default
RETENTION_* settings): until a table's rows outlive its retention nothing differs, so a
checkpoint within the shortest retention is the same database. Past it, the pruned history
is written afresh: rows a daily prune would have deleted more than a week before the
checkpoint are not written (they would only be written and deleted again), and each of the
last seven simulated days is followed by a real `prune`, as beat runs it, so the week's
deletes, and the free space they leave for later inserts, are real.

Everything runs on 127.0.0.1 (a scratch PostgreSQL database, dropped at the end) and under a
temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text

from digest import db, retention
from digest.clock import CLOCK
from digest.ingest import title_key
from digest.pipeline import run_day
from digest.settings import Settings
from digest.tools.synthetic import TOPIC_PHRASES, populate, sample_texts, temporary_postgres

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PRUNED_WEEK = 7  # simulated days at the end of a pruned history that are pruned for real

COLUMNS = {
    "papers": ("id", "source", "source_id", "title_key", "title", "abstract", "authors", "url",
               "pdf_url", "published_at", "upvotes", "comments", "stars", "first_seen_at",
               "updated_at"),
    "deliveries": ("id", "subscriber_id", "digest_date", "period", "status", "message_id",
                   "paper_count", "trending_fallback", "claimed_at", "sent_at", "attempts"),
    "delivery_items": ("id", "delivery_id", "subscriber_id", "paper_id", "rank", "score", "why"),
    "webhook_events": ("id", "provider", "event_id", "kind", "address", "received_at"),
    "subscriber_events": ("id", "subscriber_id", "kind", "detail", "source", "created_at"),
    "paper_feedback": ("id", "subscriber_id", "paper_id", "kind", "created_at"),
    "signup_requests": ("id", "link_key", "email", "address", "topics", "time_zone",
                        "send_hour", "papers_per_digest", "outcome", "source", "created_at"),
}


@dataclass(frozen=True)
class Volumes:
    """What one simulated day writes."""

    subscribers: int
    papers_per_day: int = 1000
    papers_per_digest: int = 10
    opens_share: float = 0.3

    @property
    def clicks(self) -> int:
        return self.subscribers // 10

    @property
    def votes(self) -> int:
        return self.subscribers // 100

    @property
    def events(self) -> int:
        return max(1, self.subscribers // 300)

    @property
    def signups(self) -> int:
        return max(1, self.subscribers // 500)


# --- writing rows straight to the database -------------------------------------------------


class Writer:
    """Bulk inserts of plain tuples, ids given by us; one transaction per simulated day."""

    backend = ""

    def __init__(self) -> None:
        self.next_id: dict[str, int] = {}

    def ids(self, table: str, count: int) -> range:
        start = self.next_id[table]
        self.next_id[table] = start + count
        return range(start, start + count)

    def refresh_ids(self) -> None:
        for table in COLUMNS:
            self.next_id[table] = int(self.scalar(f"SELECT coalesce(max(id), 0) FROM {table}")) + 1

    def stamp(self, moment: datetime) -> Any:
        return moment

    def authors(self, names: list[str]) -> Any:
        return json.dumps(names)

    def write(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def scalar(self, sql: str) -> Any:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteWriter(Writer):
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.conn = sqlite3.connect(path)
        self.conn.execute("PRAGMA synchronous=OFF")  # a rebuildable bench history
        self.conn.execute("PRAGMA cache_size=-500000")
        self.refresh_ids()

    def stamp(self, moment: datetime) -> Any:
        # SQLAlchemy's SQLite storage format for the models' UTC datetimes.
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")

    def write(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        columns = COLUMNS[table]
        self.conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            rows,
        )

    def scalar(self, sql: str) -> Any:
        return self.conn.execute(sql).fetchone()[0]

    def commit(self) -> None:
        self.conn.commit()

    def size(self) -> int:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def close(self) -> None:
        self.conn.close()


class PostgresWriter(Writer):
    backend = "postgresql"

    def __init__(self, url: str) -> None:
        import psycopg

        super().__init__()
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        # The history is consistent by construction: skip the foreign-key triggers while
        # loading it (SQLite's loader has foreign keys off too). The service checks them.
        self.conn.execute("SET session_replication_role = replica")
        self.refresh_ids()

    def write(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cursor, cursor.copy(
            f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def scalar(self, sql: str) -> Any:
        return self.conn.execute(sql).fetchone()[0]  # type: ignore[index]

    def commit(self) -> None:
        for table in COLUMNS:  # the service's own inserts take ids after ours
            self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"greatest({self.next_id[table] - 1}, 1))"
            )
        self.conn.commit()

    def size(self) -> int:
        return int(self.scalar("SELECT pg_database_size(current_database())"))

    def analyze(self) -> None:
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("ANALYZE")  # autovacuum's job in a running service
        self.conn.autocommit = False

    def close(self) -> None:
        self.conn.close()


# --- one simulated day ---------------------------------------------------------------------


@dataclass
class Simulation:
    """A history of days dated from `day0` on; `write_day(n)` writes day n's rows."""

    writer: Writer
    volumes: Volumes
    day0: date
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    # First simulated day whose rows of a table are written (pruned histories skip the rest).
    first_day: dict[str, int] = field(default_factory=dict)
    papers_of: dict[int, range] = field(default_factory=dict)
    texts: list[tuple[str, str]] = field(default_factory=sample_texts)

    def date_of(self, n: int) -> date:
        return self.day0 + timedelta(days=n)

    def start_of(self, n: int) -> datetime:
        return datetime.combine(self.date_of(n), datetime.min.time(), tzinfo=timezone.utc)

    def wanted(self, table: str, n: int) -> bool:
        return n >= self.first_day.get(table, 0)

    def write_day(self, n: int) -> None:
        """Day n: its papers, then what the day's digests left behind."""
        self.write_papers(n)
        self.write_digests(n)
        self.write_activity(n)
        self.writer.commit()

    def write_papers(self, n: int) -> None:
        w, rng, start = self.writer, self.rng, self.start_of(n)
        ids = w.ids("papers", self.volumes.papers_per_day)
        self.papers_of[n] = ids
        sentences = [s.strip() + "." for _, a in self.texts for s in a.split(". ") if len(s) > 40]
        rows = []
        for pid in ids:
            head = rng.choice(self.texts)[0].split(":")[0]
            title = f"{head}: {' '.join(rng.choice(self.texts)[0].split()[-6:])} ({pid})"
            seen = start + timedelta(seconds=rng.uniform(0, 86_000))
            upvotes = int(rng.paretovariate(1.2)) - 1 if rng.random() < 0.6 else None
            rows.append((
                pid, "daily-papers" if upvotes is not None else "arxiv", f"sim.{pid:07d}",
                title_key(title), title, " ".join(rng.sample(sentences, 5)),
                w.authors([f"Author {rng.randrange(5000)}" for _ in range(rng.randint(1, 8))]),
                f"https://arxiv.org/abs/sim.{pid:07d}", f"https://arxiv.org/pdf/sim.{pid:07d}",
                w.stamp(seen - timedelta(hours=rng.uniform(0, 48))), upvotes,
                rng.randint(0, 6) if upvotes is not None else None, None, w.stamp(seen),
                w.stamp(seen),
            ))
        w.write("papers", rows)

    def write_digests(self, n: int) -> None:
        """A digest of `papers_per_digest` of the day's papers for every subscriber."""
        if not self.wanted("deliveries", n):
            return
        w, rng, v = self.writer, self.rng, self.volumes
        papers, day = self.papers_of[n], self.date_of(n)
        sent = w.stamp(self.start_of(n) + timedelta(hours=7))
        delivery_ids = w.ids("deliveries", v.subscribers)
        w.write("deliveries", [
            (did, sid, day, str(day), "sent",
             f"<digest.{day}.{sid}.{did:016x}@bench.example.org>",
             v.papers_per_digest, False, sent, sent, 1)
            for sid, did in enumerate(delivery_ids, start=1)
        ])
        if not self.wanted("delivery_items", n):
            return
        item_ids = iter(w.ids("delivery_items", v.subscribers * v.papers_per_digest))
        whys = [f"matches: {a}, {b} · trending: {u} upvotes"
                for a, b, u in zip(TOPIC_PHRASES, reversed(TOPIC_PHRASES), range(3, 300, 5),
                                   strict=False)]
        count = len(papers)
        strides = [k for k in range(3, count) if math.gcd(k, count) == 1][:50]
        picks = range(v.papers_per_digest)
        # Distinct papers per digest from a random start and a stride prime to the day's count.
        w.write("delivery_items", [
            (next(item_ids), did, sid, papers[(start + k * stride) % count], k + 1,
             1.0 / (k + 1), whys[(sid + k) % len(whys)])
            for sid, did in enumerate(delivery_ids, start=1)
            for start, stride in [(rng.randrange(count), rng.choice(strides))]
            for k in picks
        ])

    def write_activity(self, n: int) -> None:
        """Providers' events, clicks and votes, history and sign-ups of the day."""
        w, rng, v, start = self.writer, self.rng, self.volumes, self.start_of(n)
        if self.wanted("webhook_events", n):
            events = [(sid, "delivered") for sid in range(1, v.subscribers + 1)]
            events += [(sid, "open") for sid in rng.sample(range(1, v.subscribers + 1),
                                                          int(v.subscribers * v.opens_share))]
            events += [(0, "request")] * (len(events) // 100)  # a request's nonce per 100
            ids = w.ids("webhook_events", len(events))
            w.write("webhook_events", [
                (eid, "sendgrid", hashlib.sha1(f"{n}.{eid}".encode()).hexdigest(),
                 "request" if kind == "request" else "other",
                 None if kind == "request" else f"reader{sid - 1:07d}@bench.example.org",
                 w.stamp(start + timedelta(hours=8, seconds=i)))
                for i, (eid, (sid, kind)) in enumerate(zip(ids, events, strict=True))
            ])
        if self.wanted("paper_feedback", n):
            readers = rng.sample(range(1, v.subscribers + 1), v.clicks + v.votes)
            rows = self._feedback(n, readers[: v.clicks], "click")
            rows += self._feedback(n, readers[v.clicks :], rng.choice(["more", "less"]))
            w.write("paper_feedback", rows)
        if self.wanted("subscriber_events", n):
            ids = w.ids("subscriber_events", v.events)
            w.write("subscriber_events", [
                (eid, rng.randint(1, v.subscribers),
                 rng.choice(["preferences_changed", "paused", "resumed"]), "", "web",
                 w.stamp(start + timedelta(hours=12, seconds=eid % 3600)))
                for eid in ids
            ])
        if self.wanted("signup_requests", n):
            ids = w.ids("signup_requests", v.signups)
            w.write("signup_requests", [
                (rid, hashlib.sha1(str(rid).encode()).hexdigest()[:22], f"new{rid}@example.org",
                 f"new{rid}@example.org", "LoRA, RLHF", "UTC", 7, 10, "confirmation", "web",
                 w.stamp(start + timedelta(hours=15, seconds=rid % 3600)))
                for rid in ids
            ])

    def _feedback(self, n: int, readers: Sequence[int], kind: str) -> list[tuple[Any, ...]]:
        # One of the papers the reader's digest of day n carried (as the feedback page
        # requires); sampled again, not read back: any of the day's papers stands in.
        ids = self.writer.ids("paper_feedback", len(readers))
        at = self.writer.stamp(self.start_of(n) + timedelta(hours=9))
        papers = self.papers_of[n]
        return [(fid, sid, papers[self.rng.randrange(len(papers))], kind, at)
                for fid, sid in zip(ids, readers, strict=True)]


# --- the measurements ----------------------------------------------------------------------


@dataclass
class Measure:
    backend: str
    days: int
    pruned: bool
    size: int
    day_seconds: float
    cpu_seconds: float  # of this process and its run processes: steadier on a busy machine
    stages: dict[str, float] = field(default_factory=dict)  # the day's process-seconds
    note: str = ""

    def where(self) -> str:
        """The day's biggest stages, e.g. "load 120 s, score 40 s, render 12 s"."""
        top = sorted(self.stages.items(), key=lambda item: -item[1])[:4]
        return ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in top)


def the_real_day(
    settings: Settings, sim: Simulation, n: int
) -> tuple[float, float, dict[str, float]]:
    """Run day n for every subscriber as `digest run` would, on top of the history; its
    seconds, its CPU seconds here (PostgreSQL's own are not counted), and the process-seconds
    of each stage (`clock.CLOCK`)."""
    sim.write_papers(n)  # the day's new papers, which it ranks
    sim.writer.commit()
    if isinstance(sim.writer, PostgresWriter):
        sim.writer.analyze()
    CLOCK.reset()
    start, cpu = time.perf_counter(), cpu_seconds()
    run_day(settings, sim.date_of(n))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    shutil.rmtree(settings.outbox_dir, ignore_errors=True)
    sim.writer.refresh_ids()
    return seconds, cpu, dict(CLOCK.seconds)


def cpu_seconds() -> float:
    """User and system time of this process and of its children that have ended."""
    own, children = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_unpruned(
    settings: Settings, sim: Simulation, checkpoints: Sequence[int], say: Callable[[str], None]
) -> Iterator[Measure]:
    """One history, day after day; at each checkpoint its size, then a real day."""
    real_days = {n + 1 for n in checkpoints}
    for n in range(1, max(checkpoints) + 1):
        if n in real_days:
            continue
        sim.write_day(n)
        if n in checkpoints:
            size = sim.writer.size()
            seconds, cpu, stages = the_real_day(settings, sim, n + 1)
            measure = Measure(sim.writer.backend, n, False, size, seconds, cpu, stages)
            say(f"  {sim.writer.backend} day {n}: {size / 1e6:,.0f} MB, the day {seconds:.1f} s, "
                f"CPU {cpu:.1f} s ({measure.where()})")
            yield measure


def measure_pruned(
    settings: Settings, sim: Simulation, n: int, say: Callable[[str], None]
) -> Measure:
    """The history a daily prune leaves after n days: rows that would have gone more than a
    week before day n are not written, and the last week is pruned for real, day by day."""
    for table, days in retention_days(settings).items():
        if days:
            sim.first_day[table] = n - days - PRUNED_WEEK
    prune_seconds: list[float] = []
    deleted = 0
    for day in range(1, n + 1):
        sim.write_day(day)
        if day > n - PRUNED_WEEK:
            start = time.perf_counter()
            deleted += sum(retention.prune(settings, now=sim.start_of(day + 1)).deleted.values())
            prune_seconds.append(time.perf_counter() - start)
    size = sim.writer.size()
    seconds, cpu, stages = the_real_day(settings, sim, n + 1)
    per_day = sum(prune_seconds) / len(prune_seconds)
    measure = Measure(sim.writer.backend, n, True, size, seconds, cpu, stages,
                      f"daily prune: {per_day:.1f} s, {deleted // PRUNED_WEEK:,} rows a day")
    say(f"  {sim.writer.backend} day {n}, pruned daily: {size / 1e6:,.0f} MB, the day "
        f"{seconds:.1f} s, CPU {cpu:.1f} s ({measure.where()}); {measure.note}")
    return measure


def retention_days(settings: Settings) -> dict[str, int]:
    """Days each simulated table keeps under `settings` (0: forever)."""
    return {
        "delivery_items": settings.retention_delivery_items_days,
        "deliveries": settings.retention_deliveries_days,
        "paper_feedback": settings.retention_feedback_days,
        "subscriber_events": settings.retention_subscriber_events_days,
        "signup_requests": settings.retention_signup_requests_days,
        "webhook_events": settings.retention_webhook_events_days,
    }


# --- databases -------------------------------------------------------------------------------


@contextmanager
def database(backend: str, workdir: Path, name: str, volumes: Volumes,
             day0: date) -> Iterator[tuple[Settings, Writer]]:
    """A migrated database with the subscribers, and a writer for the history."""
    base = Settings(
        data_dir=workdir / name, mail_backend="file", outbox_dir=workdir / name / "outbox",
        secret_key="bench", public_base_url="https://digest.bench.example.org",
        mail_from="Paper Digest <digest@bench.example.org>",
    ).resolved()
    with _database_url(backend, workdir, name) as url:
        settings = replace(base, database_url=url)
        db.upgrade(settings)
        populate(settings, volumes.subscribers, 0)
        with db.engine_for(url).begin() as conn:  # the profiles predate the history
            since = datetime.combine(day0, datetime.min.time(), tzinfo=timezone.utc)
            conn.execute(text("UPDATE topic_profiles SET updated_at = :t"), {"t": since})
        writer: Writer = (SQLiteWriter(Path(url.split("///", 1)[1])) if backend == "sqlite"
                          else PostgresWriter(url))
        try:
            yield settings, writer
        finally:
            writer.close()
            db.engine_for(url).dispose()


@contextmanager
def _database_url(backend: str, workdir: Path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / name / 'digest.sqlite3'}"
        return
    with temporary_postgres(POSTGRES_ADMIN_URL) as url:
        yield url


def run(backends: Sequence[str], volumes: Volumes, checkpoints: Sequence[int],
        say: Callable[[str], None] = print) -> list[Measure]:
    """Every measure, each backend in turn, in databases made for the run and removed after."""
    day0 = datetime.now(timezone.utc).date() - timedelta(days=max(checkpoints) + 2)
    measures: list[Measure] = []
    workdir = Path(tempfile.mkdtemp(prefix="digest-bench-retention-"))
    try:
        for backend in backends:
            say(f"{backend}: {volumes.subscribers:,} subscribers, days {list(checkpoints)}")
            with database(backend, workdir, f"{backend}-kept", volumes, day0) as (settings, w):
                measures += measure_unpruned(settings, Simulation(w, volumes, day0),
                                             checkpoints, say)
            shortest = min(d for d in retention_days(settings).values() if d)
            for n in checkpoints:
                if n <= shortest:
                    continue  # nothing has outlived its retention: the same database
                with database(backend, workdir, f"{backend}-pruned-{n}", volumes,
                              day0) as (settings, w):
                    measures.append(measure_pruned(settings, Simulation(w, volumes, day0), n,
                                                   say))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return measures


def table(measures: Sequence[Measure], checkpoints: Sequence[int]) -> str:
    """A Markdown table: per backend and checkpoint, size and the day without and with pruning,
    each against day 1 of the same backend (the day's ratio in CPU seconds)."""
    lines = [
        "| database | days | size, no pruning | the day, no pruning "
        "| size, pruned daily | the day, pruned daily |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backend in dict.fromkeys(m.backend for m in measures):
        kept = {m.days: m for m in measures if m.backend == backend and not m.pruned}
        pruned = {m.days: m for m in measures if m.backend == backend and m.pruned}
        first = kept[min(kept)]
        for n in checkpoints:
            k, p = kept[n], pruned.get(n, kept[n])
            lines.append(
                f"| {backend} | {n} | {_mb(k.size, first.size)} | {_s(k, first)} "
                f"| {_mb(p.size, first.size)} | {_s(p, first)} |"
            )
    notes = [
        f"{m.backend}, {m.days} days{', pruned' if m.pruned else ''}: the day's process-seconds "
        f"{m.where()}{'; ' + m.note if m.note else ''}"
        for m in measures
    ]
    return "\n".join([*lines, "", *notes])


def _mb(size: int, first: int) -> str:
    return f"{size / 1e6:,.0f} MB (x{size / first:.1f})"


def _s(measure: Measure, first: Measure) -> str:
    return (f"{measure.day_seconds:.0f} s, CPU {measure.cpu_seconds:.0f} s "
            f"(x{measure.cpu_seconds / first.cpu_seconds:.1f})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", "-n", type=int, default=10_000)
    parser.add_argument("--papers-per-day", type=int, default=1000)
    parser.add_argument("--days", default="1,30,365",
                        help="checkpoints, comma-separated (default 1,30,365)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    checkpoints = sorted({int(d) for d in args.days.split(",")})
    volumes = Volumes(args.subscribers, papers_per_day=args.papers_per_day)
    start = time.perf_counter()
    measures = run(args.backends.split(","), volumes, checkpoints,
                   say=lambda line: print(line, flush=True))
    print()
    print(table(measures, checkpoints))
    print(f"\n{volumes.subscribers:,} subscribers, {volumes.papers_per_day:,} papers a day; "
          f"the whole run took {time.perf_counter() - start:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
