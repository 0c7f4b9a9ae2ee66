"""Fixtures of the mail tests: the real Redis the shared send rate lives in."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for these tests but {REDIS_URL} is unreachable: {exc}")
    yield client
    client.close()

