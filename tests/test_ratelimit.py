"""Rate limits: fixed-window counters in a real Redis, shared by every web worker."""

from __future__ import annotations

import redis

from digest import ratelimit


def test_counts_per_key_within_a_window(redis_url: str) -> None:
    now = 1_800_000_000.0
    verdicts = [ratelimit.hit(redis_url, "test", "198.51.100.1", 3, 3600, now) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].count == 4 and 0 < verdicts[-1].retry_after <= 3600
    assert ratelimit.hit(redis_url, "test", "198.51.100.2", 3, 3600, now).allowed
    assert ratelimit.hit(redis_url, "other", "198.51.100.1", 3, 3600, now).allowed
    assert ratelimit.hit(redis_url, "test", "198.51.100.1", 3, 3600, now + 3600).allowed


def test_keys_are_stored_hashed_and_expire(redis_url: str) -> None:
    ratelimit.hit(redis_url, "test", "Ada@Example.org", 3, 60)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{ratelimit.KEY_PREFIX}:test:*"))
    assert len(keys) == 1 and b"example" not in keys[0].lower()
    assert 0 < client.ttl(keys[0]) <= 65
    assert ratelimit.hit(redis_url, "test", "ada@example.org", 3, 60).count == 2  # case-blind


def test_a_limit_of_zero_is_off_and_redis_down_lets_requests_through() -> None:
    assert ratelimit.hit("redis://127.0.0.1:1/0", "test", "x", 0, 60).allowed
    down = ratelimit.hit("redis://127.0.0.1:1/0", "test", "x", 1, 60)
    assert down.allowed and down.count == 0
