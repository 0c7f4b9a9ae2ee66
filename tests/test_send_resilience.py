"""Retries with backoff and one send rate shared through Redis, against real servers.

SMTP is the aiosmtpd server on loopback; Redis is the one on 127.0.0.1:6379 (database 14, one
key per test, deleted afterwards; TEST_REDIS_URL points elsewhere) plus, for the restart, a
private redis-server started and killed by the test.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from digest.send import (
    ConsoleSender,
    FileSender,
    ParallelSender,
    RateLimitedSender,
    RedisRateLimiter,
    RetryingSender,
    Sender,
    SendOutcome,
    SMTPSender,
    open_sender,
)
from digest.settings import PROJECT_DIR, Settings

from .conftest import make_settings
from .smtp_server import SMTPServer
from .test_send import make_email

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
TRY_LATER = "451 4.3.0 Try again later"


class Sleeps(list[float]):
    """Stands in for time.sleep: records each backoff instead of waiting it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def retrying(settings: Settings, sleeps: Sleeps, attempts: int = 4, **kwargs: object) -> Sender:
    options: dict[str, object] = dict(base_delay=0.5, max_delay=8.0, random=lambda: 1.0)
    options.update(kwargs)
    return RetryingSender(SMTPSender(settings), attempts, sleep=sleeps, **options)  # type: ignore[arg-type]


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


# --- The shared send rate -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for these tests but {REDIS_URL} is unreachable: {exc}")
    yield client
    client.close()


@pytest.fixture
def rate_key(redis_client: redis.Redis) -> Iterator[str]:
    key = f"paper-digest-test:send-rate:{uuid.uuid4().hex}"
    yield key
    redis_client.delete(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_OTHER_WORKER = """
import sys, time
from digest.send import RedisRateLimiter

limiter = RedisRateLimiter(sys.argv[1], 20, key=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
started = time.monotonic()
for _ in range(20):
    limiter.acquire()
print(time.monotonic() - started, flush=True)
"""


def test_the_send_rate_is_shared_by_threads_and_processes(rate_key: str) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", _OTHER_WORKER, REDIS_URL, rate_key],
        cwd=PROJECT_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "ready"
        limiter = RedisRateLimiter(REDIS_URL, 20, key=rate_key)

        def twenty_sends() -> None:
            for _ in range(20):
                limiter.acquire()

        threads = [threading.Thread(target=twenty_sends) for _ in range(2)]
        started = time.monotonic()
        worker.stdin.write("go\n")
        worker.stdin.flush()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        other_elapsed = float(worker.stdout.readline())
        elapsed = time.monotonic() - started
        assert worker.wait(timeout=10) == 0
    finally:
        worker.kill()
        worker.wait()
    limiter.close()

    # 60 sends at 20 per second: 59 intervals of 50 ms, whoever sends them. Counted per
    # worker, this process's 40 would take 2 s and the other's 20 one second, side by side.
    assert 2.4 < elapsed < 4.0, elapsed
    assert other_elapsed > 1.5, other_elapsed  # its sends were spread among ours


def test_unreachable_redis_falls_back_to_a_local_limit(
    rate_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/14", 20, key=rate_key)
    caplog.set_level(logging.WARNING, logger="digest.send")

    started = time.monotonic()
    for _ in range(21):
        limiter.acquire()
    elapsed = time.monotonic() - started

    assert 0.9 < elapsed < 1.6, elapsed  # still 20 per second, not unthrottled
    assert not limiter.using_redis
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not once per send
    assert f"cannot use Redis at 127.0.0.1:{port} db 14" in warnings[0]
    assert "limiting this process to 20 sends per second" in warnings[0]


class PrivateRedis:
    """A redis-server of the test's own, on a spare port, that the test may kill."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_the_limiter_survives_a_redis_restart(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter(private_redis.url, 50, key="send-rate", recheck_seconds=0)
    for _ in range(3):
        limiter.acquire()
    assert limiter.using_redis and private_redis.client().exists("send-rate")

    private_redis.kill()
    limiter.acquire()  # no Redis: the batch goes on under the local limit
    assert not limiter.using_redis
    assert "cannot use Redis" in caplog.text

    private_redis.start()  # empty: no key, no script
    assert not private_redis.client().script_exists(limiter._script.sha)[0]
    started = time.monotonic()
    for _ in range(11):
        limiter.acquire()
    elapsed = time.monotonic() - started

    assert limiter.using_redis
    assert private_redis.client().script_exists(limiter._script.sha)[0]  # loaded again
    assert private_redis.client().exists("send-rate")
    assert 0.15 < elapsed < 1.0, elapsed  # 10 intervals of 20 ms at least
    limiter.close()


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
