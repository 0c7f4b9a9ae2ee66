"""Synthetic days for the benchmarks: subscribers with realistic topic profiles and papers made
from real abstracts (`digest bench`, bench/retention.py), and a throwaway PostgreSQL database."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from sqlalchemy import Connection, create_engine, insert, text

from .. import db
from ..models import Subscriber, SubscriberStatus, TopicProfile
from ..prepare import forget_prepared_days
from ..settings import Settings

TOPIC_PHRASES = [
    "LoRA", "parameter-efficient fine-tuning", "low-rank adaptation", "activation sparsity",
    "mixture of experts", "diffusion models", "text-to-image generation", "video generation",
    "vision transformers", "object detection", "semantic segmentation", "3D reconstruction",
    "neural radiance fields", "reinforcement learning", "RLHF", "reward models",
    "chain-of-thought reasoning", "mathematical reasoning", "code generation",
    "retrieval-augmented generation", "RAG", "long context", "efficient attention",
    "state space models", "quantization", "pruning", "knowledge distillation",
    "speech recognition", "text-to-speech", "audio generation", "multimodal LLMs",
    "vision-language models", "visual question answering", "graph neural networks",
    "molecular property prediction", "protein structure", "time series forecasting",
    "recommender systems", "federated learning", "differential privacy", "adversarial robustness",
    "jailbreak attacks", "AI safety", "alignment", "instruction tuning", "in-context learning",
    "tokenization", "machine translation", "question answering", "summarization",
    "robotics", "embodied agents", "LLM agents", "tool use", "world models",
    "self-supervised learning", "contrastive learning", "continual learning",
    "medical imaging", "image editing",
]


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Asia/Kolkata",
         "America/Los_Angeles", "Europe/London", "Australia/Sydney"]


def sample_texts() -> list[tuple[str, str]]:
    """Real (title, abstract) pairs from the bundled sample corpus."""
    from ..ingest import SAMPLE_PAPERS, parse

    result = parse(SAMPLE_PAPERS.read_bytes(), "page", str(SAMPLE_PAPERS))
    return [(r.title, r.abstract) for r in result.records]


def synthetic_papers(
    m: int, rng: random.Random, now: datetime, offset: int = 0
) -> list[dict[str, Any]]:
    """M papers whose text mixes sentences of real abstracts: real vocabulary, distinct vectors."""
    from ..ingest import title_key

    texts = sample_texts()
    sentences = [s.strip() + "." for _, a in texts for s in a.split(". ") if len(s) > 40]
    rows = []
    for i in range(offset, offset + m):
        t1, t2 = rng.choice(texts)[0], rng.choice(texts)[0]
        head = t1.split(":")[0] if ":" in t1 else " ".join(t1.split()[:4])
        title = f"{head}: {' '.join(t2.split()[-6:])} ({i})"
        abstract = " ".join(rng.sample(sentences, 5))
        upvotes = int(rng.paretovariate(1.2)) - 1 if rng.random() < 0.6 else None
        rows.append({
            "source": "daily-papers" if upvotes is not None else "arxiv",
            "source_id": f"bench.{i:06d}",
            "title_key": title_key(title),
            "title": title,
            "abstract": abstract,
            "authors": [f"Author {rng.randrange(5000)}" for _ in range(rng.randint(1, 8))],
            "url": f"https://arxiv.org/abs/bench.{i:06d}",
            "pdf_url": f"https://arxiv.org/pdf/bench.{i:06d}",
            "published_at": now - timedelta(hours=rng.uniform(0, 60)),
            "upvotes": upvotes,
            "comments": rng.randint(0, 6) if upvotes is not None else None,
            "stars": None,
            "first_seen_at": now - timedelta(hours=rng.uniform(0.5, 20)),
            "updated_at": now,
        })
    return rows


def populate(settings: Settings, subscribers: int, papers: int, seed: int = 7) -> None:
    """Fill an empty, migrated database with the synthetic day: bulk inserts, and on
    PostgreSQL the subscribers and their profiles by COPY (a million in about a minute, where
    inserts of parameter lists take ten)."""
    from ..models import Paper

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    engine = db.engine_for(settings.database_url)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for start in range(0, papers, 1000):
            conn.execute(insert(Paper),
                         synthetic_papers(min(1000, papers - start), rng, now, offset=start))
        for people, profiles in synthetic_subscribers(subscribers, rng, now):
            if postgres:
                _copy(conn, "subscribers", people)
                _copy(conn, "topic_profiles", profiles)
            else:
                conn.execute(insert(Subscriber), people)
                conn.execute(insert(TopicProfile), profiles)
        if postgres:
            conn.execute(text("SELECT setval('subscribers_id_seq', "
                              "(SELECT max(id) FROM subscribers))"))


def synthetic_subscribers(
    n: int, rng: random.Random, now: datetime, chunk: int = 5000
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """N active subscribers and their topic profiles, `chunk` at a time (the same rows from the
    same seed, whichever way they are stored)."""
    from ..models import new_link_key

    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        people = [
            {"id": start + i + 1, "email": f"reader{start + i:07d}@bench.example.org",
             "status": SubscriberStatus.ACTIVE, "time_zone": rng.choice(ZONES),
             "send_hour": 0, "papers_per_digest": 10, "created_at": now,
             "confirmed_at": now, "link_key": new_link_key()}
            for i in range(count)
        ]
        profiles = [
            {"subscriber_id": start + i + 1,
             "topics": ", ".join(rng.sample(TOPIC_PHRASES, rng.randint(1, 4))),
             "exclude": "", "trending_fallback": rng.random() < 0.1, "updated_at": now}
            for i in range(count)
        ]
        yield people, profiles


def _copy(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """COPY rows (dicts with the same keys) into `table`, in the connection's transaction."""
    columns = list(rows[0])
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(  # type: ignore[union-attr]
        f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row([_copy_value(row[c]) for c in columns])


def _copy_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


class ScratchDatabaseError(RuntimeError):
    """PostgreSQL would not create the scratch database; the message says what to do."""


@contextmanager
def temporary_postgres(admin_url: str, prefix: str = "digest_bench") -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped at the end (with any connection left to it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        raise ScratchDatabaseError(
            f"cannot create a database with {admin_url}: {exc}; start PostgreSQL "
            "or pass --postgres-admin-url."
        ) from exc
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        forget_prepared_days(url)  # the days prepared from it would outlive it here
        db.engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# Redis database numbers a run may take for itself. 0 holds the claims, 11 is bench-web's
# (--redis-db), 13 the rate-limit tests' (each test counts under a prefix of its own there).
REDIS_DATABASES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15)
REDIS_CLAIM_SECONDS = 3 * 3600


@contextmanager
def temporary_redis_database(server: str = "redis://127.0.0.1:6379") -> Iterator[str]:
    """A Redis database no other run on this machine is using, emptied before and after.

    Runs that flush a fixed database take each other's Celery tasks when two run at once (a
    bench beside a test run): each run claims a number (SET NX in database 0, with a time
    limit in case it is killed) and gives it back at the end."""
    import os

    import redis

    claims = redis.Redis.from_url(f"{server}/0")
    for number in REDIS_DATABASES:
        key = f"paper-digest:redis-db-claim:{number}"
        if claims.set(key, os.getpid(), nx=True, ex=REDIS_CLAIM_SECONDS):
            url = f"{server}/{number}"
            redis.Redis.from_url(url).flushdb()
            try:
                yield url
            finally:
                redis.Redis.from_url(url).flushdb()
                claims.delete(key)
                claims.close()
            return
    raise RuntimeError(
        f"every Redis database in {REDIS_DATABASES} is taken by another run on this machine; "
        "wait for it to end (or delete the keys paper-digest:redis-db-claim:* in database 0)"
    )
