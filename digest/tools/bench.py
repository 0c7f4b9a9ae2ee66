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
import random
import resource
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, text

from .. import db
from ..settings import Settings

TOPIC_PHRASES = [
    "LoRA", "parameter-efficient fine-tuning", "low-rank adaptation", "activation sparsity",
    "mixture of experts", "diffusion models", "text-to-image generation", "video generation",
    "vision transformers", "object detection", "semantic segmentation", "3D reconstruction",
    "neural radiance fields", "reinforcement learning", "RLHF", "reward models",
    "chain-of-thought reasoning", "mathematical reasoning", "code generation",
    "retrieval-augmented generation", "RAG", "long context", "efficient attention",
    "state space models", "quantization", "pruning", "knowledge distillation",
    "speech recognition", "text-to-speech", "audio generation", "multimodal LLMs",
    "vision-language models", "visual question answering", "graph neural networks",
    "molecular property prediction", "protein structure", "time series forecasting",
    "recommender systems", "federated learning", "differential privacy", "adversarial robustness",
    "jailbreak attacks", "AI safety", "alignment", "instruction tuning", "in-context learning",
    "tokenization", "machine translation", "question answering", "summarization",
    "robotics", "embodied agents", "LLM agents", "tool use", "world models",
    "self-supervised learning", "contrastive learning", "continual learning",
    "medical imaging", "image editing",
]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Asia/Kolkata",
         "America/Los_Angeles", "Europe/London", "Australia/Sydney"]


# --- synthetic data ---------------------------------------------------------------------


def sample_texts() -> list[tuple[str, str]]:
    """Real (title, abstract) pairs from the bundled sample corpus."""
    from ..ingest import SAMPLE_PAPERS, parse

    result = parse(SAMPLE_PAPERS.read_bytes(), "page", str(SAMPLE_PAPERS))
    return [(r.title, r.abstract) for r in result.records]


def synthetic_papers(
    m: int, rng: random.Random, now: datetime, offset: int = 0
) -> list[dict[str, Any]]:
    """M papers whose text mixes sentences of real abstracts: real vocabulary, distinct vectors."""
    from ..ingest import title_key

    texts = sample_texts()
    sentences = [s.strip() + "." for _, a in texts for s in a.split(". ") if len(s) > 40]
    rows = []
    for i in range(offset, offset + m):
        t1, t2 = rng.choice(texts)[0], rng.choice(texts)[0]
        head = t1.split(":")[0] if ":" in t1 else " ".join(t1.split()[:4])
        title = f"{head}: {' '.join(t2.split()[-6:])} ({i})"
        abstract = " ".join(rng.sample(sentences, 5))
        upvotes = int(rng.paretovariate(1.2)) - 1 if rng.random() < 0.6 else None
        rows.append({
            "source": "daily-papers" if upvotes is not None else "arxiv",
            "source_id": f"bench.{i:06d}",
            "title_key": title_key(title),
            "title": title,
            "abstract": abstract,
            "authors": [f"Author {rng.randrange(5000)}" for _ in range(rng.randint(1, 8))],
            "url": f"https://arxiv.org/abs/bench.{i:06d}",
            "pdf_url": f"https://arxiv.org/pdf/bench.{i:06d}",
            "published_at": now - timedelta(hours=rng.uniform(0, 60)),
            "upvotes": upvotes,
            "comments": rng.randint(0, 6) if upvotes is not None else None,
            "stars": None,
            "first_seen_at": now - timedelta(hours=rng.uniform(0.5, 20)),
            "updated_at": now,
        })
    return rows


