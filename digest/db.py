"""The engine, the session factory and migrations: the one place that opens the database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import ARRAY, Engine, any_, bindparam, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from .settings import PACKAGE_DIR, Settings

MIGRATIONS_DIR = PACKAGE_DIR / "migrations"


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets foreign keys, WAL and a busy timeout to share the file."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(database_url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True, **kwargs)


@lru_cache(maxsize=8)
def engine_for(database_url: str) -> Engine:
    return make_engine(database_url)


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(engine_for(settings.database_url), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply migrations up to `revision` (the demo and the tests use this, never create_all)."""
    from alembic import command

    command.upgrade(alembic_config(settings.database_url), revision)


def current_revision(settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine_for(settings.database_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def dialect_insert(session: Session) -> Any:
    """The backend's INSERT construct, which offers ON CONFLICT DO NOTHING on both backends."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise RuntimeError(f"Unsupported database {name!r}: use SQLite or PostgreSQL.")


def among(session: Session, column: Any, values: Sequence[int]) -> Any:
    """`column IN values`, written for the backend.

    On PostgreSQL it is `column = ANY(one array parameter)`: the statement's text is then
    the same for any number of values, where an IN list makes SQLAlchemy render, and
    psycopg parse, one placeholder per value on every execution (a batch's hundred ids,
    a dozen statements a batch).
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def among_bound(dialect: str, column: Any, name: str) -> Any:
    """`among` for a statement built once and run many times: the values come later, as the
    parameter `name` (a list), so the statement itself never changes."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))
