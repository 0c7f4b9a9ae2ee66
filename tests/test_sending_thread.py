"""A worker composes its next batch while the last one is sent (`pipeline.SendingThread`),
and what a crash can leave in doubt does not widen: at most one window is SENDING at any
moment, and a process killed between windows leaves a ledger the recovery settles. Both
databases, a real SMTP server, a real `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import db
from digest.journal import resolve_abandoned
from digest.models import Delivery, DeliveryStatus, Subscriber
from digest.pipeline import SENDING, plan_due_batches, send_planned_batch
from digest.settings import Settings

from .factories import make_subscriber
from .smtp_server import SMTPServer
from .test_pipeline import seed_papers

DUE = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)  # everyone's send hour has come


@pytest.fixture
def smtp(settings: Settings, smtp_server: SMTPServer) -> Iterator[Settings]:
    yield replace(
        settings,
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        min_relevance=0.05,
        batch_size=20,
        ledger_window=5,
        smtp_connections=2,
        send_rate_per_second=0.0,
    )
    SENDING.finish()  # nothing of this test's is left to send into the next one


def readers(session: Session, n: int) -> list[str]:
    seed_papers(session)
    emails = [f"r{k:03d}@example.org" for k in range(n)]
    for email in emails:
        make_subscriber(session, email=email, topics="LoRA")
    session.commit()
    return emails


def by_status(settings: Settings, ids: list[int] | None = None) -> Counter[str]:
    with db.session_scope(settings) as session:
        query = select(Delivery.status, func.count()).group_by(Delivery.status)
        if ids is not None:
            query = query.where(Delivery.subscriber_id.in_(ids))
        return Counter({status.value: n for status, n in session.execute(query)})


class SendingWatch:
    """The most rows SENDING at once, read from the ledger every few milliseconds."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.most, self._stop = settings, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def __enter__(self) -> SendingWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.most = max(self.most, by_status(self.settings)["sending"])


def test_the_next_batch_is_composed_while_the_last_one_is_sent(
    session: Session, smtp: Settings, smtp_server: SMTPServer
) -> None:
    emails = readers(session, 40)
    smtp_server.data_delay = 0.05  # 20 digests over 2 connections: half a second on the wire
    [(day, first), (_, second)] = plan_due_batches(smtp, DUE)
    with SendingWatch(smtp) as watch:
        composed = send_planned_batch(smtp, day, first)
        assert len(smtp_server.received) < len(first), "the task waited for its batch to go"
        send_planned_batch(smtp, day, second)
        # The second batch is claimed and composed while the first is still going out.
        assert by_status(smtp, first)["sent"] < len(first)
        assert by_status(smtp, second) == Counter(claimed=len(second))
        SENDING.finish()
    assert composed.skipped.total() == 0 and not composed.failed
    got = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert got == Counter(emails), "everyone gets one digest"
    assert by_status(smtp) == Counter(sent=40)
    # One thread marks windows SENDING, one after another: never two windows at once.
    assert 0 < watch.most <= smtp.ledger_window


WORKER = """
import sys
from datetime import datetime
from digest.pipeline import SENDING, plan_due_batches, send_planned_batch
from digest.settings import Settings
settings = Settings.from_env()
for day, ids in list(plan_due_batches(settings, datetime.fromisoformat(sys.argv[1]))):
    send_planned_batch(settings, day, ids)
SENDING.finish()
"""


def test_a_worker_killed_while_it_sends_one_batch_and_composes_the_next_leaves_only_the_window_in_flight(  # noqa: E501
    session: Session, smtp: Settings, smtp_server: SMTPServer
) -> None:
    emails = readers(session, 80)
    smtp_server.data_delay = 0.03  # slow enough to kill it between and inside windows
    env = {
        **os.environ,
        "DATABASE_URL": smtp.database_url,
        "DATA_DIR": str(smtp.data_dir),
        "MAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.smtp_port),
        "SECRET_KEY": "test-secret-key",
        "PUBLIC_BASE_URL": smtp.public_base_url,
        "MAIL_FROM": smtp.mail_from,
        "LIST_ID": smtp.list_id,
        "MIN_RELEVANCE": "0.05",
        "LOOKBACK_DAYS": str(smtp.lookback_days),
        "SMTP_CONNECTIONS": "2",
        "LEDGER_WINDOW": "5",
        "BATCH_SIZE": "20",
        "SEND_RATE_PER_SECOND": "0",
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, DUE.isoformat()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < 27 and time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed"
        time.sleep(0.002)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(0.2)  # anything in flight reaches the server, or not

    left = by_status(smtp)
    assert left["sending"] <= smtp.ledger_window, left  # the one window going out, no more
    recovery = resolve_abandoned(session, smtp, DUE)  # its journals: settled at once
    assert recovery.in_doubt <= smtp.smtp_connections
    settled = by_status(smtp)
    assert settled["sending"] == 0 and settled["sent"] >= 25, settled
    # The rest, composed or not yet, is planned again and sent once.
    for day, ids in plan_due_batches(smtp, DUE):
        send_planned_batch(smtp, day, ids)
    SENDING.finish()
    got = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert max(got.values()) == 1, "a reader got a digest twice"
    final = by_status(smtp)
    assert final["sent"] + final["in_doubt"] == len(emails), final
    with db.session_scope(smtp) as check:
        sent = set(
            check.scalars(
                select(Subscriber.email)
                .join(Delivery)
                .where(Delivery.status == DeliveryStatus.SENT)
            )
        )
    assert all(got[email] == 1 for email in sent)