def populate(settings: Settings, subscribers: int, papers: int, seed: int = 7) -> None:
    """Fill an empty, migrated database with the synthetic day (bulk inserts)."""
    from ..models import Paper, Subscriber, SubscriberStatus, TopicProfile

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    engine = db.engine_for(settings.database_url)
    with engine.begin() as conn:
        for start in range(0, papers, 1000):
            conn.execute(insert(Paper),
                         synthetic_papers(min(1000, papers - start), rng, now, offset=start))
        for start in range(0, subscribers, 5000):
            count = min(5000, subscribers - start)
            conn.execute(insert(Subscriber), [
                {"id": start + i + 1, "email": f"reader{start + i:07d}@bench.example.org",
                 "status": SubscriberStatus.ACTIVE, "time_zone": rng.choice(ZONES),
                 "send_hour": 0, "papers_per_digest": 10, "created_at": now,
                 "confirmed_at": now}
                for i in range(count)
            ])
            conn.execute(insert(TopicProfile), [
                {"subscriber_id": start + i + 1,
                 "topics": ", ".join(rng.sample(TOPIC_PHRASES, rng.randint(1, 4))),
                 "exclude": "", "trending_fallback": rng.random() < 0.1, "updated_at": now}
                for i in range(count)
            ])
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('subscribers_id_seq', "
                              "(SELECT max(id) FROM subscribers))"))


# --- an SMTP sink in its own process -----------------------------------------------------


def _sink_main(port: int, counter: Any, ready: Any) -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    class Count:
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
    """An aiosmtpd server that accepts and counts, in a separate process (its own core)."""

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


