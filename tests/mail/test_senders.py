"""Choosing and composing backends: open_sender and its wrappers (retries with backoff,
the shared rate), the console backend, and a worker's session kept from batch to batch."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from digest.mail.backend import Sender, SendOutcome
from digest.mail.console import ConsoleSender
from digest.mail.outbox import FileSender
from digest.mail.senders import (
    ParallelSender,
    RetryingSender,
    batch_sender,
    close_kept_sender,
    open_sender,
)
from digest.mail.smtp import SMTPSender
from digest.mail.throttle import RateLimitedSender, RedisRateLimiter
from digest.settings import Settings

from ..conftest import make_settings
from ..smtp_server import SMTPServer
from .conftest import REDIS_URL
from .emails import make_email

TRY_LATER = "451 4.3.0 Try again later"


class Sleeps(list[float]):
    """Stands in for time.sleep: records each backoff instead of waiting it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def retrying(settings: Settings, sleeps: Sleeps, attempts: int = 4, **kwargs: object) -> Sender:
    options: dict[str, object] = dict(base_delay=0.5, max_delay=8.0, random=lambda: 1.0)
    options.update(kwargs)
    return RetryingSender(SMTPSender(settings), attempts, sleep=sleeps, **options)  # type: ignore[arg-type]




# --- Console and the choice of backend ----------------------------------------------------


def test_console_sender_prints_a_summary(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_backend="console")
    out = io.StringIO()
    with open_sender(settings, stream=out) as sender:
        result = sender.send(make_email(settings))

    printed = out.getvalue()
    assert result.sent
    assert "reader1@example.org" in printed
    assert "Subject: Your papers for 23 Nov: β-OPSD and 1 more" in printed
    assert "Hello Jörg," in printed


@pytest.mark.parametrize(
    ("backend", "cls"), [("smtp", SMTPSender), ("file", FileSender), ("console", ConsoleSender)]
)
def test_open_sender_follows_mail_backend(tmp_path: Path, backend: str, cls: type) -> None:
    # No retry wrapper: this test is about the backend itself (see test_send_resilience.py).
    sender = open_sender(make_settings(tmp_path, mail_backend=backend, smtp_retry_attempts=1,
                                       smtp_connections=1))
    assert isinstance(sender, cls)
    sender.close()


# --- A worker's session, kept from batch to batch ----------------------------------------


@pytest.fixture
def kept_settings(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Settings]:
    yield make_settings(tmp_path, mail_backend="smtp", smtp_host="127.0.0.1",
                        smtp_port=smtp_server.port, smtp_connections=2)
    close_kept_sender()


def send_batch_of(settings: Settings, numbers: range) -> list[SendOutcome]:
    with batch_sender(settings) as sender:
        return [r.outcome for r in sender.send_many([make_email(settings, n) for n in numbers])]


