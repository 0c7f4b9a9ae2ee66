"""`digest bench`: a whole synthetic day, measured stage by stage against the best case.

It generates N subscribers with realistic topic profiles and M papers made from real
abstracts, runs the day in this process (to an SMTP sink or the file outbox) and, with
`--workers K`, on K Celery worker processes over Redis and PostgreSQL. Next to each stage it
measures, in the same run, what the underlying library does at best (a raw sparse product,
a raw `mjml2html`, a trivial SMTP client feeding the same sink), and prints the ratio.
Not part of `make test` (a small smoke run of it is).
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import resource
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text

from .. import db
from ..prepare import forget_prepared_days
from ..settings import Settings
from .best_cases import Timing, stage_timings
from .cpu import CpuAccount, cpu_note
from .synthetic import populate, temporary_postgres, temporary_redis_database

# --- an SMTP sink in its own process -----------------------------------------------------


def _sink_main(port: int, counter: Any, ready: Any) -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    class Count:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                              responses: list[str]) -> list[str]:
            session.host_name = hostname
            responses.insert(-1, "250-PIPELINING")  # as providers' relays do (RFC 2920)
            return responses

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with counter.get_lock():
                counter.value += 1
            return "250 OK"

    controller = Controller(Count(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    signal.sigwait({signal.SIGTERM})
    controller.stop()
    asyncio.set_event_loop(None)


@dataclass
class Sink:
    """An aiosmtpd server that accepts and counts, in a separate process (its own core). It
    offers PIPELINING, as the relays of mail providers do."""

    port: int = 0
    counter: Any = None
    process: multiprocessing.process.BaseProcess | None = None

    def __enter__(self) -> Sink:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        self.counter = ctx.Value("l", 0)
        ready = ctx.Event()
        process = ctx.Process(target=_sink_main, args=(self.port, self.counter, ready),
                              daemon=True)
        process.start()
        self.process = process
        ready.wait(20)
        return self

    @property
    def received(self) -> int:
        return int(self.counter.value)

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.is_alive() and self.process.pid:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.join(10)


def trivial_client_rate(port: int, message: bytes, count: int, connections: int,
                        pipelined: bool = False) -> float:
    """Messages/second the sink takes from plain smtplib clients sending prebuilt bytes;
    `pipelined`: MAIL, RCPT and DATA in one write (RFC 2920), as our sender does."""
    envelope = b"MAIL FROM:<digest@bench.example.org>\r\nRCPT TO:<reader@bench.example.org>\r\n"
    body = message.replace(b"\n.", b"\n..") + b".\r\n"

    def feed(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            for _ in range(n):
                if not pipelined:
                    client.sendmail("digest@bench.example.org", ["reader@bench.example.org"],
                                    message)
                    continue
                client.send(envelope + b"DATA\r\n")
                replies = [client.getreply()[0] for _ in range(3)]
                client.send(body)
                if replies != [250, 250, 354] or client.getreply()[0] != 250:
                    raise RuntimeError(f"the sink refused a pipelined message: {replies}")

    ctx = multiprocessing.get_context("fork")
    per = max(1, count // connections)
    procs = [ctx.Process(target=feed, args=(per,)) for _ in range(connections)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("a trivial client failed to feed the sink (its error is above)")
    return per * connections / seconds


T = TypeVar("T")

# The workers' day watcher (`wait_for_day`): seconds between progress lines, and when it asks
# the ledger whether the day is done (the sink still that long, or that long since it asked).
PROGRESS_EVERY = 10.0
LEDGER_STALL = 0.5
LEDGER_EVERY = 60.0

# --- best cases, measured in the same run ------------------------------------------------


@dataclass
class Figures:
    """One benchmark run's numbers, printed as a table."""

    subscribers: int
    papers: int
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    whole_day: float | None = None  # seconds of the in-process day, for the spread of runs
    workers_ratio: float | None = None  # the workers' time over the sink's alone
    emails: int = 0  # emails the in-process day sent
    best_day_ratio: float | None = None  # the in-process day over its same-run best case

    def add(self, stage: str, seconds: float, rate: str, best: str = "", ratio: str = "") -> None:
        self.rows.append((stage, f"{seconds:9.3f} s", rate, best, ratio))

    def table(self) -> str:
        head = ("stage", "time", "rate", "best case (same run)", "ratio")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        line = "  ".join("{:<" + str(w) + "}" for w in widths)
        out = [line.format(*head), line.format(*("-" * w for w in widths))]
        out += [line.format(*r) for r in self.rows]
        return "\n".join(out + self.notes)


