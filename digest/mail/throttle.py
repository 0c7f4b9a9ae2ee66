"""Hold sending to a rate: GCRA limiters, one per process or one shared by every worker
through Redis, and `RateLimitedSender`, which waits for one before each message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .backend import OutboxRows, Sender, SendResult
from .message import OutgoingEmail

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    """Blocks in `acquire()` until one more send is allowed."""

    def acquire(self) -> None: ...

    def close(self) -> None: ...


class LocalRateLimiter(RateLimiter):
    """`rate_per_second` sends (after a first burst of `burst`) for the threads of this process.

    GCRA: a "theoretical arrival time" advances by one interval per send; a send may go when
    the clock is no more than burst - 1 intervals before it. Each caller reserves its slot
    under the lock and waits outside it, so waiting threads are served in order.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval, self.tolerance = _gcra_parameters(rate_per_second, burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = 0.0

    def reserve(self) -> float:
        """Take the next slot; return how many seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            self._tat = tat + self.interval
            return max(0.0, tat - self.tolerance - now)

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)

    def close(self) -> None:
        """Nothing to release."""


def _gcra_parameters(rate_per_second: float, burst: int | None) -> tuple[float, float]:
    """(seconds between sends, how many seconds early a send may go) for a rate and burst."""
    if not rate_per_second > 0:
        raise ValueError(f"a send rate must be above 0 per second, not {rate_per_second}")
    burst = 1 if burst is None else burst
    if burst < 1:
        raise ValueError(f"a burst must be at least 1 send, not {burst}")
    interval = 1.0 / rate_per_second
    return interval, (burst - 1) * interval


# GCRA as in LocalRateLimiter, atomic in Redis and on the Redis server's clock (TIME), so the
# clocks of the workers do not matter. Times are microseconds; they are written with %.0f
# because Lua's tostring keeps only 14 digits.
_GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local next_tat = tat + interval
local ttl_ms = math.ceil((next_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', string.format('%.0f', ttl_ms))
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
return math.floor(wait)
"""


class RedisRateLimiter(RateLimiter):
    """One send rate for every worker on every machine, kept in Redis under `key`.

    Celery's own rate_limit counts per worker, so it cannot hold a provider account to its
    messages per second. Each `acquire()` reserves the next slot with one atomic script call
    and sleeps until it comes. If Redis cannot be reached, sends are neither stopped nor let
    loose: this process limits itself locally at the same rate (so N workers may reach N times
    the rate meanwhile), logs a warning, and asks Redis again every `recheck_seconds`.
    """

    def __init__(
        self,
        redis_url: str,
        rate_per_second: float,
        key: str = "paper-digest:send-rate",
        burst: int | None = None,
        recheck_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        interval, tolerance = _gcra_parameters(rate_per_second, burst)
        self.key = key
        self.rate_per_second = rate_per_second
        self.recheck_seconds = recheck_seconds
        self._args = [f"{interval * 1e6:.3f}", f"{tolerance * 1e6:.3f}"]
        self._sleep = sleep
        self._local = LocalRateLimiter(rate_per_second, burst, sleep=sleep)
        # One quick retry lets a pooled connection that a Redis restart broke reconnect; the
        # library's default backoff would stall every send for seconds while Redis is down.
        self._redis = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=2.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
        )
        # A registered script is called by its hash and loaded again on NOSCRIPT (a restarted
        # or flushed Redis), so the script text crosses the network only when needed.
        self._script = self._redis.register_script(_GCRA_SCRIPT)
        kwargs = self._redis.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self.where = f"Redis at {where} db {kwargs.get('db', 0)}"  # no password in logs
        self._lock = threading.Lock()
        self._local_until: float | None = None  # monotonic time to ask Redis again

    @property
    def using_redis(self) -> bool:
        """False while Redis was unreachable and this process limits itself."""
        return self._local_until is None

    def acquire(self) -> None:
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)

    def _reserve(self) -> float:
        with self._lock:
            local_until = self._local_until
        if local_until is not None and time.monotonic() < local_until:
            return self._local.reserve()
        try:
            wait_us = self._script(keys=[self.key], args=self._args)
        except redis.RedisError as exc:
            self._fall_back(exc)
            return self._local.reserve()
        if local_until is not None:
            with self._lock:
                self._local_until = None
            log.info("%s answers again: the send rate is shared again", self.where)
        return int(wait_us) / 1e6

    def _fall_back(self, exc: redis.RedisError) -> None:
        with self._lock:
            first = self._local_until is None
            self._local_until = time.monotonic() + self.recheck_seconds
        if first:
            log.warning(
                "cannot use %s for the shared send rate (%s: %s); limiting this process to "
                "%g sends per second until it answers",
                self.where,
                type(exc).__name__,
                exc,
                self.rate_per_second,
            )

    def close(self) -> None:
        self._redis.close()


class RateLimitedSender(Sender):
    """Wait for `limiter` before each message to `inner`; closing closes both."""

    def __init__(self, inner: Sender, limiter: RateLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    def send(self, email: OutgoingEmail) -> SendResult:
        self.limiter.acquire()
        return self.inner.send(email)

    def outbox_rows(self) -> OutboxRows:
        return self.inner.outbox_rows()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.limiter.close()

