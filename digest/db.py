"""The engine, the session factory and migrations: the one place that opens the database."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ARRAY,
    Engine,
    String,
    TypeDecorator,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    select,
)
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


def take_turns_writing(engine: Engine, lock: Any) -> None:
    """Make this process's write transactions on a SQLite `engine` take `lock` (shared with
    the other processes writing the same file) from their first write to their end.

    SQLite lets one connection write at a time; the others' writes wait in its busy handler,
    which sleeps 1, 2, 5, 10, 15, 20, 25 ms between tries, whatever the writer's transaction
    takes (a ledger statement takes well under a millisecond). Run processes sharing a day
    met each other there about once per 30 subscribers, each time leaving a core idle for
    milliseconds. Waiting on `lock` instead wakes the next writer as soon as the lock is
    given back. Readers never wait (WAL); a writer from outside these processes still meets
    SQLite's busy handler, as before.
    """

    def take(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not conn.info.get(_WRITING) and statement.lstrip()[:7].upper().startswith(_WRITES):
            # A bound, in case a connection ever wrote and was not given back: then SQLite's
            # busy handler decides, as without the lock.
            conn.info[_WRITING] = lock.acquire(timeout=_TURN_SECONDS)

    def give_back(_dbapi_connection: Any, record: Any) -> None:
        # On check-in, after the commit (or the rollback of the reset) has ended the
        # transaction: given back at the "commit" event, before it, the next writer would
        # often find SQLite still locked and sleep a millisecond.
        if record.info.pop(_WRITING, False):
            lock.release()

    event.listen(engine, "before_cursor_execute", take)
    event.listen(engine.pool, "checkin", give_back)


_WRITING = "digest_takes_turns_writing"
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "WITH")
_TURN_SECONDS = 30  # as the busy timeout (make_engine)


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
    if dialect == "sqlite":
        # The ids as one JSON text: an expanding IN is rendered again by SQLAlchemy on
        # every execution, one placeholder per id; SQLite reads the list with json_each
        # and still looks each id up in the index.
        ids = func.json_each(bindparam(name, type_=_JsonList()))
        return column.in_(select(literal_column("value")).select_from(ids))
    return column.in_(bindparam(name, expanding=True))


class _JsonList(TypeDecorator[list[int]]):
    """A list parameter sent as its JSON text (for SQLite's json_each)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return json.dumps(list(value))
