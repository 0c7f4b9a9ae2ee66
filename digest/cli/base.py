"""The `digest` group and what its commands share: the settings, the schema check and --date.

The command modules beside this one add their commands to `main`; the package imports them
all, so `digest.cli:main` is the whole command.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any, ParamSpec, TypeVar

import click

from .. import db
from ..settings import Settings, SettingsError

P = ParamSpec("P")
R = TypeVar("R")


def settings_of(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


def ensure_schema(settings: Settings) -> None:
    """The embedded SQLite default migrates itself; a server database is migrated on purpose."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(db.alembic_config(settings.database_url)).get_current_head()
    try:
        current = db.current_revision(settings)
    except Exception as exc:  # any connection failure is reported the same way
        raise click.ClickException(
            f"Cannot open the database at {safe_url(settings)}: {exc}\n"
            "Check DATABASE_URL and that the server is running."
        ) from exc
    if current == head:
        return
    if settings.is_sqlite:
        db.upgrade(settings)
        return
    raise click.ClickException(
        f"The database is at revision {current or 'none'}, not {head}. Run `digest db upgrade`."
    )


def needs_database(command: Callable[P, R]) -> Callable[P, R]:
    """Bring the schema up to date (or say why not) before a command that uses the database.

    A decorator per command rather than the group's callback, so that `--help`, `health`,
    `bench` and the `db` commands run without a usable database. Commands that check their
    input first (`ingest`, `in-doubt resend` and `mark-sent`), or that turn a database failure
    into an exit status of their own (`unsubscribe-mail`), call `ensure_schema` themselves.
    """

    @functools.wraps(command)
    def with_schema(*args: P.args, **kwargs: P.kwargs) -> R:
        ensure_schema(settings_of(click.get_current_context()))
        return command(*args, **kwargs)

    return with_schema


def safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2999, 12, 31)


class DayType(click.ParamType):
    """A --date: an ISO date from FIRST_DAY to LAST_DAY, so that the day's arithmetic (its
    papers' window, the local send hours) stays far from the calendar's ends."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            day = date.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a date like 2026-11-23.", param, ctx)
        if not FIRST_DAY <= day <= LAST_DAY:
            self.fail(f"{value} is out of range: give a date from {FIRST_DAY} to {LAST_DAY}.",
                      param, ctx)
        return day


DAY = DayType()


def today() -> date:
    return datetime.now(timezone.utc).date()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Paper Digest: email each subscriber the new papers that match their topics.

    Configuration comes from the environment and an optional .env file (see .env.example).
    The embedded default keeps a SQLite database and a file outbox under ./data.

    \b
    Start with:  digest demo
    """
    try:
        ctx.ensure_object(dict)["settings"] = Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(f"{exc} Fix it in the environment or .env.") from exc
