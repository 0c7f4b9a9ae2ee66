"""The schema's guarantees, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import warnings
from datetime import date

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest import db
from digest.models import Delivery, DeliveryItem, Subscriber, SubscriberStatus
from digest.settings import Settings

from .factories import make_delivery, make_paper, make_subscriber


def head_revision(settings: Settings) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(db.alembic_config(settings.database_url)).get_current_head()
    assert head is not None
    return head


def test_migrations_reach_head(settings: Settings) -> None:
    assert db.current_revision(settings) == head_revision(settings)


def test_the_migrations_make_exactly_the_models_schema(settings: Settings) -> None:
    """Alembic's autogenerate finds nothing to add, drop or alter between the migrated
    database and the models: the two places that state the schema agree, on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from digest.models import Base

    with db.engine_for(settings.database_url).connect() as conn, warnings.catch_warnings():
        # SQLite cannot reflect the expression index on lower(email): it is checked below.
        warnings.filterwarnings("ignore", message=".*expression-based index")
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
        if settings.is_sqlite:
            sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = "
                                       "'uq_subscribers_email_lower'").scalar()
            assert sql is not None and "lower(email)" in sql.lower()
    assert differences == [], "\n".join(map(str, differences))


def test_email_is_unique_whatever_its_case(session: Session) -> None:
    make_subscriber(session, email="Ada@Example.org")
    session.commit()
    session.add(Subscriber(email="ada@example.ORG"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_one_delivery_per_subscriber_per_day(session: Session) -> None:
    sub = make_subscriber(session)
    make_delivery(session, sub, date(2026, 11, 23))
    session.commit()
    with pytest.raises(IntegrityError):
        make_delivery(session, sub, date(2026, 11, 23))
        session.commit()


def test_a_paper_is_never_carried_twice_to_one_subscriber(session: Session) -> None:
    sub = make_subscriber(session)
    paper = make_paper(session)
    d1 = make_delivery(session, sub, date(2026, 11, 22))
    session.add(DeliveryItem(delivery=d1, subscriber_id=sub.id, paper_id=paper.id, rank=1,
                             score=0.5, why=""))
    session.commit()
    d2 = make_delivery(session, sub, date(2026, 11, 23))
    session.add(DeliveryItem(delivery=d2, subscriber_id=sub.id, paper_id=paper.id, rank=1,
                             score=0.5, why=""))
    with pytest.raises(IntegrityError):
        session.commit()


def test_times_come_back_timezone_aware(session: Session) -> None:
    sub = make_subscriber(session)
    session.commit()
    session.expire_all()
    again = session.scalars(select(Subscriber).where(Subscriber.id == sub.id)).one()
    assert again.created_at.tzinfo is not None
    assert again.status is SubscriberStatus.ACTIVE
    assert again.profile.topics


def test_deleting_a_subscriber_removes_their_deliveries(session: Session) -> None:
    sub = make_subscriber(session)
    make_delivery(session, sub, date(2026, 11, 23))
    session.commit()
    session.delete(sub)
    session.commit()
    assert session.scalars(select(Delivery)).all() == []


def test_upgrading_keeps_existing_deliveries_and_their_papers(tmp_path) -> None:
    """Migrations that rebuild a SQLite table must not cascade-delete the rows pointing at it."""
    from sqlalchemy import text

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'old.sqlite3'}").resolved()
    db.upgrade(settings, "0001")
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(text(
            "INSERT INTO subscribers (id, email, status, time_zone, send_hour, papers_per_digest,"
            " created_at) VALUES (1, 'a@example.org', 'active', 'UTC', 7, 5, '2026-11-01')"))
        conn.execute(text(
            "INSERT INTO papers (id, source, source_id, title_key, title, abstract, authors,"
            " first_seen_at, updated_at) VALUES (1, 'arxiv', '2611.00001', 'k', 't', 'a', '[]',"
            " '2026-11-01', '2026-11-01')"))
        conn.execute(text(
            "INSERT INTO deliveries (id, subscriber_id, digest_date, status, message_id,"
            " paper_count, trending_fallback, claimed_at) VALUES (1, 1, '2026-11-02', 'sent',"
            " '<m@x>', 1, 0, '2026-11-02')"))
        conn.execute(text(
            "INSERT INTO delivery_items (delivery_id, subscriber_id, paper_id, rank, score, why)"
            " VALUES (1, 1, 1, 1, 0.5, 'matches: x')"))
    db.upgrade(settings)
    with db.engine_for(settings.database_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM delivery_items")).scalar() == 1
    db.engine_for(settings.database_url).dispose()


def test_deleting_a_subscriber_deletes_their_delivery_items(session: Session) -> None:
    """An item's one foreign key is its delivery (migration 0010): a subscriber's items go
    with their deliveries, on both backends."""
    sub, other = make_subscriber(session), make_subscriber(session)
    paper = make_paper(session)
    for reader in (sub, other):
        delivery = make_delivery(session, reader, date(2026, 12, 7))
        session.add(DeliveryItem(delivery=delivery, subscriber_id=reader.id, paper_id=paper.id,
                                 rank=1, score=0.5, why=""))
    session.commit()
    session.execute(delete(Subscriber).where(Subscriber.id == sub.id))  # the database's cascade
    session.commit()
    session.expire_all()
    assert session.scalars(select(DeliveryItem.subscriber_id)).all() == [other.id]
