"""A crash loses no one's digest: the send journal settles what a dead attempt left, only the
messages in flight stay in doubt, and the operator decides about those. Both databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from digest import ledger
from digest.cli import main
from digest.journal import (
    ACCEPTED,
    HANDING,
    REFUSED,
    Journal,
    journal_dir,
    read_journal,
    resolve_abandoned,
)
from digest.mail.outbox import is_message_name, outbox_entries
from digest.models import Delivery, DeliveryStatus, Subscriber
from digest.pipeline import plan_due_batches, run_day
from digest.settings import Settings
from digest.status import day_status

from .factories import make_subscriber
from .smtp_server import SMTPServer
from .test_pipeline import DAY, seed_papers

NOW = datetime(2026, 11, 23, 8, tzinfo=timezone.utc)


def statuses(session: Session) -> dict[str, DeliveryStatus]:
    session.expire_all()
    return dict(session.execute(
        select(Subscriber.email, Delivery.status).join(Delivery)
    ).all())


def dead_attempt(session: Session, settings: Settings, emails: list[str]) -> tuple[str, dict]:
    """Plan and claim a batch for these readers, mark it SENDING, as a worker would before it
    hands the window over; the attempt then 'dies' (its journal lock is let go)."""
    for email in emails:
        make_subscriber(session, email=email, topics="LoRA")
    session.commit()
    [(day, ids)] = plan_due_batches(settings, datetime(2026, 11, 23, 7, tzinfo=timezone.utc))
    token = uuid.uuid4().hex
    ledger.claim(session, day, ids, token, NOW, 600)
    ledger.start_sending(session, day, token, ids, NOW, 600)
    message_ids = dict(session.execute(
        select(Subscriber.email, Delivery.message_id).join(Delivery)
    ).all())
    return token, message_ids


@pytest.fixture
def smtp(settings: Settings, smtp_server: SMTPServer) -> Settings:
    return replace(settings, mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, min_relevance=0.05)


def test_a_dead_attempts_journal_settles_every_row_and_only_in_flight_stays_in_doubt(
    session: Session, smtp: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    emails = ["accepted@example.org", "inflight@example.org", "never@example.org",
              "refused@example.org"]
    token, mids = dead_attempt(session, smtp, emails)
    journal = Journal(smtp, token)
    journal.handing(mids["accepted@example.org"])
    journal.answered(mids["accepted@example.org"], ACCEPTED)
    journal.handing(mids["inflight@example.org"])  # killed before the server answered
    journal.handing(mids["refused@example.org"])
    journal.answered(mids["refused@example.org"], REFUSED)
    journal.close(remove=False)  # the process is gone: nothing holds the lock

    # Long before the lease ends: a dead attempt on this host is settled at once.
    recovery = resolve_abandoned(session, smtp, NOW + timedelta(seconds=5))
    assert (recovery.sent, recovery.in_doubt, recovery.replanned, recovery.failed) == (1, 1, 1, 1)
    assert statuses(session) == {
        "accepted@example.org": DeliveryStatus.SENT,
        "inflight@example.org": DeliveryStatus.IN_DOUBT,
        "never@example.org": DeliveryStatus.CLAIMED,
        "refused@example.org": DeliveryStatus.FAILED,
    }
    # The rerun sends the one never handed over, and nothing else.
    report = run_day(smtp, DAY)
    assert report.sent == ["never@example.org"]
    assert [r.rcpt_tos for r in smtp_server.received] == [["never@example.org"]]
    # The journal stays while a row of its attempt is in doubt; settled, it goes.
    assert (journal_dir(smtp) / f"{token}.log").exists()
    runner = CliRunner()
    env = {"DATABASE_URL": smtp.database_url, "DATA_DIR": str(smtp.data_dir),
           "MAIL_BACKEND": "smtp", "SECRET_KEY": "test-secret-key"}
    listed = runner.invoke(main, ["in-doubt", "list"], env=env)
    assert listed.exit_code == 0 and "inflight@example.org" in listed.output, listed.output
    marked = runner.invoke(main, ["in-doubt", "mark-sent", "inflight@example.org"], env=env)
    assert marked.exit_code == 0 and "1 marked sent" in marked.output, marked.output
    resolve_abandoned(session, smtp, NOW + timedelta(seconds=10))
    assert not (journal_dir(smtp) / f"{token}.log").exists()


def test_a_live_attempt_is_left_alone_even_past_its_lease(
    session: Session, smtp: Settings
) -> None:
    seed_papers(session)
    token, mids = dead_attempt(session, smtp, ["slow@example.org"])
    journal = Journal(smtp, token)  # held: the worker is alive, only slow
    try:
        journal.handing(mids["slow@example.org"])
        resolve_abandoned(session, smtp, NOW + timedelta(hours=1))
        assert statuses(session) == {"slow@example.org": DeliveryStatus.SENDING}
    finally:
        journal.close()


def test_without_a_journal_smtp_cannot_tell_and_the_operator_resends(
    session: Session, smtp: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    dead_attempt(session, smtp, ["lost@example.org"])  # its host, and journal, are gone
    assert resolve_abandoned(session, smtp, NOW + timedelta(seconds=5)).total == 0  # leased
    resolve_abandoned(session, smtp, NOW + timedelta(hours=1))
    assert statuses(session) == {"lost@example.org": DeliveryStatus.IN_DOUBT}
    assert run_day(smtp, DAY).sent == []  # never resent on its own
    env = {"DATABASE_URL": smtp.database_url, "DATA_DIR": str(smtp.data_dir)}
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--date", DAY.isoformat()], env=env)
    assert "1 in doubt" in status.output and "digest in-doubt" in status.output
    refused = runner.invoke(main, ["in-doubt", "resend"], env=env)
    assert refused.exit_code != 0 and "--all" in refused.output
    unknown = runner.invoke(main, ["in-doubt", "resend", "nobody@example.org"], env=env)
    assert unknown.exit_code != 0 and "nobody@example.org" in unknown.output
    resent = runner.invoke(main, ["in-doubt", "resend", "--all", "--date", DAY.isoformat()],
                           env=env)
    assert resent.exit_code == 0 and "1 planned again" in resent.output, resent.output
    assert run_day(smtp, DAY).sent == ["lost@example.org"]
    assert len(smtp_server.received) == 1


def test_the_file_outbox_tells_exactly_what_was_written(
    session: Session, settings: Settings
) -> None:
    seed_papers(session)
    for email in ("a@example.org", "b@example.org", "c@example.org"):
        make_subscriber(session, email=email, topics="LoRA")
    session.commit()
    assert len(run_day(settings, DAY).sent) == 3
    # As if the run had died after writing a and b, in the middle of writing c: c's file is
    # only a hidden partial write (named as before ".part"), and its journal says "handing".
    [c_file] = Path(settings.outbox_dir).glob("*/*c@example.org*.eml")
    c_file.rename(c_file.with_name(f".tmp-1-2-{c_file.name}"))
    c_id = session.scalar(select(Delivery.message_id).join(Subscriber).where(
        Subscriber.email == "c@example.org"))
    token = "0" * 32
    journal = Journal(settings, token)
    journal.handing(str(c_id))
    journal.close(remove=False)
    session.execute(update(Delivery).values(status=DeliveryStatus.SENDING, claim_token=token,
                                            lease_until=NOW - timedelta(hours=1)))
    session.commit()
    recovery = resolve_abandoned(session, settings, NOW)
    assert (recovery.sent, recovery.replanned, recovery.in_doubt) == (2, 1, 0)
    assert run_day(settings, DAY).sent == ["c@example.org"]
    names = [p.name for p in Path(settings.outbox_dir).glob("*/*.eml")]
    assert len([name for name in names if is_message_name(name)]) == 3
    # The outbox index lists the three messages, not the partial write.
    entries, count = outbox_entries(Path(settings.outbox_dir))
    assert count == 3 and {e.to for e in entries} == {"a@example.org", "b@example.org",
                                                      "c@example.org"}


def test_read_journal_keeps_the_first_answer_and_ignores_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_text(f"{HANDING} <a>\n{ACCEPTED} <a>\n{HANDING} <a>\n{HANDING} <b>\n+ <c")
    assert read_journal(path) == {"<a>": ACCEPTED, "<b>": HANDING, "<c": ACCEPTED}


# --- a real kill -9 in the middle of a day --------------------------------------------------


def test_a_run_killed_mid_window_leaves_in_doubt_only_the_messages_in_flight(
    session: Session, smtp: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    readers = [f"r{n:03d}@example.org" for n in range(120)]
    for email in readers:
        make_subscriber(session, email=email, topics="LoRA")
    session.commit()
    smtp_server.data_delay = 0.03  # slow enough to kill it mid-window
    env = {**os.environ, "DATABASE_URL": smtp.database_url, "DATA_DIR": str(smtp.data_dir),
           "MAIL_BACKEND": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.smtp_port),
           "SECRET_KEY": "test-secret-key", "PUBLIC_BASE_URL": smtp.public_base_url,
           "MAIL_FROM": smtp.mail_from, "LIST_ID": smtp.list_id, "MIN_RELEVANCE": "0.05",
           "LOOKBACK_DAYS": str(smtp.lookback_days), "SMTP_CONNECTIONS": "2",
           "LEDGER_WINDOW": "25", "RUN_JOBS": "1", "SEND_RATE_PER_SECOND": "0"}
    run = subprocess.Popen([sys.executable, "-m", "digest.cli", "run", "--date", DAY.isoformat()],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < 37 and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    time.sleep(0.2)  # anything in flight reaches the server, or not
    in_flight_cap = smtp.smtp_connections

    rerun = run_day(smtp, DAY)  # right away: no lease to wait for
    got = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert max(got.values()) == 1, "a reader got a digest twice"
    status = day_status(smtp, DAY)
    doubtful = status.counts["in_doubt"]
    assert doubtful <= in_flight_cap, status.lines()
    assert status.counts["sent"] + doubtful == len(readers), status.lines()
    # Everyone not in doubt got exactly one digest; those in doubt at most one.
    final = statuses(session)
    for email in readers:
        if final[email] is DeliveryStatus.SENT:
            assert got[email] == 1, email
    assert set(rerun.sent).isdisjoint(e for e in readers if got[e] and e not in rerun.sent)


def test_a_file_outbox_run_killed_mid_batch_is_settled_exactly_and_nobody_is_in_doubt(
    session: Session, settings: Settings
) -> None:
    """The file backend sends a whole batch as one window (the outbox settles it exactly), so
    a kill -9 anywhere in it leaves nothing in doubt: the rerun sends each reader the rest."""
    seed_papers(session)
    readers = [f"f{n:03d}@example.org" for n in range(400)]
    for email in readers:
        make_subscriber(session, email=email, topics="LoRA")
    session.commit()
    outbox = Path(settings.outbox_dir)
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "DATA_DIR": str(settings.data_dir), "OUTBOX_DIR": str(outbox),
           "MAIL_BACKEND": "file", "SECRET_KEY": "test-secret-key",
           "PUBLIC_BASE_URL": settings.public_base_url, "MAIL_FROM": settings.mail_from,
           "LIST_ID": settings.list_id, "MIN_RELEVANCE": "0.05",
           "LOOKBACK_DAYS": str(settings.lookback_days), "LEDGER_WINDOW": "5", "RUN_JOBS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "digest.cli", "run", "--date", DAY.isoformat()],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def written() -> list[str]:  # whole messages, not a write the kill cut short
        return [p.name for p in outbox.glob("*/*.eml") if not p.name.startswith(".")]

    deadline = time.monotonic() + 60
    while len(written()) < 150 and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.002)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    before = len(written())
    assert 150 <= before < len(readers), "killed too late to test anything"

    rerun = run_day(settings, DAY)
    status = day_status(settings, DAY)
    assert status.counts["in_doubt"] == 0, status.lines()
    assert status.counts["sent"] == len(readers), status.lines()
    files = Counter(name.split("--")[1] for name in written())
    assert sorted(files) == readers, sorted(set(readers) ^ set(files))[:5]
    assert set(files.values()) == {1}, files.most_common(3)
    # The rerun wrote only what the killed run had not: no reader got a second message.
    assert len(rerun.sent) == len(readers) - before
