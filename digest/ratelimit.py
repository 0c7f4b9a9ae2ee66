"""Request rate limits shared by every web worker: fixed-window counters in Redis.

`hit(bucket, key, limit, window)` counts one attempt for `key` (a client address, an email
address) in the current window and says whether it is within `limit`. Keys are stored hashed,
so Redis never holds the addresses themselves. If Redis cannot be reached the attempt is
allowed, a warning logged, and the verdict says it was not counted: the subscribe form then
counts an address's attempts in the database (its sign-up requests of the last day), so an
outage of Redis does not open the door to mail-bombing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

KEY_PREFIX = "paper-digest:limit"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    count: int
    limit: int
    retry_after: int  # seconds until the window ends
    counted: bool = True  # False: Redis could not be reached, so nothing was counted


class RateLimited(Exception):
    """Too many attempts; `retry_after` seconds until the next window."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@functools.cache
def _client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url, socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), 1)
    )


def hit(
    redis_url: str,
    bucket: str,
    key: str,
    limit: int,
    window_seconds: int,
    now: float | None = None,
) -> Verdict:
    """Count one attempt for `key` in `bucket`; allowed while the window's count <= limit."""
    now = time.time() if now is None else now
    window = int(now // window_seconds)
    retry_after = max(1, int((window + 1) * window_seconds - now))
    if limit <= 0:
        return Verdict(True, 0, limit, retry_after)  # 0 turns the limit off
    digest = hashlib.sha256(key.strip().lower().encode("utf-8")).hexdigest()[:32]
    name = f"{KEY_PREFIX}:{bucket}:{window}:{digest}"
    try:
        pipe = _client(redis_url).pipeline()
        pipe.incr(name)
        pipe.expire(name, window_seconds + 5)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("rate limit %s not enforced: cannot use Redis (%s)", bucket, exc)
        return Verdict(True, 0, limit, retry_after, counted=False)
    return Verdict(count <= limit, count, limit, retry_after)