def best_score_seconds(index: Any, profiles: Sequence[Any], chunk: int = 1000) -> float:
    """A raw sparse TF-IDF product in chunks of subscribers, keeping the top 10: the floor."""
    import numpy as np
    from sklearn.preprocessing import normalize

    start = time.perf_counter()
    matrix_t = index.matrix.T.tocsr()  # CSR: a product with a CSC operand converts it first
    for begin in range(0, len(profiles), chunk):
        queries = normalize(index.vectorizer.transform(
            [p.topics for p in profiles[begin : begin + chunk]]))
        scores = (queries @ matrix_t).toarray()
        np.argpartition(-scores, min(10, scores.shape[1] - 1), axis=1)[:, :10]
    return time.perf_counter() - start


def our_score_seconds(index: Any, profiles: Sequence[Any], batch: int) -> float:
    """`DayIndex.select` over the same profiles, in the pipeline's batches."""
    start = time.perf_counter()
    for begin in range(0, len(profiles), batch):
        index.select(profiles[begin : begin + batch])
    return time.perf_counter() - start


def seconds_in_processes(
    jobs: int, measure: Callable[[Any, Sequence[Any]], float], shared: Any,
    items: Sequence[Any],
) -> float:
    """`measure(shared, share)` over shares of `items` (profiles to score, files to make) in
    `jobs` processes at once, as the day ran them: process-seconds summed, comparable with
    the day's per-stage figures."""
    share = -(-len(items) // max(jobs, 1))
    return sum(in_processes([partial(measure, shared, items[k * share : (k + 1) * share])
                             for k in range(max(jobs, 1))]))


def in_processes(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, the tasks run in forked processes at once (in this one if only
    one): what runs beside what, as in the day, is part of what a best case costs."""
    gc.freeze()  # as `digest run` does once the day is prepared
    if len(tasks) <= 1:
        return [task() for task in tasks]
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child(k: int) -> None:
        results.put((k, tasks[k]()))

    children = [context.Process(target=child, args=(k,)) for k in range(len(tasks))]
    for process in children:
        process.start()
    done = dict(results.get(timeout=600) for _ in children)
    for process in children:
        process.join()
    return [done[k] for k in range(len(tasks))]


def all_profiles(settings: Settings) -> list[Any]:
    """Every subscriber's profile as it would be scored on a first day (nothing sent yet)."""
    from sqlalchemy import select

    from ..models import Subscriber, TopicProfile
    from ..score import Profile

    with db.session_scope(settings) as session:
        rows = session.execute(
            select(TopicProfile.subscriber_id, TopicProfile.topics, TopicProfile.exclude,
                   TopicProfile.trending_fallback, Subscriber.papers_per_digest)
            .join(Subscriber, Subscriber.id == TopicProfile.subscriber_id)
            .order_by(TopicProfile.subscriber_id)
        ).all()
    return [Profile(sid, topics, limit, exclude or "", bool(fallback))
            for sid, topics, exclude, fallback, limit in rows]


# --- runs ---------------------------------------------------------------------------------


@contextmanager
def counted_statements(database_url: str) -> Iterator[Any]:
    """Count statements on the engine, in this process and in the run processes it forks
    (the counter lives in shared memory; `.value` reads it)."""
    counter = multiprocessing.get_context("fork").Value("q", 0)
    engine = db.engine_for(database_url)

    def on_execute(*_args: object) -> None:
        with counter.get_lock():
            counter.value += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or the largest of its finished children)."""
    return resource.getrusage(who).ru_maxrss / 1024


def run_in_process(settings: Settings, figures: Figures, progress: Callable[[str], None]) -> int:
    """Run the day in this process (or its forked run processes); returns how many ran it."""
    from ..clock import CLOCK
    from ..pipeline import run_day
    from ..pool import run_jobs

    CLOCK.reset()
    day = datetime.now(timezone.utc).date()
    batches = -(-figures.subscribers // settings.batch_size)
    jobs = run_jobs(settings, batches)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if done[0] % max(1, figures.subscribers // 10) < n:
            progress(f"  in-process: {done[0]:,}/{figures.subscribers:,} subscribers")

    with counted_statements(settings.database_url) as statements:
        start = time.perf_counter()
        report = run_day(settings, day, progress=tick)
        total = time.perf_counter() - start
    sent = len(report.sent)
    where = "in-process" if jobs == 1 else f"in-process, {jobs} processes"
    figures.add(f"whole day {where} ({settings.mail_backend})", total,
                f"{sent / total:,.0f} emails/s")
    figures.whole_day = total
    figures.emails = sent
    units = {"subscriber": report.due, "email": sent, "batch": batches}
    for stage, (counted, unit) in STAGE_RATES.items():
        figures.add(f"  {stage}", CLOCK.seconds[stage],
                    stage_rate(CLOCK.seconds[stage], CLOCK.items[stage], counted, unit, units))
    memory = f"peak memory {peak_rss_mb():,.0f} MB"
    if jobs > 1:
        memory += f" (largest run process {peak_rss_mb(resource.RUSAGE_CHILDREN):,.0f} MB)"
        figures.notes.append(f"stage times are summed over the {jobs} processes "
                             "(process-seconds); prepare ran once, before they forked")
    figures.notes.append(
        f"{where}: {sent:,} sent, {memory}, {statements.value:,} database statements = "
        f"{statements.value / batches:.1f} per batch of {settings.batch_size}"
    )
    return jobs


# What each stage's CLOCK items count, and the unit its rate is given per: the ledger and the
# plan are timed per call, but what they cost that matters is per subscriber.
STAGE_RATES: dict[str, tuple[str, str]] = {
    "plan": ("call", "subscriber"),
    "prepare": ("call", "call"),
    "load": ("subscriber", "subscriber"),
    "score": ("subscriber", "subscriber"),
    "render": ("email", "email"),
    "send": ("email", "email"),
    "ledger": ("call", "subscriber"),
    "index": ("call", "email"),
}


def stage_rate(seconds: float, items: int, counted: str, unit: str,
               units: dict[str, int]) -> str:
    """The stage's time per `unit` (a subscriber, an email, a call), and per call and per
    batch too when the clock counted calls: "0.170 ms per subscriber, 1.1 ms per call (...)"."""
    per = items if counted == unit else units.get(unit, 0)
    rate = f"{seconds / max(per, 1) * 1000:.3f} ms per {unit}"
    if counted == "call" and unit != "call" and items > 1:
        rate += f", {seconds / items * 1000:.3f} ms per call ({items:,} calls)"
        if unit == "subscriber" and units.get("batch"):
            rate += f", {seconds / units['batch'] * 1000:.1f} ms per batch"
    return rate


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env.update(
        DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
        MAIL_BACKEND=settings.mail_backend, SMTP_HOST=settings.smtp_host,
        SMTP_PORT=str(settings.smtp_port), SECRET_KEY=settings.secret_key,
        REDIS_URL=settings.redis_url, CELERY_BROKER_URL=settings.celery_broker_url,
        BATCH_SIZE=str(settings.batch_size), OUTBOX_DIR=str(settings.outbox_dir),
        MAIL_FROM=settings.mail_from, PUBLIC_BASE_URL=settings.public_base_url,
    )
    return env


def process_tree_peak_mb(pid: int) -> float:
    """The largest VmHWM (peak resident memory) among a process and its children."""
    peak = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):  # the worker may have gone: its own figure is enough
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def run_workers(settings: Settings, workers: int, figures: Figures,
                progress: Callable[[str], None], concurrency: int, sink: Sink) -> float:
    """The same day on K Celery workers (each `concurrency` processes) over Redis."""
    procs = start_workers(settings, workers, concurrency)
    cpu = CpuAccount(day_parties(sink))
    try:
        time.sleep(4)  # workers import the library
        cpu.start()
        run = enqueue_day(settings)
        wait_for_day(settings, sink, run, lambda done: progress(
            f"  {workers} workers: {done:,}/{run.planned:,} digests at the sink"))
        total = time.perf_counter() - run.start
        peaks = [process_tree_peak_mb(p.pid) for p in procs]
    finally:
        cpu.stop()  # here too if the day was interrupted: no sampling thread is left behind
        stop_workers(procs)
    pool = f" x {concurrency} processes" if concurrency > 1 else ""
    figures.add(f"whole day, {workers} Celery workers{pool}", total,
                f"{run.planned / total:,.0f} emails/s")
    note_worker_overheads(settings, figures, run, workers * concurrency, total, peaks)
    note_inside_workers(settings, figures, run)
    figures.notes += filter(None, [cpu_note(cpu, run.planned), database_size_note(settings)])
    return total


def database_size_note(settings: Settings) -> str:
    """The day's PostgreSQL database on disk once the day is sent, and its two biggest tables
    with their indexes (the ledger's rows and each digest's papers)."""
    with db.engine_for(settings.database_url).connect() as conn:
        total = conn.scalar(text("SELECT pg_database_size(current_database())"))
        tables = {name: conn.scalar(text(f"SELECT pg_total_relation_size('{name}')"))
                  for name in ("deliveries", "delivery_items")}
    return (f"  database after the day: {total / 2**20:,.0f} MB, of which "
            + ", ".join(f"{name} {size / 2**20:,.0f} MB" for name, size in tables.items())
            + " (with their indexes)")


def day_parties(sink: Sink) -> dict[str, Callable[[int, str], bool]]:
    """Who shares the cores during the workers' day, for the CPU account."""
    bench = os.getpid()
    return {
        "workers": lambda _pid, command: "digest.tools.bench_worker" in command,
        "the sink": lambda pid, _command: sink.process is not None and pid == sink.process.pid,
        # Its postmaster's path, or a backend's title ("postgres: ..."), set just after fork.
        "PostgreSQL": lambda _pid, command: "postgres" in command.split(" ", 1)[0],
        "Redis": lambda _pid, command: "redis-server" in command,
        "planning and watching (this process)": lambda pid, _command: pid == bench,
    }


def note_inside_workers(settings: Settings, figures: Figures, run: WorkerRun) -> None:
    """What the worker processes measured themselves (`bench_worker`): Celery's share of
    their time between their first task and their last (what is not inside a task:
    acknowledging, fetching, decoding the next), statements per batch, and the stages."""
    stats = [json.loads(p.read_text())
             for p in sorted((Path(settings.data_dir) / "worker-stats").glob("*.json"))]
    if not stats:
        return
    tasks = sum(s["tasks"] for s in stats)
    wall = sum(s["last"] - s["first"] for s in stats)
    inside = sum(s["in_tasks"] for s in stats)
    statements = sum(s["statements"] for s in stats)
    clock: dict[str, float] = {}
    for s in stats:
        for stage, seconds in s["clock"].items():
            clock[stage] = clock.get(stage, 0.0) + seconds
    figures.notes.append(
        f"  inside the workers: {tasks:,} tasks, Celery between them {wall - inside:.1f} of "
        f"{wall:.1f} process-seconds ({(wall - inside) / max(wall, 1e-9):.1%}, "
        f"{(wall - inside) / max(tasks, 1) * 1000:.2f} ms a task); the tasks (compose, claim, "
        f"hand over) {inside:.1f} s; {statements / max(tasks, 1):.1f} database statements per "
        f"batch of {settings.batch_size}"
    )
    figures.notes.append(
        "  workers' stages (process-seconds, the sending threads' included): "
        + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in sorted(clock.items()))
    )
    figures.notes.append(
        f"  planning: first batch at {run.planning:.1f} s, done at {run.enqueued:.1f} s, "
        f"peak memory of the planning process {run.peak_mb:,.0f} MB"
    )


