"""One send rate shared through Redis by threads and processes, against the real Redis on
loopback (database 14, one key per test, deleted afterwards; TEST_REDIS_URL points
elsewhere) and, for the restart, a private redis-server started and killed by the test."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from digest.mail.throttle import RedisRateLimiter
from digest.settings import PROJECT_DIR

from .conftest import REDIS_URL


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
from digest.mail.throttle import RedisRateLimiter

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
    caplog.set_level(logging.WARNING, logger="digest.mail.throttle")

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