def trivial_client_rate(port: int, message: bytes, count: int, connections: int) -> float:
    """Messages/second the sink takes from plain smtplib clients sending prebuilt bytes."""

    def feed(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            for _ in range(n):
                client.sendmail("digest@bench.example.org", ["reader@bench.example.org"],
                                message)

    ctx = multiprocessing.get_context("fork")
    per = max(1, count // connections)
    procs = [ctx.Process(target=feed, args=(per,)) for _ in range(connections)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return per * connections / (time.perf_counter() - start)


# --- best cases, measured in the same run ------------------------------------------------


@dataclass
class Figures:
    """One benchmark run's numbers, printed as a table."""

    subscribers: int
    papers: int
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
    jobs: int, measure: Callable[[Any, Sequence[Any]], float], index: Any,
    profiles: Sequence[Any],
) -> float:
    """`measure` over shares of the profiles in `jobs` processes at once, as the day ran
    them: process-seconds summed, comparable with the day's per-stage figures."""
    gc.freeze()  # as `digest run` does once the day is prepared
    if jobs <= 1:
        return measure(index, profiles)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    share = -(-len(profiles) // jobs)

    def child(part: Sequence[Any]) -> None:
        results.put(measure(index, part))

    children = [context.Process(target=child, args=(profiles[k * share : (k + 1) * share],))
                for k in range(jobs)]
    for process in children:
        process.start()
    total = sum(results.get(timeout=600) for _ in children)
    for process in children:
        process.join()
    return total


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
    for stage in ("plan", "prepare", "load", "score", "render", "send", "ledger", "index"):
        seconds = CLOCK.seconds[stage]
        items = CLOCK.items[stage] or 1
        figures.add(f"  {stage}", seconds, f"{seconds / items * 1000:.3f} ms/item")
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
    import redis

    redis.Redis.from_url(settings.celery_broker_url).flushdb()
    procs = start_workers(settings, workers, concurrency)
    try:
        time.sleep(4)  # workers import the library
        run = enqueue_day(settings)
        wait_for_day(settings, sink, run, lambda done: progress(
            f"  {workers} workers: {done:,}/{run.planned:,} digests"))
        total = time.perf_counter() - run.start
        peaks = [process_tree_peak_mb(p.pid) for p in procs]
    finally:
        stop_workers(procs)
    pool = f" x {concurrency} processes" if concurrency > 1 else ""
    figures.add(f"whole day, {workers} Celery workers{pool}", total,
                f"{run.planned / total:,.0f} emails/s")
    note_worker_overheads(settings, figures, run, workers * concurrency, total, peaks)
    return total


def start_workers(settings: Settings, workers: int,
                  concurrency: int) -> list[subprocess.Popen[bytes]]:
    """K Celery workers, each in a session of its own so that one signal stops its whole pool."""
    logs = Path(settings.data_dir) / "worker-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(workers):
        log = (logs / f"w{k}.log").open("wb")
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "workers", "worker",
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
    """The day as handed to the workers: its batches and when planning started and ended."""

    start: float  # perf_counter at the start of planning
    began: datetime  # the same instant in UTC, to compare with the ledger's times
    batches: list[tuple[date, list[int]]] = field(default_factory=list)
    planning: float = 0.0  # seconds until the first batch could go
    enqueued: float = 0.0  # seconds until the last batch was enqueued

    @property
    def planned(self) -> int:
        return sum(len(ids) for _, ids in self.batches)

    @property
    def days(self) -> list[date]:
        return sorted({d for d, _ in self.batches})


def enqueue_day(settings: Settings) -> WorkerRun:
    """Plan the day and enqueue each batch as it is planned, as the beat's tick task does."""
    from workers.app import make_app

    from ..pipeline import plan_due_batches

    app = make_app(settings)
    run = WorkerRun(time.perf_counter(), datetime.now(timezone.utc))
    for day, ids in plan_due_batches(settings, run.began):
        if not run.batches:
            run.planning = time.perf_counter() - run.start
        app.send_task("workers.tasks.send_batch", args=[day.isoformat(), ids])
        run.batches.append((day, ids))
    run.enqueued = time.perf_counter() - run.start
    return run


def wait_for_day(settings: Settings, sink: Sink, run: WorkerRun,
                 progress: Callable[[int], None]) -> None:
    """Until the ledger has settled every planned digest.

    It watches the sink's counter (shared memory) and asks the ledger only when the counter
    stalls or every 10 s: counting a big day's rows every second costs the database real time.
    """
    from .. import ledger

    received, asked = sink.received, time.perf_counter()
    while True:
        time.sleep(0.25)
        now, count = time.perf_counter(), sink.received
        if count != received and now - asked < 10:
            received = count
            continue
        received, asked = count, now
        with db.session_scope(settings) as session:
            finished = sum(
                sum(ledger.day_counts(session, d)[k] for k in
                    ("sent", "failed", "in_doubt", "skipped")) for d in run.days)
        if finished >= run.planned:
            return
        progress(finished)


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
        f"{workers} workers: {run.planned:,} digests in {len(run.batches)} tasks, peak memory per "
        f"worker {', '.join(f'{p:,.0f}' for p in peaks)} MB; outside the batches' own work "
        f"(Celery, the broker, each worker preparing the day once): "
        f"{max(0.0, 1 - busy / (processes * total)):.1%} of the workers' time"
    )
    figures.notes.append(
        f"  of which: start-up {startup:.1f} s (first batch planned at {run.planning:.1f} s, all "
        f"{len(run.batches)} enqueued at {run.enqueued:.1f} s, then the first claim), the bench "
        f"seeing the end {tail:.1f} s, "
        f"between batches {processes * (last - first).total_seconds() - busy:.1f} "
        f"process-seconds ({len(spans)} batches)"
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


@contextmanager
def temporary_postgres(admin_url: str) -> Iterator[str]:
    name = f"digest_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        db.engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
) -> Figures:
    """Generate the day, run it, measure the best cases in the same run; return the figures."""
    figures = Figures(subscribers, papers)
    workdir = Path(tempfile.mkdtemp(prefix="digest-bench-"))
    try:
        _run(base, figures, workdir, subscribers, papers, workers, backend, postgres_admin_url,
             progress, in_process, concurrency)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # a 100k day leaves gigabytes of outbox
    return figures


def _run(
    base: Settings, figures: Figures, workdir: Path, subscribers: int, papers: int,
    workers: int, backend: str, postgres_admin_url: str, progress: Callable[[str], None],
    in_process: bool, concurrency: int = 1,
) -> None:
    with Sink() as sink:
        settings = replace(
            base, data_dir=workdir, outbox_dir=workdir / "outbox", mail_backend=backend,
            smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none",
            smtp_username="", send_rate_per_second=0.0, secret_key="bench",
            database_url=f"sqlite:///{workdir / 'bench.sqlite3'}",
            celery_broker_url="redis://127.0.0.1:6379/12", redis_url="redis://127.0.0.1:6379/12",
        )
        if in_process:
            progress(f"Generating {subscribers:,} subscribers and {papers:,} papers in "
                     f"{settings.database_url}")
            db.upgrade(settings)
            populate(settings, subscribers, papers)
            progress("Running the day in this process...")
            jobs = run_in_process(settings, figures, progress)
            measure_best_cases(settings, figures, sink, subscribers, jobs)
        if workers:
            with temporary_postgres(postgres_admin_url) as url:
                pg = replace(settings, database_url=url, mail_backend="smtp")
                progress(f"Generating the same day in PostgreSQL for {workers} workers...")
                db.upgrade(pg)
                populate(pg, subscribers, papers)
                seconds = run_workers(pg, workers, figures, progress, concurrency, sink)
                measure_sink(pg, figures, sink, subscribers, seconds, progress)


def measure_sink(
    settings: Settings, figures: Figures, sink: Sink, n: int, workers_seconds: float,
    progress: Callable[[str], None],
) -> None:
    """What the workers are compared with: the sink fed all N messages by a trivial client."""
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
    progress(f"Feeding the sink {n:,} digests with a trivial smtplib client (2 connections)...")
    rate = trivial_client_rate(sink.port, message_bytes(settings, message), n, 2)
    figures.add(f"SMTP sink alone: {n:,} digests, trivial client x2", n / rate,
                f"{rate:,.0f} msg/s", f"workers took {workers_seconds:,.1f} s",
                f"{workers_seconds / (n / rate):.2f}x")


def measure_score(settings: Settings, figures: Figures, jobs: int) -> None:
    """Scoring against a raw sparse product over the same N profiles, run as the day ran
    (in `jobs` processes at once), and our `select` alone under the same conditions."""
    from functools import partial

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
    measure_score(settings, figures, jobs)
    if not contexts:
        figures.notes.append("no digest matched in the sample: best cases not measured")
        return
    for title, naive, ours, best in stage_timings(prepared.renderer, contexts, messages,
                                                   settings):
        figures.rows.append((title, f"{ours * 1000:9.3f} ms", f"naive {naive * 1000:.3f} ms",
                             f"{best * 1000:.3f} ms", f"{ours / best:.1f}x"))
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


Timing = tuple[str, float, float, float]  # (stage, naive, ours, best) seconds per email


def stage_timings(
    renderer: Any, contexts: Sequence[Any], messages: Sequence[Any], settings: Settings
) -> list[Timing]:
    """(stage, naive, ours, best) seconds per email for render, text and MIME."""
    from ..render.plain import digest_template_context

    for ctx in contexts:  # warm the day's caches, as the first batches do
        renderer.render(ctx)
    cycle = [(ctx, digest_template_context(ctx, with_cards=False)) for ctx in contexts]
    return [html_timing(renderer, cycle), text_timing(renderer, cycle),
            mime_timing(messages, settings)]


def seconds_each(fn: Callable[[Any], object], items: Sequence[Any], rounds: int = 5) -> float:
    """Seconds per item of `fn` over `items`, over `rounds` rounds."""
    start = time.perf_counter()
    for _ in range(rounds):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (rounds * len(items))


def html_timing(renderer: Any, cycle: Sequence[tuple[Any, dict[str, Any]]]) -> Timing:
    """HTML. Best case: the skeleton and each card compiled once per day (the same compiled
    pieces as ours), each made a Jinja template; per email Jinja fills the subscriber's parts
    (their cards, ranks, reasons, links, address, topics) into them."""
    from jinja2 import Environment

    from ..render.plain import render_digest

    jinja = Environment(autoescape=True)
    templates: dict[tuple[str, ...], Any] = {}

    def template(segments: tuple[str, ...]) -> Any:
        if segments not in templates:
            templates[segments] = jinja.from_string("".join(
                "{{ " + part + " }}" if i % 2 else "{% raw %}" + part + "{% endraw %}"
                for i, part in enumerate(segments)))
        return templates[segments]

    def best_html(c: tuple[Any, dict[str, Any]]) -> str:
        ctx, context = c
        skeleton, units = renderer.compiled(ctx, context)
        cards = "".join(
            template(unit).render(rank=rank, why=item.why, feedback_href=context["feedback_href"])
            for rank, (unit, item) in enumerate(zip(units, ctx.items, strict=True), start=1))
        values = {name: context[name] for name in (
            "preview", "topics", "count_phrase", "is_are", "recipient", "preferences_href",
            "unsubscribe_href")}
        return template(skeleton.head).render(values) + cards + template(
            skeleton.tail).render(values)

    for c in cycle:  # compile the templates before timing, as the day's caches are
        assert best_html(c) == renderer.html(c[0], dict(c[1])), "best case must be the same email"
    return ("render HTML per email (best: compiled once + Jinja fill)",
            seconds_each(lambda c: render_digest(c[0]), cycle, 1),
            seconds_each(lambda c: renderer.html(c[0], dict(c[1])), cycle),
            seconds_each(best_html, cycle))


def text_timing(renderer: Any, cycle: Sequence[tuple[Any, dict[str, Any]]]) -> Timing:
    """Text. Best case: each paper's text wrapped once, joined per subscriber."""
    import textwrap

    from ..render.plain import card_text

    prewrapped = {item.card.paper_id: textwrap.fill(item.card.abstract, 72)
                  for ctx, _ in cycle for item in ctx.items}
    return ("plain text per email (best: pre-wrapped join)",
            seconds_each(lambda c: "".join(card_text(i.card, r, i.why)
                                           for r, i in enumerate(c[0].items, 1)), cycle, 1),
            seconds_each(lambda c: renderer.text(c[0], dict(c[1])), cycle),
            seconds_each(lambda c: "\n\n".join(prewrapped[i.card.paper_id]
                                                for i in c[0].items), cycle))


def mime_timing(messages: Sequence[Any], settings: Settings) -> Timing:
    """MIME. Best case: fixed headers, the text quoted-printable and the HTML in 7-bit lines
    (as ours sends a page whose head is ASCII), joined as bytes."""
    import binascii
    from email.message import EmailMessage

    from ..mail import message_bytes

    def naive_mime(m: Any) -> bytes:
        msg = EmailMessage()
        msg["Subject"], msg["To"], msg["From"] = m.subject, m.to, settings.mail_from
        msg.set_content(m.text)
        msg.add_alternative(m.html, subtype="html")
        return msg.as_bytes()

    def best_mime(m: Any) -> bytes:
        return b"".join((b"From: x\r\nTo: y\r\nSubject: z\r\n\r\n--b\r\n",
                         binascii.b2a_qp(m.text.encode(), istext=True), b"\r\n--b\r\n",
                         m.html.encode("ascii", "xmlcharrefreplace").replace(b"><", b">\r\n<"),
                         b"\r\n--b--\r\n"))

    return ("build MIME per email (best: direct bytes)",
            seconds_each(naive_mime, messages, 1),
            seconds_each(lambda m: message_bytes(settings, m), messages),
            seconds_each(best_mime, messages))


def figures_json(figures: Figures) -> str:
    return json.dumps({"subscribers": figures.subscribers, "papers": figures.papers,
                       "rows": figures.rows, "notes": figures.notes}, indent=2)


def today() -> date:
    return datetime.now(timezone.utc).date()