def start_workers(settings: Settings, workers: int,
                  concurrency: int) -> list[subprocess.Popen[bytes]]:
    """K Celery workers, each in a session of its own so that one signal stops its whole pool."""
    logs = Path(settings.data_dir) / "worker-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(workers):
        log = (logs / f"w{k}.log").open("wb")
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "digest.tools.bench_worker",
             "worker",
             "-n", f"bench{k}@%h", f"--concurrency={concurrency}", "--loglevel=WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True))
    return procs


def stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(30)


@dataclass
class WorkerRun:
    """The day as handed to the workers: how many batches, of which days, and when planning
    started and ended (counts only: a million readers' ids are the workers' to hold)."""

    start: float  # perf_counter at the start of planning
    began: datetime  # the same instant in UTC, to compare with the ledger's times
    tasks: int = 0
    planned: int = 0
    dates: set[date] = field(default_factory=set)
    planning: float = 0.0  # seconds until the first batch could go
    enqueued: float = 0.0  # seconds until the last batch was enqueued (planning done)
    peak_mb: float = 0.0  # the planning process's peak memory
    ledger_polls: int = 0  # how often the bench asked the ledger whether the day was done

    @property
    def days(self) -> list[date]:
        return sorted(self.dates)


def enqueue_day(settings: Settings) -> WorkerRun:
    """Plan the day and enqueue each batch as it is planned, as the beat's tick task does."""
    from workers.app import make_app

    from ..pipeline import plan_due_batches

    app = make_app(settings)
    run = WorkerRun(time.perf_counter(), datetime.now(timezone.utc))
    for day, ids in plan_due_batches(settings, run.began):
        if not run.tasks:
            run.planning = time.perf_counter() - run.start
        app.send_task("workers.tasks.send_batch", args=[day.isoformat(), ids])
        run.tasks, run.planned = run.tasks + 1, run.planned + len(ids)
        run.dates.add(day)
    run.enqueued = time.perf_counter() - run.start
    run.peak_mb = peak_rss_mb()
    return run


