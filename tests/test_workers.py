"""Real Celery workers over real Redis and PostgreSQL, sending to a real SMTP server.

Every test asserts exactly-once: no subscriber receives two digests for a date, and none is
lost silently (anyone who got nothing is reported in doubt by the ledger).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text

from digest import db, ledger
from digest.models import Base, Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from digest.settings import Settings
from digest.status import day_status
from workers.app import make_app

from .conftest import make_settings
from .factories import make_paper, make_subscriber
from .smtp_server import SMTPServer

VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of our own on a spare port, so a test may kill and restart it."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _pings(self.url), 10, "private redis-server to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Cluster:
    """Workers and beats as subprocesses, each in its own process group."""

    settings: Settings
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "DIGEST"))}
        env.update(
            DATA_DIR=str(s.data_dir), DATABASE_URL=s.database_url, MAIL_BACKEND=s.mail_backend,
            SMTP_HOST=s.smtp_host, SMTP_PORT=str(s.smtp_port), SECRET_KEY=s.secret_key,
            PUBLIC_BASE_URL=s.public_base_url, MAIL_FROM=s.mail_from, LIST_ID=s.list_id,
            REDIS_URL=s.redis_url, CELERY_BROKER_URL=s.celery_broker_url,
            BATCH_SIZE=str(s.batch_size), LEDGER_WINDOW=str(s.ledger_window),
            CLAIM_LEASE_SECONDS=str(s.claim_lease_seconds),
            BEAT_INTERVAL_MINUTES=str(s.beat_interval_minutes),
            SMTP_RETRY_ATTEMPTS=str(s.smtp_retry_attempts),
            SMTP_RETRY_BASE_DELAY=str(s.smtp_retry_base_delay),
            SMTP_RETRY_MAX_DELAY=str(s.smtp_retry_max_delay),
            MIN_RELEVANCE=str(s.min_relevance), LOOKBACK_DAYS=str(s.lookback_days),
        )
        return env

    def _spawn(self, name: str, args: list[str], ready: str | None) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "workers", *args],
            env=self.env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True, cwd=Path(__file__).resolve().parents[1],
        )
        self.procs.append(proc)
        if ready:
            wait_for(lambda: ready in log.read_text(errors="replace") or proc.poll() is not None,
                     60, f"{name} to start")
            assert proc.poll() is None, log.read_text()[-3000:]
        return proc

    def worker(self, name: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self._spawn(name, ["worker", "-n", f"{name}@%h", "--loglevel=INFO",
                                  f"--concurrency={concurrency}", "--without-gossip",
                                  "--without-mingle", "--without-heartbeat"], "ready.")

    def beat(self, name: str) -> subprocess.Popen[bytes]:
        return self._spawn(name, ["beat", "--loglevel=INFO",
                                  f"--schedule={self.logs / (name + '.schedule')}"], None)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)

    def tick(self, now: datetime | None = None) -> None:
        app = make_app(self.settings)
        app.send_task("workers.tasks.tick",
                      kwargs={"now": (now or datetime.now(timezone.utc)).isoformat()})

    def send_batch_task(self, day: date, ids: list[int]) -> None:
        make_app(self.settings).send_task("workers.tasks.send_batch", args=[day.isoformat(), ids])


@pytest.fixture(scope="session")
def broker_db() -> Iterator[int]:
    """A Redis database number no other test or bench run on this machine is using."""
    from digest.tools.synthetic import temporary_redis_database

    with temporary_redis_database() as url:
        yield int(url.rsplit("/", 1)[1])


@pytest.fixture
def pg_settings(
    postgres_url: str, tmp_path: Path, smtp_server: SMTPServer, broker_db: int
) -> Iterator[Settings]:
    tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    with db.engine_for(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    broker = f"redis://127.0.0.1:6379/{broker_db}"
    redis.Redis.from_url(broker).flushdb()
    yield make_settings(
        tmp_path, database_url=postgres_url, mail_backend="smtp", smtp_host="127.0.0.1",
        smtp_port=smtp_server.port, redis_url=broker, celery_broker_url=broker,
        batch_size=20, ledger_window=5, claim_lease_seconds=4, min_relevance=0.0,
        lookback_days=7, smtp_retry_base_delay=0.05, smtp_retry_max_delay=0.2,
    )
    redis.Redis.from_url(broker).flushdb()


@pytest.fixture
def cluster(pg_settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    logs = tmp_path / "logs"
    logs.mkdir()
    c = Cluster(pg_settings, logs)
    yield c
    c.stop()


def seed(settings: Settings, subscribers: int) -> tuple[date, list[str]]:
    """Papers and subscribers due at any hour today; returns (today, addresses)."""
    now = datetime.now(timezone.utc)
    with db.session_scope(settings) as session:
        make_paper(session, title="LoRA for everyone", first_seen_at=now - timedelta(hours=1))
        make_paper(session, title="Diffusion for all", first_seen_at=now - timedelta(hours=1))
        emails = [f"reader{n:04d}@example.org" for n in range(subscribers)]
        for email in emails:
            make_subscriber(session, email=email, topics="LoRA", send_hour=0,
                            trending_fallback=True, papers_per_digest=2)
    return now.date(), emails


def settled(settings: Settings, day: date, expected: int) -> bool:
    """Every expected delivery reached a final state."""
    with db.session_scope(settings) as session:
        counts = ledger.day_counts(session, day)
    final = sum(counts[k] for k in ("sent", "failed", "in_doubt", "skipped"))
    return final >= expected


def assert_exactly_once(settings: Settings, smtp: SMTPServer, day: date,
                        emails: list[str]) -> Counter[str]:
    received = Counter(rcpt.lower() for r in smtp.received for rcpt in r.rcpt_tos)
    twice = [e for e, n in received.items() if n > 1]
    assert twice == [], f"sent twice: {twice}"
    with db.session_scope(settings) as session:
        statuses = dict(session.execute(
            select(Subscriber.email, Delivery.status)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.digest_date == day)).all())
    for email in emails:
        if received[email] == 0:
            assert statuses.get(email) in (DeliveryStatus.IN_DOUBT, DeliveryStatus.FAILED), \
                f"{email} got nothing and the ledger says {statuses.get(email)}"
        else:
            assert statuses.get(email) in (DeliveryStatus.SENT, DeliveryStatus.IN_DOUBT), email
    return received


def test_two_workers_send_a_few_hundred_digests_exactly_once(
    cluster: Cluster, smtp_server: SMTPServer
) -> None:
    day, emails = seed(cluster.settings, 300)
    cluster.worker("w1")
    cluster.tick()
    wait_for(lambda: settled(cluster.settings, day, 300), 120, "300 deliveries")
    received = assert_exactly_once(cluster.settings, smtp_server, day, emails)
    assert sorted(received) == emails
    status = day_status(cluster.settings, day)
    assert status.counts["sent"] == 300 and status.counts["in_doubt"] == 0


def test_a_worker_killed_mid_batch_is_finished_by_a_fresh_one(
    cluster: Cluster, smtp_server: SMTPServer
) -> None:
    day, emails = seed(cluster.settings, 60)
    smtp_server.data_delay = 0.05  # slow enough to kill the worker in the middle of a batch
    worker = cluster.worker("doomed", concurrency=1)
    cluster.tick()
    wait_for(lambda: len(smtp_server.received) >= 8, 60, "some messages before the kill")
    cluster.kill(worker)  # SIGKILL: no goodbye, no ack
    sent_before = len(smtp_server.received)
    assert sent_before < 60
    time.sleep(cluster.settings.claim_lease_seconds + 0.5)  # the dead worker's lease runs out
    cluster.worker("fresh", concurrency=1)
    cluster.tick()  # beat's next tick plans the abandoned rows again
    wait_for(lambda: settled(cluster.settings, day, 60), 120, "all deliveries after the kill")
    received = assert_exactly_once(cluster.settings, smtp_server, day, emails)
    status = day_status(cluster.settings, day)
    # Only the window that was being handed to SMTP can be in doubt; everyone else got one.
    assert status.counts["in_doubt"] <= cluster.settings.ledger_window
    assert len(received) + status.counts["in_doubt"] >= 60


def test_a_task_delivered_twice_sends_once(cluster: Cluster, smtp_server: SMTPServer) -> None:
    from digest.pipeline import plan_due_batches

    day, emails = seed(cluster.settings, 40)
    batches = list(plan_due_batches(cluster.settings, datetime.now(timezone.utc)))
    cluster.worker("w1")
    for d, ids in batches + batches:  # every batch task arrives twice
        cluster.send_batch_task(d, ids)
    wait_for(lambda: settled(cluster.settings, day, 40), 60, "40 deliveries")
    time.sleep(1)  # let the duplicate tasks run too
    received = assert_exactly_once(cluster.settings, smtp_server, day, emails)
    assert len(received) == 40


def test_two_beats_running_at_once_send_once(cluster: Cluster, smtp_server: SMTPServer) -> None:
    cluster.settings = replace(cluster.settings, beat_interval_minutes=0.02)  # every 1.2 s
    day, emails = seed(cluster.settings, 40)
    cluster.worker("w1")
    cluster.beat("beat1")
    cluster.beat("beat2")
    wait_for(lambda: settled(cluster.settings, day, 40), 60, "40 deliveries")
    time.sleep(3)  # more ticks from both beats
    received = assert_exactly_once(cluster.settings, smtp_server, day, emails)
    assert len(received) == 40


@pytest.mark.parametrize("fault", ["451-then-accept", "550-one-recipient", "drop-mid-data"])
def test_smtp_faults(cluster: Cluster, smtp_server: SMTPServer, fault: str) -> None:
    day, emails = seed(cluster.settings, 20)
    if fault == "451-then-accept":
        smtp_server.fail_next += ["451 4.3.0 Try again later"] * 2
    elif fault == "550-one-recipient":
        smtp_server.reject_recipients.add(emails[3])
    else:
        smtp_server.drop_next_data = 1
    cluster.worker("w1", concurrency=1)
    cluster.tick()
    wait_for(lambda: settled(cluster.settings, day, 20), 60, "20 deliveries")
    received = assert_exactly_once(cluster.settings, smtp_server, day, emails)
    status = day_status(cluster.settings, day)
    if fault == "451-then-accept":
        assert len(received) == 20 and status.counts["sent"] == 20
    elif fault == "550-one-recipient":
        assert len(received) == 19 and status.bounced == 1
        with db.session_scope(cluster.settings) as session:
            bounced = session.scalar(select(Subscriber.status).where(
                Subscriber.email == emails[3]))
        assert bounced is SubscriberStatus.BOUNCED
    else:
        # The dropped message reached the server but was not confirmed: in doubt, not resent.
        assert len(received) == 20 and status.counts["in_doubt"] == 1


def test_redis_restarted_mid_run(cluster: Cluster, smtp_server: SMTPServer) -> None:
    private = PrivateRedis()
    private.start()
    try:
        cluster.settings = replace(cluster.settings, redis_url=private.url,
                                   celery_broker_url=private.url)
        day, emails = seed(cluster.settings, 80)
        smtp_server.data_delay = 0.02
        cluster.worker("w1", concurrency=1)
        cluster.tick()
        wait_for(lambda: len(smtp_server.received) >= 5, 60, "the run to start")
        private.stop()  # queued batches are lost with it: it keeps nothing on disk
        time.sleep(1)
        private.start()
        time.sleep(cluster.settings.claim_lease_seconds + 0.5)
        cluster.tick()  # the next tick plans whatever the lost tasks left
        wait_for(lambda: settled(cluster.settings, day, 80), 120, "all deliveries after restart")
        received = assert_exactly_once(cluster.settings, smtp_server, day, emails)
        assert len(received) == 80
    finally:
        cluster.stop()
        private.stop()
