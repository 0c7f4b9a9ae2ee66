"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, a real SMTP server.

PostgreSQL is required: a run that cannot reach it fails rather than skipping, so CI never
passes on SQLite alone. Set TEST_POSTGRES_URL to point at another server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from digest import db, notices
from digest.mail import close_kept_sender
from digest.models import Base
from digest.notices import forget_background_senders
from digest.settings import Settings
from digest.web import create_app

from .smtp_server import SMTPServer

ADMIN_POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
INPUTS_DIR = Path(__file__).resolve().parents[1] / "inputs"
REPO_SHARED_DIR = Path(os.environ.get("DIGEST_SHARED_DIR", INPUTS_DIR))



@pytest.fixture(autouse=True)
def no_kept_smtp_session() -> Iterator[None]:
    """A worker's kept SMTP session lives as long as its process: not from test to test;
    nor do the web's sign-up email threads, whose database and mail server were the test's."""
    yield
    close_kept_sender()
    forget_background_senders()

def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = dict(
        data_dir=tmp_path / "data",
        mail_backend="file",
        mail_from="Paper Digest <digest@digest.test>",
        public_base_url="https://digest.test",
        list_id="Paper Digest <daily.digest.test>",
        secret_key="test-secret-key",
        lookback_days=3,
    )
    base.update(overrides)
    return Settings(**base).resolved()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real inputs (`seeds/`, `real-inputs/`), in the repo: a clone needs nothing beside it."""
    if not (REPO_SHARED_DIR / "seeds").is_dir() or not (REPO_SHARED_DIR / "real-inputs").is_dir():
        pytest.fail(f"seeds/ and real-inputs/ not found in {REPO_SHARED_DIR}: restore inputs/ "
                    "from git, or point DIGEST_SHARED_DIR at a folder that has both")
    return REPO_SHARED_DIR


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once keeps the suite fast)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    db.upgrade(Settings(database_url=f"sqlite:///{path}").resolved())
    db.engine_for(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated with Alembic."""
    admin = create_engine(ADMIN_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"digest_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure here means "no PostgreSQL"
        pytest.fail(
            f"PostgreSQL is required for the tests but {ADMIN_POSTGRES_URL} is unreachable: "
            f"{exc}. Start it (see README) or set TEST_POSTGRES_URL."
        )
    url = ADMIN_POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    db.upgrade(Settings(database_url=url).resolved())
    yield url
    db.engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_postgres(url: str) -> None:
    tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    with db.engine_for(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings over a migrated, empty database; every test using it runs on both backends."""
    if request.param == "sqlite":
        path = tmp_path / "digest.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        _truncate_postgres(url)
    yield make_settings(tmp_path, database_url=url)
    if request.param == "sqlite":
        db.engine_for(url).dispose()


@pytest.fixture
def sqlite_settings(tmp_path: Path, sqlite_template: Path) -> Iterator[Settings]:
    """Settings over a migrated SQLite file, for tests whose subject is not the database."""
    path = tmp_path / "digest.sqlite3"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    yield make_settings(tmp_path, database_url=url)
    db.engine_for(url).dispose()


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    with db.session_factory(settings)() as s:
        yield s


@pytest.fixture
def smtp_settings(tmp_path: Path, smtp_server: SMTPServer) -> Settings:
    """Settings that send through `smtp_server` (SQLite; test_pipeline overrides it per DB)."""
    return make_settings(
        tmp_path,
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_timeout=5.0,
    )


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, recording what it receives."""
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


# Tests use their own Redis database and delete only the keys they made.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Redis database for rate-limit counters. Each test counts under a prefix of its own
    (so two test runs on one machine cannot disturb each other) and deletes its keys after."""
    import redis

    from digest import ratelimit

    prefix = f"{ratelimit.KEY_PREFIX}:test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(ratelimit, "KEY_PREFIX", prefix)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for the tests but {TEST_REDIS_URL} is unreachable: "
                    f"{exc}. Start it (see README) or set TEST_REDIS_URL.")
    yield TEST_REDIS_URL
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def lexical_only(settings: Settings) -> Settings:
    """`settings` ranking by TF-IDF alone: tests of the web and mail side need no model."""
    from dataclasses import fields, replace

    if "semantic_weight" in {f.name for f in fields(Settings)}:
        return replace(settings, semantic_weight=0.0)  # type: ignore[call-arg]
    return settings


@pytest.fixture
def client(web_settings: Settings) -> Iterator[FlaskClient]:
    """The web app on the requesting module's own `web_settings` fixture."""
    with create_app(web_settings).test_client() as c:
        yield c


@pytest.fixture
def background_sends_done() -> Iterator[None]:
    """No email of this test may still be on its way when the next test's database starts."""
    yield
    assert notices.wait_for_background_sends(30), "the background sender is stuck"