def note_planning_only(settings: Settings, figures: Figures) -> None:
    """The beat's planning alone (`--plan-only`): every batch planned and enqueued to Redis,
    none sent; its time, memory and statements."""
    with counted_statements(settings.database_url) as statements:
        run = enqueue_day(settings)
    figures.add(f"planning only: {run.planned:,} digests, {run.tasks:,} batches enqueued",
                run.enqueued, f"{run.enqueued / max(run.planned, 1) * 1e6:.1f} us per subscriber")
    figures.notes.append(
        f"planning: first batch at {run.planning:.1f} s, the last enqueued at {run.enqueued:.1f} "
        f"s, peak memory of the planning process {run.peak_mb:,.0f} MB, {statements.value:,} "
        f"database statements = {statements.value / max(run.tasks, 1):.2f} per batch of "
        f"{settings.batch_size}"
    )


def wait_for_day(settings: Settings, sink: Sink, run: WorkerRun,
                 progress: Callable[[int], None]) -> None:
    """Until the ledger has settled every planned digest.

    It watches the sink's counter (shared memory) and asks the ledger only when the counter
    has stood still for `LEDGER_STALL` seconds (the day may be done: digests with nothing to
    send never reach the sink), or once every `LEDGER_EVERY` seconds (`PROGRESS_EVERY` until
    the first digest arrives). Counting a day's rows costs the database time in proportion
    to the day, so a watcher that asks every few seconds charges a big day the square of its
    size: progress is the sink's count instead.
    """
    from .. import ledger

    base = sink.received
    last, moved = base, time.perf_counter()
    asked = shown = moved
    while True:
        time.sleep(0.25)
        now, count = time.perf_counter(), sink.received
        if count != last:
            last, moved = count, now
        if now - shown >= PROGRESS_EVERY:
            shown = now
            progress(count - base)
        if now - asked < ledger_wait(count > base, now - moved):
            continue
        asked = now
        run.ledger_polls += 1
        with db.session_scope(settings) as session:
            finished = sum(
                sum(ledger.day_counts(session, d)[k] for k in
                    ("sent", "failed", "in_doubt", "skipped")) for d in run.days)
        if finished >= run.planned:
            return


