"""Migration 0005 on a database that already has subscribers, on SQLite and PostgreSQL: every
row keeps its id and history and gets a link key of its own, and SQLite stops handing a
deleted subscriber's id to the next one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from digest import db
from digest.settings import Settings

from .conftest import ADMIN_POSTGRES_URL

OLD_ROWS = (1, 2, 3)


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """An empty database of its own, migrated to 0004 (before this change)."""
    if request.param == "sqlite":
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'old.sqlite3'}").resolved()
        db.upgrade(settings, "0004")
        yield settings
        db.engine_for(settings.database_url).dispose()
        return
    admin = create_engine(ADMIN_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"digest_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    settings = Settings(database_url=ADMIN_POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}").resolved()
    db.upgrade(settings, "0004")
    yield settings
    db.engine_for(settings.database_url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _add_old_rows(settings: Settings) -> None:
    with db.engine_for(settings.database_url).begin() as conn:
        for i in OLD_ROWS:
            conn.execute(text(
                "INSERT INTO subscribers (id, email, status, time_zone, send_hour,"
                " papers_per_digest, created_at, paused) VALUES (:id, :email, 'active', 'UTC',"
                " 7, 5, '2026-11-01', false)"), {"id": i, "email": f"reader{i}@example.org"})
            conn.execute(text(
                "INSERT INTO subscriber_events (subscriber_id, kind, detail, source, created_at)"
                " VALUES (:id, 'confirmed', '', 'cli', '2026-11-01')"), {"id": i})
        conn.execute(text("DELETE FROM subscribers WHERE id = 3"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('subscribers_id_seq', 3)"))


def test_old_subscribers_keep_their_rows_and_get_distinct_link_keys(
    old_database: Settings,
) -> None:
    _add_old_rows(old_database)
    db.upgrade(old_database)
    engine = db.engine_for(old_database.database_url)
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT id, link_key FROM subscribers ORDER BY id")).all()
        assert [r.id for r in rows] == [1, 2]
        keys = [r.link_key for r in rows]
        assert all(len(k) >= 20 for k in keys) and len(set(keys)) == 2
        assert conn.execute(text("SELECT count(*) FROM subscriber_events")).scalar() == 2
        with pytest.raises(IntegrityError), conn.begin_nested():  # lower(email) index kept
            conn.execute(text(
                "INSERT INTO subscribers (email, link_key, status, time_zone, send_hour,"
                " papers_per_digest, created_at, paused) VALUES ('READER1@example.org', 'k',"
                " 'active', 'UTC', 7, 5, '2026-12-01', false)"))
        # Deleting the newest row no longer frees its id for the next one.
        new = _insert(conn, "new@example.org")
        conn.execute(text("DELETE FROM subscribers WHERE id = :id"), {"id": new})
        assert _insert(conn, "newer@example.org") > new
        conn.execute(text("DELETE FROM subscribers WHERE id = 1"))  # history goes with the row
        assert conn.execute(text("SELECT count(*) FROM subscriber_events")).scalar() == 1
    command.downgrade(db.alembic_config(old_database.database_url), "0004")
    db.upgrade(old_database)


def _insert(conn: object, email: str) -> int:
    return int(conn.execute(text(  # type: ignore[attr-defined]
        "INSERT INTO subscribers (email, link_key, status, time_zone, send_hour,"
        " papers_per_digest, created_at, paused) VALUES (:email, 'key', 'active', 'UTC', 7, 5,"
        " '2026-12-01', false) RETURNING id"), {"email": email}).scalar())