def test_a_workers_next_batch_reuses_its_smtp_connections(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    for start in range(0, 50, 10):
        assert send_batch_of(kept_settings, range(start + 1, start + 11)) == [SendOutcome.SENT] * 10

    assert len(smtp_server.received) == 50
    assert 1 <= smtp_server.connections <= 2  # the first batch's, never reopened


def test_after_a_temporary_failure_the_next_batch_starts_afresh(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    settings = replace(kept_settings, smtp_retry_attempts=1)  # the failure reaches us
    assert send_batch_of(settings, range(1, 3)) == [SendOutcome.SENT] * 2
    opened = smtp_server.connections
    smtp_server.fail_next.append("451 4.3.0 Try again later")

    assert SendOutcome.TEMPORARY in send_batch_of(settings, range(3, 5))
    assert send_batch_of(settings, range(5, 7)) == [SendOutcome.SENT] * 2
    assert smtp_server.connections > opened


def test_an_idle_kept_session_is_closed_and_a_new_one_opened(
    kept_settings: Settings, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert send_batch_of(kept_settings, range(1, 2)) == [SendOutcome.SENT]
    monkeypatch.setattr("digest.mail.senders.KEEP_IDLE_SECONDS", 0.0)

    assert send_batch_of(kept_settings, range(2, 3)) == [SendOutcome.SENT]
    assert smtp_server.connections == 2


def test_a_server_that_dropped_a_kept_connection_costs_no_message(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    settings = replace(kept_settings, smtp_connections=1)
    assert send_batch_of(settings, range(1, 2)) == [SendOutcome.SENT]
    smtp_server.mail_replies.append("421 4.4.2 Idle timeout, closing")

    assert send_batch_of(settings, range(2, 4)) == [SendOutcome.SENT] * 2
    assert [r.rcpt_tos for r in smtp_server.received] == [
        [f"reader{n}@example.org"] for n in (1, 2, 3)]


def test_a_forked_child_never_uses_its_parents_connections(
    kept_settings: Settings, smtp_server: SMTPServer
) -> None:
    import multiprocessing

    assert send_batch_of(kept_settings, range(1, 2)) == [SendOutcome.SENT]
    context = multiprocessing.get_context("fork")
    child = context.Process(target=send_batch_of, args=(kept_settings, range(2, 3)))
    child.start()
    child.join(30)

    assert child.exitcode == 0
    assert send_batch_of(kept_settings, range(3, 4)) == [SendOutcome.SENT]
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        f"reader{n}@example.org" for n in (1, 2, 3)]
    assert smtp_server.connections == 2  # the parent's, kept; the child's own


def test_other_backends_are_opened_and_closed_per_batch(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_backend="file")
    send_batch_of(settings, range(1, 3))

    assert (settings.outbox_dir / "index.html").exists()  # written on close, as ever
    assert len(list(settings.outbox_dir.glob("*/*.eml"))) == 2


# --- Retries ------------------------------------------------------------------------------


def test_try_later_twice_then_accepted_is_sent_on_the_third_attempt(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.fail_next.extend([TRY_LATER] * 2)
    sleeps = Sleeps()
    jitter = iter([0.5, 0.75])
    with retrying(smtp_settings, sleeps, random=jitter.__next__) as sender:
        result = sender.send(make_email(smtp_settings))

    assert result.outcome is SendOutcome.SENT
    assert result.detail == "250 Message accepted for delivery (3 attempts)"
    assert [r.rcpt_tos for r in smtp_server.received] == [["reader1@example.org"]]
    assert sleeps == [0.5 * 0.5, 0.75 * 1.0]  # jitter times the growing ceiling


def test_try_later_forever_is_temporary_after_every_attempt(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.fail_next.extend([TRY_LATER] * 10)
    sleeps = Sleeps()
    with retrying(smtp_settings, sleeps, attempts=6, max_delay=3.0) as sender:
        result = sender.send(make_email(smtp_settings))

    assert result.outcome is SendOutcome.TEMPORARY and not result.in_doubt
    assert result.detail == f"{TRY_LATER} (6 attempts)"
    assert len(smtp_server.fail_next) == 10 - 6 and smtp_server.received == []
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]  # doubling, then held at max_delay


def test_refused_recipient_is_permanent_at_once(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.reject_recipients.add("reader1@example.org")
    sleeps = Sleeps()
    with retrying(smtp_settings, sleeps) as sender:
        refused = sender.send(make_email(smtp_settings, 1))
        after = sender.send(make_email(smtp_settings, 2))

    assert refused.outcome is SendOutcome.PERMANENT
    assert refused.detail == "550 5.1.1 No such user here (1 attempt)"
    assert sleeps == []
    assert after.sent and [r.rcpt_tos for r in smtp_server.received] == [["reader2@example.org"]]


def test_no_reply_to_data_is_in_doubt_and_never_resent(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.drop_next_data = 1  # the server takes the message, then hangs up
    sleeps = Sleeps()
    with retrying(smtp_settings, sleeps) as sender:
        result = sender.send(make_email(smtp_settings))

    assert result.outcome is SendOutcome.TEMPORARY and result.in_doubt
    assert result.detail.endswith("(1 attempt)")
    assert sleeps == [] and len(smtp_server.received) == 1


def test_connection_lost_twice_is_retried_on_a_new_connection(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.drop_next_mail = 2  # more than SMTPSender's own reconnect can absorb
    sleeps = Sleeps()
    with retrying(smtp_settings, sleeps) as sender:
        result = sender.send(make_email(smtp_settings))

    assert result.sent and result.detail.endswith("(2 attempts)")
    assert len(sleeps) == 1 and len(smtp_server.received) == 1


def test_unreachable_server_costs_no_backoff(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.stop()
    sleeps = Sleeps()
    with retrying(smtp_settings, sleeps) as sender:
        results = [sender.send(make_email(smtp_settings, n)) for n in (1, 2, 3)]

    # The whole session is down: waiting seconds per message would stall the batch for nothing.
    assert {r.outcome for r in results} == {SendOutcome.TEMPORARY}
    assert all(r.detail.endswith("(1 attempt)") for r in results)
    assert sleeps == []


def test_refused_sender_is_retried_only_if_the_refusal_is_temporary(
    smtp_server: SMTPServer, smtp_settings: Settings
) -> None:
    smtp_server.mail_replies.extend(["553 5.7.1 Sender address rejected", "451 4.7.1 Slow down"])
    sleeps = Sleeps()
    with retrying(smtp_settings, sleeps) as sender:
        refused = sender.send(make_email(smtp_settings, 1))
        assert refused.outcome is SendOutcome.TEMPORARY and sleeps == []
        slowed = sender.send(make_email(smtp_settings, 2))

    assert slowed.sent and slowed.detail.endswith("(2 attempts)") and len(sleeps) == 1
    assert [r.rcpt_tos for r in smtp_server.received] == [["reader2@example.org"]]



# --- Composition --------------------------------------------------------------------------


def chain(sender: Sender) -> list[type]:
    """The sender's classes from the outermost wrapper to the backend."""
    kinds = [type(sender)]
    while isinstance(sender, RetryingSender | RateLimitedSender):
        sender = sender.inner
        kinds.append(type(sender))
    return kinds


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (dict(mail_backend="smtp"), [ParallelSender]),  # two of the next, one per thread
        (dict(mail_backend="smtp", smtp_connections=1), [RetryingSender, SMTPSender]),
        (dict(mail_backend="smtp", smtp_connections=1, smtp_retry_attempts=1), [SMTPSender]),
        (
            dict(mail_backend="smtp", smtp_connections=1, send_rate_per_second=5.0),
            [RateLimitedSender, RetryingSender, SMTPSender],
        ),
        (dict(mail_backend="file"), [FileSender]),
        (dict(mail_backend="file", send_rate_per_second=5.0), [RateLimitedSender, FileSender]),
        (
            dict(mail_backend="console", send_rate_per_second=5.0),
            [RateLimitedSender, ConsoleSender],
        ),
    ],
)
def test_open_sender_composes_the_wrappers_the_settings_ask_for(
    tmp_path: Path, overrides: dict[str, object], expected: list[type]
) -> None:
    settings = make_settings(
        tmp_path,
        redis_url=REDIS_URL,
        smtp_retry_base_delay=0.25,
        smtp_retry_max_delay=4.0,
        **overrides,
    )
    with open_sender(settings) as sender:
        assert chain(sender) == expected
        if isinstance(sender, RateLimitedSender):
            assert isinstance(sender.limiter, RedisRateLimiter)
            assert sender.limiter.rate_per_second == 5.0
            sender = sender.inner
        if isinstance(sender, RetryingSender):
            assert (sender.attempts, sender.base_delay, sender.max_delay) == (4, 0.25, 4.0)


@pytest.fixture
def default_key(redis_client: redis.Redis) -> Iterator[str]:
    """open_sender's key, in the tests' own database."""
    key = "paper-digest:send-rate"
    redis_client.delete(key)
    yield key
    redis_client.delete(key)


def test_composed_sender_retries_and_shares_the_rate_end_to_end(
    smtp_server: SMTPServer,
    smtp_settings: Settings,
    redis_client: redis.Redis,
    default_key: str,
) -> None:
    settings = replace(
        smtp_settings, redis_url=REDIS_URL, send_rate_per_second=20.0, smtp_retry_base_delay=0.01
    )
    smtp_server.fail_next.append(TRY_LATER)

    started = time.monotonic()
    with open_sender(settings) as sender:
        results = [sender.send(make_email(settings, n)) for n in range(1, 6)]
    elapsed = time.monotonic() - started

    assert [r.outcome for r in results] == [SendOutcome.SENT] * 5
    assert results[0].detail.endswith("(2 attempts)")
    assert len(smtp_server.received) == 5
    assert redis_client.pttl(default_key) > 0  # the slots were taken in Redis
    assert elapsed > 4 * 0.05 * 0.9  # five sends at 20 per second


def test_closing_the_wrapper_closes_the_backend(tmp_path: Path, default_key: str) -> None:
    settings = make_settings(tmp_path, redis_url=REDIS_URL, send_rate_per_second=50.0)
    with open_sender(settings) as sender:
        sender.send(make_email(settings))

    # FileSender writes the outbox index when it is closed.
    assert "reader1@example.org" in (settings.outbox_dir / "index.html").read_text()