def ledger_wait(arriving: bool, still: float) -> float:
    """Seconds the day's watcher lets pass between questions to the ledger: `still` is how
    long the sink's counter has not moved, `arriving` whether any digest reached it yet."""
    if not arriving:  # the workers are starting
        return PROGRESS_EVERY
    return LEDGER_STALL if still >= LEDGER_STALL else LEDGER_EVERY


def note_worker_overheads(settings: Settings, figures: Figures, run: WorkerRun, processes: int,
                          total: float, peaks: Sequence[float]) -> None:
    """Where the workers' time went outside the batches' own work, from the ledger's times."""
    spans = batch_spans(settings, run.days)
    busy = sum(((end - start).total_seconds() for start, end in spans), 0.0)
    first = min((start for start, _ in spans), default=run.began)
    last = max((end for _, end in spans), default=run.began)
    startup = (first - run.began).total_seconds()
    tail = total - (last - run.began).total_seconds()
    workers = len(peaks)
    figures.notes.append(
        f"{workers} workers: {run.planned:,} digests in {run.tasks} tasks, peak memory per "
        f"worker {', '.join(f'{p:,.0f}' for p in peaks)} MB; outside the batches' own work "
        f"(Celery, the broker, each worker preparing the day once): "
        f"{max(0.0, 1 - busy / (processes * total)):.1%} of the workers' time"
    )
    figures.notes.append(
        f"  of which: start-up {startup:.1f} s (first batch planned at {run.planning:.1f} s, all "
        f"{run.tasks} enqueued at {run.enqueued:.1f} s, then the first claim), the bench "
        f"seeing the end {tail:.1f} s (it asked the ledger {run.ledger_polls} times), "
        f"between batches {max(0.0, processes * (last - first).total_seconds() - busy):.1f} "
        f"process-seconds ({len(spans)} batches; they overlap over SMTP, one sent while the "
        f"next is composed: the workers' own line below splits Celery out)"
    )


def batch_spans(settings: Settings, days: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """Each batch's claim of its rows and the recording of its last send (UTC)."""
    from sqlalchemy import func, select

    from ..models import Delivery

    with db.session_scope(settings) as session:
        spans = session.execute(
            select(func.min(Delivery.claimed_at), func.max(Delivery.sent_at))
            .where(Delivery.digest_date.in_(days), Delivery.sent_at.is_not(None))
            .group_by(Delivery.claim_token)
        ).all()
    utc = timezone.utc  # SQLite hands back naive datetimes
    return [(s if s.tzinfo else s.replace(tzinfo=utc), e if e.tzinfo else e.replace(tzinfo=utc))
            for s, e in spans if s and e]


def run_bench(
    base: Settings,
    subscribers: int,
    papers: int,
    workers: int = 0,
    backend: str = "smtp",
    postgres_admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    progress: Callable[[str], None] = print,
    in_process: bool = True,
    concurrency: int = 1,
    plan_only: bool = False,
    sink_count: int | None = None,
) -> Figures:
    """Generate the day, run it, measure the best cases in the same run; return the figures."""
    figures = Figures(subscribers, papers)
    workdir = Path(tempfile.mkdtemp(prefix="digest-bench-"))
    try:
        _run(base, figures, workdir, subscribers, papers, workers, backend, postgres_admin_url,
             progress, in_process and not plan_only, concurrency, plan_only, sink_count)
    finally:
        # The run's SQLite file goes with its folder: nothing of it stays in this process
        # for the next run (`--repeat`) to carry, neither its prepared day nor its connections.
        forget_prepared_days(bench_database_url(workdir))
        db.engine_for(bench_database_url(workdir)).dispose()
        shutil.rmtree(workdir, ignore_errors=True)  # a 100k day leaves gigabytes of outbox
    return figures


def bench_database_url(workdir: Path) -> str:
    """The in-process day's throwaway SQLite database, in the run's folder."""
    return f"sqlite:///{workdir / 'bench.sqlite3'}"


def _run(
    base: Settings, figures: Figures, workdir: Path, subscribers: int, papers: int,
    workers: int, backend: str, postgres_admin_url: str, progress: Callable[[str], None],
    in_process: bool, concurrency: int = 1, plan_only: bool = False,
    sink_count: int | None = None,
) -> None:
    with Sink() as sink:
        settings = replace(
            base, data_dir=workdir, outbox_dir=workdir / "outbox", mail_backend=backend,
            smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none",
            smtp_username="", send_rate_per_second=0.0, secret_key="bench",
            database_url=bench_database_url(workdir),
        )
        if in_process:
            progress(f"Generating {subscribers:,} subscribers and {papers:,} papers in "
                     f"{settings.database_url}")
            db.upgrade(settings)
            populate(settings, subscribers, papers)
            progress("Running the day in this process...")
            jobs = run_in_process(settings, figures, progress)
            measure_best_cases(settings, figures, sink, subscribers, jobs)
        if workers or plan_only:
            with temporary_postgres(postgres_admin_url) as url, \
                    temporary_redis_database() as broker:
                pg = replace(settings, database_url=url, mail_backend="smtp",
                             celery_broker_url=broker, redis_url=broker)
                progress("Generating the same day in PostgreSQL"
                         + ("..." if plan_only else f" for {workers} workers..."))
                db.upgrade(pg)
                populate(pg, subscribers, papers)
                if plan_only:
                    progress("Planning the day and enqueuing its batches (no workers)...")
                    note_planning_only(pg, figures)
                    return
                seconds = run_workers(pg, workers, figures, progress, concurrency, sink)
                measure_sink(pg, figures, sink, subscribers, seconds, progress, sink_count)


def measure_sink(
    settings: Settings, figures: Figures, sink: Sink, n: int, workers_seconds: float,
    progress: Callable[[str], None], count: int | None = None,
) -> None:
    """What the workers are compared with: the sink fed the day's N messages by a trivial
    client, or `count` of them, their rate standing for the N."""
    from ..mail import message_bytes
    from ..pipeline import compose_message
    from ..prepare import prepared_day
    from ..profiles import load_batch

    with db.session_scope(settings) as session:
        day = today()
        prepared = prepared_day(session, settings, day)
        subscribers, profiles = load_batch(session, day, list(range(1, 101)))
        fresh = [replace(p, sent_paper_ids=frozenset(), since=None) for p in profiles]
        message = next(
            compose_message(settings, prepared, s, selection)
            for s, selection in zip(subscribers, prepared.index.select(fresh), strict=True)
            if selection.picks
        )
    fed = min(n, count or n)
    sample = "" if fed == n else f" (rate over {fed:,})"
    data = message_bytes(settings, message)
    progress(f"Feeding the sink {fed:,} digests with a trivial smtplib client (2 connections)...")
    rate = trivial_client_rate(sink.port, data, fed, 2)
    figures.workers_ratio = workers_seconds / (n / rate)
    figures.add(f"SMTP sink alone: {n:,} digests{sample}, trivial client x2", n / rate,
                f"{rate:,.0f} msg/s", f"workers took {workers_seconds:,.1f} s",
                f"{figures.workers_ratio:.2f}x")
    # The workers pipeline their commands when the server offers it: the same trivial
    # client, pipelining too, says how much of their lead or lag that is.
    progress(f"... and {fed:,} more with the same client pipelining MAIL, RCPT and DATA...")
    rate = trivial_client_rate(sink.port, data, fed, 2, pipelined=True)
    figures.add(f"SMTP sink alone: {n:,} digests{sample}, pipelining client x2", n / rate,
                f"{rate:,.0f} msg/s", f"workers took {workers_seconds:,.1f} s",
                f"{workers_seconds / (n / rate):.2f}x")


def measure_score(settings: Settings, figures: Figures, jobs: int) -> float:
    """Scoring against a raw sparse product over the same N profiles, run as the day ran
    (in `jobs` processes at once), and our `select` alone under the same conditions."""
    from ..clock import CLOCK
    from ..prepare import prepare_day

    profiles = all_profiles(settings)
    with db.session_scope(settings) as session:  # a fresh index: nothing cached from the day
        index = prepare_day(session, settings, datetime.now(timezone.utc).date()).index
    best = seconds_in_processes(jobs, best_score_seconds, index, profiles)
    alone = seconds_in_processes(jobs, partial(our_score_seconds, batch=settings.batch_size),
                                 index, profiles)
    ours = CLOCK.seconds["score"]
    n = f"{len(profiles):,} subscribers"
    figures.add("score all, in the day (best: raw sparse product)", ours, n,
                f"{best:.3f} s", f"{ours / best:.1f}x")
    figures.add("score all, alone like the best case", alone, n, f"{best:.3f} s",
                f"{alone / best:.1f}x")
    if jobs > 1:
        figures.notes.append(f"score rows: both measured in {jobs} processes at once, as the "
                             "day ran, and summed (process-seconds)")
    return best


def measure_best_cases(settings: Settings, figures: Figures, sink: Sink, n: int,
                       jobs: int = 1) -> None:
    """Per stage: the naive way, ours, and the library's best case, all measured now."""
    from ..clock import CLOCK
    from ..pipeline import compose_message, digest_context
    from ..prepare import prepared_day
    from ..profiles import load_batch

    with db.session_scope(settings) as session:
        day = datetime.now(timezone.utc).date()
        prepared = prepared_day(session, settings, day)
        subscribers, profiles = load_batch(session, day, list(range(1, min(n, 1000) + 1)))
        # The day has been sent by now: sample as if it had not, ignoring what went out.
        fresh = [replace(p, sent_paper_ids=frozenset(), since=None) for p in profiles[:100]]
        pairs = [(s, sel) for s, sel in zip(subscribers, prepared.index.select(fresh),
                                            strict=False) if len(sel.picks) >= 5]
        contexts = [digest_context(settings, prepared, s, sel) for s, sel in pairs][:40]
        messages = [compose_message(settings, prepared, s, sel) for s, sel in pairs][:40]
    score_best = measure_score(settings, figures, jobs)
    if not contexts:
        figures.notes.append("no digest matched in the sample: best cases not measured")
        return
    timings = average_timings(in_processes(
        [partial(stage_timings, prepared.renderer, contexts, messages, settings)] * jobs))
    for title, naive, ours, best in timings:
        figures.rows.append((title, f"{ours * 1000:9.3f} ms", f"naive {naive * 1000:.3f} ms",
                             f"{best * 1000:.3f} ms", f"{ours / best:.1f}x"))
    if settings.mail_backend == "file" and figures.whole_day and figures.emails:
        add_best_day(settings, figures, score_best, timings, jobs)
    from ..mail import message_bytes

    data = message_bytes(settings, messages[0])
    before = sink.received
    count = min(n, 5000)
    rate = trivial_client_rate(sink.port, data, count, 2)
    # Our send stage's rate per process, whatever the day's backend was (file or the sink).
    ours_send = CLOCK.items["send"] / max(CLOCK.seconds["send"], 1e-9)
    figures.add("SMTP: sink fed by a trivial client x2", count / rate, f"{rate:,.0f} msg/s",
                f"our send stage {ours_send:,.0f} msg/s ({settings.mail_backend}, per process)",
                f"{rate / max(ours_send, 1e-9):.1f}x")
    figures.notes.append(f"sink received {sink.received:,} messages in all "
                         f"({sink.received - before:,} from the trivial client)")


def average_timings(runs: Sequence[Sequence[Timing]]) -> list[Timing]:
    """Each stage's timings averaged over runs made at once in several processes."""
    return [(stages[0][0], *(sum(t[i] for t in stages) / len(stages) for i in (1, 2, 3)))
            for stages in zip(*runs, strict=True)]


def add_best_day(settings: Settings, figures: Figures, score_best: float,
                 timings: Sequence[Timing], jobs: int) -> None:
    """The in-process day against the sum of its stages done the fast way, all measured in
    this run: the raw sparse product, per email the faster of ours and the best case for
    HTML, text and MIME, and the bare creation of as many files of the day's mean .eml size
    on the outbox's file system, in as many processes. Issue 20's goal (35 s where that sum
    was about 24 process-seconds) is about 1.5x."""
    n = figures.emails
    floors = {name: min(ours, best) * n
              for name, (_, _, ours, best) in zip(("HTML", "text", "MIME"), timings, strict=True)}
    size = mean_file_size(settings.outbox_dir)
    # The day wrote into an empty outbox: so does the floor (tmpfs slows as it fills).
    shutil.rmtree(settings.outbox_dir, ignore_errors=True)
    files = seconds_in_processes(jobs, partial(file_creation_seconds, size=size),
                                 settings.data_dir / "file-creation", range(n))
    shutil.rmtree(settings.data_dir / "file-creation", ignore_errors=True)
    parts = {"score": score_best, **floors, "file creation": files}
    best = sum(parts.values())
    assert figures.whole_day is not None
    figures.best_day_ratio = figures.whole_day / best
    figures.add("whole day's best case: the stages the fast way + file creation", best,
                " + ".join(f"{name} {seconds:.1f}" for name, seconds in parts.items())
                + " process-s",
                f"the day took {figures.whole_day:.1f} s", f"{figures.best_day_ratio:.2f}x")
    figures.notes.append(
        f"best day: {n:,} files of {size:,} bytes (the day's mean .eml) made by {jobs} "
        "process(es) at once, the day's outbox removed first; HTML, text and MIME count the "
        "faster of ours and the best case")


def mean_file_size(outbox: Path) -> int:
    """The mean size of the .eml files under `outbox`."""
    sizes = [entry.stat().st_size for folder in outbox.iterdir() if folder.is_dir()
             for entry in os.scandir(folder) if entry.name.endswith(".eml")]
    return sum(sizes) // max(len(sizes), 1)


def file_creation_seconds(folder: Path, share: Sequence[int], size: int) -> float:
    """Seconds to create one file of `size` bytes for each of `share` in `folder` (open,
    write, close): the floor under the file outbox's atomic write."""
    target = folder / str(os.getpid())
    target.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    start = time.perf_counter()
    for k in share:
        fd = os.open(f"{target}/{k}.eml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return time.perf_counter() - start


def repeat_bench(base: Settings, runs: int, subscribers: int, papers: int, workers: int = 0,
                 backend: str = "smtp", progress: Callable[[str], None] = print,
                 **kwargs: Any) -> list[Figures]:
    """`run_bench` `runs` times in a row, each run on its own workdir, databases and Redis
    database: one run's figures are one draw on a shared machine, the spread says how far
    to trust it."""
    results = []
    for k in range(1, runs + 1):
        if runs > 1:
            progress(f"Run {k} of {runs}")
        results.append(run_bench(base, subscribers, papers, workers, backend,
                                 progress=progress, **kwargs))
    return results


def headlines(runs: Sequence[Figures]) -> dict[str, list[float]]:
    """The whole day in-process (seconds) and the workers' ratio to the sink alone, per run,
    for the figures the runs have."""
    values = {"whole day in-process (s)": [f.whole_day for f in runs],
              "the day / its best case": [f.best_day_ratio for f in runs],
              "workers' time / the sink alone": [f.workers_ratio for f in runs]}
    return {name: [v for v in vs if v is not None] for name, vs in values.items()
            if any(v is not None for v in vs)}


def spread(runs: Sequence[Figures]) -> dict[str, dict[str, float]]:
    """Min, median and max over the runs of each headline figure."""
    from statistics import median

    return {name: {"min": min(vs), "median": median(vs), "max": max(vs), "runs": len(vs)}
            for name, vs in headlines(runs).items()}


def spread_table(runs: Sequence[Figures]) -> str:
    """Each headline figure run by run, then its min, median and max."""
    lines = [f"Spread over {len(runs)} runs:"]
    for name, values in headlines(runs).items():
        s = spread(runs)[name]
        lines.append(f"  {name}: {', '.join(f'{v:.2f}' for v in values)}  "
                     f"(min {s['min']:.2f}, median {s['median']:.2f}, max {s['max']:.2f})")
    return "\n".join(lines)


def figures_json(figures: Figures) -> str:
    return json.dumps(figures_dict(figures), indent=2)


def figures_dict(figures: Figures) -> dict[str, Any]:
    return {"subscribers": figures.subscribers, "papers": figures.papers,
            "whole_day_seconds": figures.whole_day, "workers_ratio": figures.workers_ratio,
            "best_day_ratio": figures.best_day_ratio,
            "rows": figures.rows, "notes": figures.notes}


def runs_json(runs: Sequence[Figures]) -> str:
    return json.dumps({"runs": [figures_dict(f) for f in runs], "spread": spread(runs)},
                      indent=2)


def today() -> date:
    return datetime.now(timezone.utc).date()
