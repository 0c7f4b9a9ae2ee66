"""`digest`: the one command for users and admins. Each command is a thin door into the library."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from . import db
from .models import SubscriberStatus
from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from .feedback import LearnedProfile

P = ParamSpec("P")
R = TypeVar("R")
def _settings(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


def ensure_schema(settings: Settings) -> None:
    """The embedded SQLite default migrates itself; a server database is migrated on purpose."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(db.alembic_config(settings.database_url)).get_current_head()
    try:
        current = db.current_revision(settings)
    except Exception as exc:  # any connection failure is reported the same way
        raise click.ClickException(
            f"Cannot open the database at {_safe_url(settings)}: {exc}\n"
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
        ensure_schema(_settings(click.get_current_context()))
        return command(*args, **kwargs)

    return with_schema


def _safe_url(settings: Settings) -> str:
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


def _today() -> date:
    return datetime.now(timezone.utc).date()


MAX_LISTED = 100_000
EVAL_METHODS = ("tfidf", "bm25", "ours-lexical", "embeddings", "hybrid", "feedback")
# A DNS name as SPF's include: takes it: letters, digits, hyphens and underscores
# ("_spf.google.com"), dot-separated, at most 253 characters.
DNS_NAME = re.compile(r"(?=.{1,253}\.?$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+"
                      r"[A-Za-z][A-Za-z0-9-]{0,61}[A-Za-z0-9]\.?")


def _suppression_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An address for the suppression list, checked before anything is opened."""
    from .suppressions import SuppressionError, suppression_key

    try:
        return suppression_key(value)
    except SuppressionError as exc:
        raise click.BadParameter(str(exc)) from exc


def _report_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Where DMARC reports go: an email address, or nothing."""
    from .subscribers import SubscriberError, normalize_email

    if not value.strip():
        return ""
    try:
        return normalize_email(value)
    except SubscriberError as exc:
        raise click.BadParameter(str(exc)) from exc


def _dns_names(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    for value in values:
        if not DNS_NAME.fullmatch(value.strip()):
            raise click.BadParameter(f"{value[:80]!r} is not a domain name like sendgrid.net.")
    return tuple(value.strip() for value in values)


def _topics(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Topics checked as every door checks them: at least one word, bounded in length."""
    from .subscribers import SubscriberError, clean_topics

    try:
        topics = clean_topics(value)
    except SubscriberError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not topics:
        raise click.BadParameter("Give at least one topic, e.g. 'LoRA, activation sparsity'.")
    return topics


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


# --- database ---------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database schema: apply and inspect migrations."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations to DATABASE_URL.

    Example: DATABASE_URL=postgresql+psycopg://digest@db/digest digest db upgrade
    """
    from alembic.util import CommandError

    settings = _settings(ctx)
    try:
        db.upgrade(settings, revision)
    except CommandError as exc:
        raise click.BadParameter(f"{exc}; see `digest db current`.",
                                 param_hint="'--revision'") from exc
    click.echo(f"Database at {_safe_url(settings)} is at revision {db.current_revision(settings)}.")


@db_group.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the database's migration revision.

    Example: digest db current
    """
    click.echo(db.current_revision(_settings(ctx)) or "none (run `digest db upgrade`)")


# --- ingest -----------------------------------------------------------------------------


@main.command()
@click.argument("sources", nargs=-1)
@click.option(
    "--format", "fmt", type=click.Choice(["page", "daily-papers", "arxiv"]),
    help="Input format; detected from the content when omitted.",
)
@click.option("--sample", is_flag=True, help="Ingest the bundled sample papers.")
@click.pass_context
def ingest(ctx: click.Context, sources: tuple[str, ...], fmt: str | None, sample: bool) -> None:
    """Add papers from files or URLs (papers page text, daily-papers JSON, arXiv Atom).

    \b
    Example: digest ingest inputs/seeds/*.txt
             digest ingest 'https://export.arxiv.org/api/query?search_query=cat:cs.LG'
    """
    from .ingest import ingest as ingest_sources
    from .ingest import load_sample_papers

    settings = _settings(ctx)
    if not sources and not sample:
        raise click.UsageError("Give at least one file or URL, or --sample.")
    ensure_schema(settings)
    with db.session_scope(settings) as session:
        reports = []
        if sample:
            reports.append(load_sample_papers(session))
        if sources:
            reports.append(ingest_sources(
                session, list(sources), fmt, settings.http_timeout,
                allow_private_networks=settings.ingest_allow_private_networks,
            ))
    failed = False
    for report in reports:
        click.echo(report.summary())
        failed = failed or any(s.error for s in report.sources)
    if failed:
        sys.exit(1)


# --- the daily run ----------------------------------------------------------------------


@main.command()
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD",
              help="Digest date (default: today, UTC).")
@click.option("--dry-run", is_flag=True, help="Score and render, but claim and send nothing.")
@click.pass_context
@needs_database
def run(ctx: click.Context, day: date | None, dry_run: bool) -> None:
    """Send each active subscriber their digest for the day (once; a rerun sends nothing).

    It ingests nothing by itself: run `digest ingest` first.

    Example: digest run --date 2026-11-23 --dry-run
    """
    settings = _settings(ctx)
    report = _run_with_progress(settings, day or _today(), dry_run)
    click.echo(report.summary())
    if report.outbox_index:
        click.echo(f"Outbox: {report.outbox_index.resolve()}")
    if report.failed:
        sys.exit(1)


def _run_with_progress(settings: Settings, day: date, dry_run: bool) -> Any:
    from .pipeline import run_day

    bar: Any = None

    def on_plan(total: int) -> None:
        nonlocal bar
        bar = click.progressbar(length=max(total, 1), label="Sending digests", file=sys.stderr)
        bar.__enter__()

    try:
        return run_day(
            settings, day, dry_run=dry_run, on_plan=on_plan,
            progress=lambda n: bar.update(n) if bar else None,
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@main.command()
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD",
              help="Digest date (default: today, UTC).")
@click.pass_context
@needs_database
def status(ctx: click.Context, day: date | None) -> None:
    """How a day's digests stand: due, sent, pending, retrying, failed, bounced, in doubt.

    Example: digest status --date 2026-11-23
    """
    from .status import day_status

    settings = _settings(ctx)
    result = day_status(settings, day or _today())
    click.echo(f"Digests for {result.day.isoformat()}")
    for line in result.lines():
        click.echo(f"  {line}")
    if result.counts["in_doubt"]:
        click.echo(f"{result.counts['in_doubt']} in doubt: see `digest in-doubt list --date "
                   f"{result.day.isoformat()}`, then `digest in-doubt resend` or `mark-sent`.")


# --- deliveries in doubt: the operator's choice --------------------------------------------


@main.group("in-doubt")
def in_doubt_group() -> None:
    """Digests a stopped worker may or may not have handed to the mail server.

    A worker records each message in its send journal as it goes out, so after a crash
    only the messages truly in flight stay in doubt (see README, "A crash loses no one's
    digest"). Nothing resends them on its own: choose `resend` (the reader may get the
    digest twice) or `mark-sent` (the reader may have got nothing that day).
    """


@in_doubt_group.command("list")
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD", help="Only this digest date.")
@click.pass_context
@needs_database
def in_doubt_list(ctx: click.Context, day: date | None) -> None:
    """List deliveries in doubt (all days unless --date).

    Example: digest in-doubt list --date 2026-11-23
    """
    from .journal import in_doubt

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        rows = in_doubt(session, day)
    for row in rows:
        click.echo(f"{row.digest_date.isoformat()}  {row.email}  ({row.error[:80]})")
    click.echo(f"{len(rows)} in doubt.")


@in_doubt_group.command("recover")
@click.pass_context
@needs_database
def in_doubt_recover(ctx: click.Context) -> None:
    """Settle what stopped attempts left, from this host's send journals and the file outbox
    (`digest run` and the beat's tick do this too before they plan).

    Example: digest in-doubt recover
    """
    from .journal import resolve_abandoned

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        recovery = resolve_abandoned(session, settings, datetime.now(timezone.utc))
    click.echo(recovery.summary())


def _settle(ctx: click.Context, day: date | None, emails: tuple[str, ...],
            every: bool, resend: bool) -> None:
    from .journal import in_doubt, settle_in_doubt

    if not emails and not every:
        raise click.UsageError("Name the addresses to settle, or pass --all.")
    settings = _settings(ctx)
    ensure_schema(settings)
    wanted = {e.strip().lower() for e in emails}
    with db.session_scope(settings) as session:
        rows = in_doubt(session, day)
        chosen = [r for r in rows if every or r.email.lower() in wanted]
        missing = wanted - {r.email.lower() for r in chosen}
        if missing:
            raise click.ClickException(
                f"Not in doubt{' on that date' if day else ''}: {', '.join(sorted(missing))}"
            )
        changed = settle_in_doubt(session, [r.delivery_id for r in chosen], resend,
                                  datetime.now(timezone.utc))
    if resend:
        click.echo(f"{changed} planned again: the next `digest run` (or the beat's next tick) "
                   "sends them.")
    else:
        click.echo(f"{changed} marked sent.")


@in_doubt_group.command("resend")
@click.argument("emails", nargs=-1)
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD", help="Only this digest date.")
@click.option("--all", "every", is_flag=True, help="Every delivery in doubt (of --date).")
@click.pass_context
def in_doubt_resend(ctx: click.Context, emails: tuple[str, ...], day: date | None,
                    every: bool) -> None:
    """Send these digests again at the next run; a reader may get one twice.

    Example: digest in-doubt resend ada@example.org --date 2026-11-23
    """
    _settle(ctx, day, emails, every, resend=True)


@in_doubt_group.command("mark-sent")
@click.argument("emails", nargs=-1)
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD", help="Only this digest date.")
@click.option("--all", "every", is_flag=True, help="Every delivery in doubt (of --date).")
@click.pass_context
def in_doubt_mark_sent(ctx: click.Context, emails: tuple[str, ...], day: date | None,
                       every: bool) -> None:
    """Count these digests as sent and leave them; a reader may have got nothing.

    Example: digest in-doubt mark-sent --all --date 2026-11-23
    """
    _settle(ctx, day, emails, every, resend=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for monitors.")
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Check everything this deployment needs (database, Redis, SMTP, secret key, templates,
    links) and report each; exit non-zero if any failed (warnings do not fail).

    Example: digest health --json
    """
    import json

    from .health import run_checks

    checks = run_checks(_settings(ctx))
    failed = [c.name for c in checks if not c.ok]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}))
    else:
        for check in checks:
            click.echo(f"{check.name:<11} {check.level.value.upper():<4}  {check.detail}")
    if failed:
        if as_json:
            sys.exit(1)
        raise click.ClickException(f"{', '.join(failed)}: see above.")


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.pass_context
@needs_database
def prune(ctx: click.Context, dry_run: bool) -> None:
    """Delete what the retention settings (RETENTION_*) no longer keep, in short batches,
    and print per table how many rows went and what is kept (beat does this daily).

    Example: digest prune --dry-run
    """
    from .retention import prune as prune_rows

    settings = _settings(ctx)
    for line in prune_rows(settings, dry_run=dry_run).lines():
        click.echo(line)


@main.command()
@click.argument("email")
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD",
              help="Digest date (default: today).")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory for the files (default: DATA_DIR/previews).",
)
@click.pass_context
@needs_database
def preview(ctx: click.Context, email: str, day: date | None, out_dir: Path | None) -> None:
    """Write the digest EMAIL would get as HTML and text files; sends and records nothing.

    Example: digest preview ada@example.org --date 2026-11-23
    """
    from .pipeline import preview_digest
    from .subscribers import SubscriberError

    settings = _settings(ctx)
    day = day or _today()
    try:
        rendered = preview_digest(settings, email, day)
    except SubscriberError as exc:
        raise click.ClickException(str(exc)) from exc
    if rendered is None:
        click.echo(f"No new paper matches {email}'s topics for {day}; nothing would be sent.")
        return
    out_dir = out_dir or Path(settings.data_dir) / "previews"
    stem = f"{day.isoformat()}-{''.join(c if c.isalnum() else '_' for c in email)}"
    html_path, text_path = out_dir / f"{stem}.html", out_dir / f"{stem}.txt"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        html_path.write_text(rendered.html, encoding="utf-8")
        text_path.write_text(rendered.text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(
            f"Cannot write the preview to {out_dir}: {exc.strerror or exc}. Choose another --out."
        ) from exc
    click.echo(f"Subject: {rendered.subject}")
    click.echo(f"HTML: {html_path.resolve()}")
    click.echo(f"Text: {text_path.resolve()}")


@main.command()
@click.pass_context
@needs_database
def demo(ctx: click.Context) -> None:
    """Run a day on the embedded default: sample papers, sample subscribers, file outbox.

    Safe to run again: papers and subscribers are not duplicated and nobody gets a second
    digest for the same day.

    Example: digest demo
    """
    from .demo import demo_settings, seed_demo

    settings = demo_settings(_settings(ctx))
    click.echo(f"Database: {_safe_url(settings)}")
    with db.session_scope(settings) as session:
        for line in seed_demo(session).lines():
            click.echo(line)
    report = _run_with_progress(settings, datetime.now(timezone.utc).date(), False)
    click.echo(report.summary())
    _print_sent(settings, report.day)
    index = Path(settings.outbox_dir).resolve() / "index.html"
    click.echo(f"\nOpen the outbox in a browser: file://{index}")


def _print_sent(settings: Settings, day: date) -> None:
    from .lookups import day_digests

    with db.session_scope(settings) as session:
        digests = day_digests(session, day)
    if digests:
        click.echo(f"\nDigests for {day}:")
    for d in digests:
        click.echo(f"  {d.email:<28} {d.paper_count:>2} paper{'' if d.paper_count == 1 else 's'}"
                   f"  {d.status.value}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--debug", is_flag=True, help="Reload on code changes (development only).")
@click.pass_context
@needs_database
def serve(ctx: click.Context, host: str, port: int, debug: bool) -> None:
    """Run the web app for development (production: gunicorn, see deploy/).

    Example: digest serve --port 8000
    """
    from .web import create_app

    settings = _settings(ctx)
    try:
        create_app(settings).run(host=host, port=port, debug=debug)
    except OSError as exc:  # a host that does not resolve, a port taken or not ours
        raise click.ClickException(
            f"Cannot serve on {host}:{port}: {exc.strerror or exc}."
        ) from exc


# --- subscribers ------------------------------------------------------------------------


@main.group("subscribers")
def subscribers_group() -> None:
    """Add, list, inspect, import, export and remove subscribers."""


def _subscriber_errors(func_: Any) -> Any:
    """Turn a SubscriberError into a clear CLI error instead of a traceback."""
    import functools

    from .subscribers import SubscriberError

    @functools.wraps(func_)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func_(*args, **kwargs)
        except SubscriberError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@subscribers_group.command("add")
@click.argument("email")
@click.option("--topics", required=True, help="Comma-separated topics, e.g. 'LoRA, RLHF'.")
@click.option("--exclude", default="", help="Comma-separated words to keep out.")
@click.option("--time-zone", default=None, help="IANA zone, e.g. Europe/Paris.")
@click.option("--hour", "send_hour", type=int, default=None, help="Local hour to send (0-23).")
@click.option("--papers", "papers_per_digest", type=int, default=None, help="Papers per digest.")
@click.option("--trending-fallback", is_flag=True, help="Send trending papers when none match.")
@click.option("--pending", is_flag=True, help="Add as pending (awaiting confirmation).")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_add(
    ctx: click.Context, email: str, topics: str, exclude: str, time_zone: str | None,
    send_hour: int | None, papers_per_digest: int | None, trending_fallback: bool, pending: bool,
) -> None:
    """Add an active subscriber (an admin action: no confirmation email).

    Example: digest subscribers add ada@example.org --topics "LoRA, activation sparsity"
    """
    from .models import EventKind
    from .subscribers import add_subscriber, record_event

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        sub = add_subscriber(
            session, email, topics, exclude=exclude,
            time_zone=time_zone or settings.default_time_zone,
            send_hour=settings.default_send_hour if send_hour is None else send_hour,
            papers_per_digest=(settings.default_papers_per_digest if papers_per_digest is None
                               else papers_per_digest),
            trending_fallback=trending_fallback,
            status=SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE,
        )
        record_event(session, sub.id, EventKind.SUBSCRIBED, "cli",
                     f"added by an admin ({sub.status.value})")
        click.echo(f"Added {sub.email} ({sub.status.value}).")


@subscribers_group.command("list")
@click.option("--status", type=click.Choice([s.value for s in SubscriberStatus]), default=None)
@click.pass_context
@needs_database
def subscribers_list(ctx: click.Context, status: str | None) -> None:
    """List subscribers with their status and topics.

    Example: digest subscribers list --status active
    """
    from .subscribers import list_subscribers

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        subs = list(list_subscribers(session, SubscriberStatus(status) if status else None))
        for sub in subs:
            topics = sub.profile.topics if sub.profile else ""
            click.echo(f"{sub.email:<32} {sub.status.value:<12} {topics[:60]}")
        click.echo(f"{len(subs)} subscriber(s).")


@subscribers_group.command("show")
@click.argument("email")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_show(ctx: click.Context, email: str) -> None:
    """Show one subscriber's settings, topics, recent deliveries and history.

    Example: digest subscribers show ada@example.org
    """
    from .feedback import learned_profile
    from .lookups import latest_deliveries
    from .subscribers import get_subscriber, subscriber_history

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        sub = get_subscriber(session, email)
        click.echo(f"Email:        {sub.email}")
        click.echo(f"Status:       {sub.status.value}{' (paused)' if sub.paused else ''}")
        click.echo(f"Topics:       {sub.profile.topics}")
        click.echo(f"Exclude:      {sub.profile.exclude or '-'}")
        fallback = "yes" if sub.profile.trending_fallback else "no"
        click.echo(f"Trending when nothing matches: {fallback}")
        click.echo(f"Sends at:     {sub.send_hour:02d}:00 {sub.time_zone}, "
                   f"{sub.papers_per_digest} papers")
        click.echo(f"Created:      {sub.created_at:%Y-%m-%d %H:%M} UTC")
        if sub.confirmed_at:
            click.echo(f"Confirmed:    {sub.confirmed_at:%Y-%m-%d %H:%M} UTC")
        deliveries = latest_deliveries(session, sub.id, limit=10)
        click.echo(f"Deliveries:   {len(deliveries)} shown (latest first)")
        for d in deliveries:
            click.echo(f"  {d.digest_date}  {d.status.value:<9} {d.paper_count} papers  "
                       f"{d.message_id}")
            for item in d.items:
                click.echo(f"      {item.rank:>2}. {item.paper.title[:70]}  ({item.why})")
        _echo_learned(learned_profile(session, sub))
        history = subscriber_history(session, sub)
        click.echo(f"History:      {len(history)} event(s), oldest first")
        for entry in history:
            detail = f"  {entry.detail}" if entry.detail else ""
            click.echo(f"  {entry.at:%Y-%m-%d %H:%M}  {entry.what:<19} {entry.source:<18}{detail}")


def _echo_learned(learned: LearnedProfile) -> None:
    """What the profile learned from clicks and "more / less like this", for `show`."""
    from .render.filters import plural

    if learned.empty:
        click.echo("Learned:      nothing yet (no clicks or votes on their digests)")
        return
    counts = [plural(len(learned.more), '"more like this"', '"more like this"'),
              plural(len(learned.less), '"less like this"', '"less like this"'),
              plural(len(learned.clicked), "click")]
    aside = (f"; {plural(learned.scanner_clicks, 'click')} set aside as a link scanner's"
             if learned.scanner_clicks else "")
    click.echo(f"Learned:      from {', '.join(counts)}{aside}")
    for label, titles in (("more like", learned.more), ("less like", learned.less),
                          ("clicked", learned.clicked)):
        for title in titles[:5]:
            click.echo(f"  {label:<10} {title[:80]}")
        if len(titles) > 5:
            click.echo(f"  {'':<10} ... and {len(titles) - 5} more")
    if learned.toward:
        click.echo(f"  leans toward:    {', '.join(learned.toward)}")
    if learned.away:
        click.echo(f"  leans away from: {', '.join(learned.away)}")


@subscribers_group.command("remove")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_remove(ctx: click.Context, email: str, yes: bool) -> None:
    """Delete a subscriber and their delivery history.

    Example: digest subscribers remove ada@example.org --yes
    """
    from .subscribers import get_subscriber, remove_subscriber

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        get_subscriber(session, email)
        if not yes:
            click.confirm(f"Delete {email} and their history?", abort=True)
        remove_subscriber(session, email)
    click.echo(f"Removed {email}.")


@subscribers_group.command("set-topics")
@click.argument("email")
@click.argument("topics")
@click.option("--exclude", default=None, help="Replace the words to keep out.")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_set_topics(
    ctx: click.Context, email: str, topics: str, exclude: str | None
) -> None:
    """Replace a subscriber's topics (from their next digest on).

    Example: digest subscribers set-topics ada@example.org "LoRA, activation sparsity"
    """
    from .subscribers import set_topics

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        sub = set_topics(session, email, topics, exclude)
        click.echo(f"{sub.email}: topics now {sub.profile.topics!r}.")


@subscribers_group.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--pending", is_flag=True, help="Import as pending instead of active.")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_import(ctx: click.Context, csv_file: Any, pending: bool) -> None:
    """Import subscribers from CSV with a header row (email,topics[,exclude,time_zone,...]).

    Bad lines are reported one by one; every valid line is imported.

    Example: digest subscribers import people.csv
    """
    from .subscribers_csv import import_csv

    settings = _settings(ctx)
    status = SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE
    with db.session_scope(settings) as session:
        report = import_csv(session, csv_file, status)
    for error in report.errors:
        click.echo(error, err=True)
    click.echo(report.summary())
    if report.errors:
        sys.exit(1)


@subscribers_group.command("export")
@click.argument("csv_file", type=click.File("w", encoding="utf-8"), default="-")
@click.pass_context
@needs_database
def subscribers_export(ctx: click.Context, csv_file: Any) -> None:
    """Export every subscriber as CSV (to a file, or standard output).

    Example: digest subscribers export subscribers.csv
    """
    from .subscribers_csv import export_csv

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        count = export_csv(session, csv_file)
    if csv_file.name != "<stdout>":
        click.echo(f"Exported {count} subscriber(s) to {csv_file.name}.")


# --- papers -----------------------------------------------------------------------------


@main.group("papers")
def papers_group() -> None:
    """Inspect the papers in the database."""


@papers_group.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, MAX_LISTED),
              help="How many, newest first.")
@click.option("--search", default=None, help="Only titles containing this text.")
@click.pass_context
@needs_database
def papers_list(ctx: click.Context, limit: int, search: str | None) -> None:
    """List papers, most recently seen first.

    Example: digest papers list --search LoRA
    """
    from .lookups import list_papers

    with db.session_scope(_settings(ctx)) as session:
        page = list_papers(session, limit, search)
        for p in page.papers:
            votes = f"{p.upvotes:>4}▲" if p.upvotes is not None else "     "
            click.echo(f"{p.id:>6}  {p.source_id:<24} {votes}  {p.title[:70]}")
        click.echo(f"{len(page.papers)} shown of {page.total} paper(s).")


@papers_group.command("show")
@click.argument("paper")
@click.pass_context
@needs_database
def papers_show(ctx: click.Context, paper: str) -> None:
    """Show one paper by database id or source id (e.g. an arXiv id).

    Example: digest papers show 2607.07673
    """
    from .lookups import find_paper

    with db.session_scope(_settings(ctx)) as session:
        found = find_paper(session, paper)
        if found is None:
            raise click.ClickException(f"No paper with id or source id {paper!r}.")
        click.echo(f"Title:     {found.title}")
        click.echo(f"Authors:   {', '.join(found.authors) or '-'}")
        click.echo(f"Source:    {found.source} {found.source_id}")
        click.echo(f"Page:      {found.url or '-'}")
        click.echo(f"PDF:       {found.pdf_url or '-'}")
        click.echo(f"Published: {found.published_at or '-'}")
        click.echo(f"First seen: {found.first_seen_at:%Y-%m-%d %H:%M} UTC")
        engagement = [
            f"{n} {label}" for n, label in
            ((found.upvotes, "upvotes"), (found.comments, "comments"), (found.stars, "stars"))
            if n is not None
        ]
        click.echo(f"Engagement: {', '.join(engagement) or '-'}")
        click.echo("")
        click.echo(found.abstract)


@main.command()
@click.option("--subscribers", "-n", default=10_000, show_default=True,
              type=click.IntRange(1, 10_000_000), help="Subscribers.")
@click.option("--papers", "-m", default=2_000, show_default=True,
              type=click.IntRange(1, 1_000_000), help="New papers that day.")
@click.option("--workers", "-k", default=0, show_default=True, type=click.IntRange(0, 64),
              help="Also run the day on K Celery workers (needs Redis and PostgreSQL).")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes per Celery worker (its prefork pool).")
@click.option("--backend", type=click.Choice(["smtp", "file"]), default="smtp",
              show_default=True, help="In-process mail backend: an SMTP sink or the file outbox.")
@click.option("--batch-size", default=None, type=click.IntRange(1, 100_000),
              help="Subscribers per batch.")
@click.option("--jobs", "-j", default=None, type=click.IntRange(0, 256),
              help="Processes for the in-process day (RUN_JOBS; 0: one per core).")
@click.option("--in-process/--no-in-process", default=True, show_default=True,
              help="Run the day in this process too (off: only on the --workers).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def bench(ctx: click.Context, subscribers: int, papers: int, workers: int, concurrency: int,
          backend: str,
          batch_size: int | None, jobs: int | None, in_process: bool, as_json: bool) -> None:
    """Run a synthetic day and print time, rate and ratio to the best case per stage.

    Uses a throwaway SQLite file (and a throwaway PostgreSQL database with --workers);
    your data is not touched.

    Example: digest bench --subscribers 10000 --papers 2000 --workers 2
    """
    from .tools.bench import figures_json, run_bench

    settings = _settings(ctx)
    if batch_size:
        settings = replace(settings, batch_size=batch_size)
    if jobs is not None:
        settings = replace(settings, run_jobs=jobs)
    if not in_process and not workers:
        raise click.UsageError("--no-in-process needs --workers K: there would be nothing to run.")
    figures = run_bench(settings, subscribers, papers, workers, backend, in_process=in_process,
                        progress=lambda line: click.echo(line, err=True),
                        concurrency=concurrency)
    click.echo(figures_json(figures) if as_json else figures.table())


# --- suppressions -----------------------------------------------------------------------


@main.group("suppressions")
def suppressions_group() -> None:
    """The suppression list: addresses nothing is ever sent to (bounces, complaints, admins)."""


@suppressions_group.command("list")
@click.pass_context
@needs_database
def suppressions_list(ctx: click.Context) -> None:
    """List suppressed addresses, oldest first, with why and who added them.

    Example: digest suppressions list
    """
    from .suppressions import list_suppressions

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        rows = list_suppressions(session)
        for row in rows:
            detail = f"  {row.detail}" if row.detail else ""
            click.echo(f"{row.address:<32} {row.reason.value:<11} {row.created_at:%Y-%m-%d %H:%M}"
                       f"  {row.source}{detail}")
        click.echo(f"{len(rows)} suppressed address(es).")


@suppressions_group.command("add")
@click.argument("address", callback=_suppression_address)
@click.option("--reason", type=click.Choice(["manual", "bounced", "complained"]),
              default="manual", show_default=True)
@click.option("--note", default="", help="Why, for the history.")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@click.pass_context
@needs_database
def suppressions_add(
    ctx: click.Context, address: str, reason: str, note: str, dry_run: bool
) -> None:
    """Never send anything to ADDRESS again; its subscriber (if any) stops getting digests.

    Example: digest suppressions add ada@example.org --note "asked by phone"
    """
    from .models import SuppressionReason
    from .suppressions import find_suppression, suppress_address

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        if dry_run:
            found = find_suppression(session, address)
            click.echo(f"{address} is already suppressed ({found.reason.value})." if found
                       else f"Would suppress {address} ({reason}).")
            return
        change = suppress_address(session, address, SuppressionReason(reason), "cli", note)
    click.echo(f"Suppressed {change.address} ({reason})." if change.created
               else f"{change.address} was already suppressed.")


@suppressions_group.command("remove")
@click.argument("address")
@click.pass_context
@needs_database
def suppressions_remove(ctx: click.Context, address: str) -> None:
    """Lift a suppression. The subscriber stays unsubscribed until they subscribe and confirm.

    Example: digest suppressions remove ada@example.org
    """
    from .suppressions import unsuppress_address

    settings = _settings(ctx)
    with db.session_scope(settings) as session:
        change = unsuppress_address(session, address, "cli")
    if not change.created:
        raise click.ClickException(f"{change.address} is not suppressed.")
    click.echo(f"{change.address} may subscribe again (they must confirm by email).")


# --- unsubscribe by email ---------------------------------------------------------------

EX_TEMPFAIL = 75  # sysexits.h: the MTA keeps the message and delivers it again later


@main.command("unsubscribe-mail")
@click.option("--recipient", default=None, metavar="ADDRESS",
              help="The envelope recipient (Postfix: ${recipient}); default: the "
                   "Delivered-To, X-Original-To or To header.")
@click.option("--imap", "from_imap", is_flag=True,
              help="Answer the unseen messages of the IMAP_* mailbox instead, and mark them "
                   "seen.")
@click.pass_context
def unsubscribe_mail(ctx: click.Context, recipient: str | None, from_imap: bool) -> None:
    """Unsubscribe the reader whose List-Unsubscribe address the message on stdin was sent to.

    For an MTA pipe. Only the signed address (unsubscribe+<id>-<tag>@...) counts, never From.
    Exit status 0 when handled: unsubscribed, already unsubscribed, or refused (not a signed
    address, or over 1 MB: the MTA drops it, no bounce goes back); 75 when the database
    cannot be used (the MTA tries again later). With --imap, for cron: 1 when the mailbox
    cannot be read.

    Example: digest unsubscribe-mail --recipient unsubscribe+42-mfrggzdfmztwq2lk@ex.org < m.eml
    """
    from sqlalchemy.exc import SQLAlchemyError

    from .mailto import (
        MailboxError,
        MailOutcome,
        MailResult,
        MessageTooLarge,
        poll_mailbox,
        read_message,
        unsubscribe_by_mail,
    )

    if from_imap and recipient:
        raise click.UsageError("--recipient names one message's address; --imap reads each "
                               "message's own headers. Give one or the other.")
    settings = _settings(ctx)
    summary = ""
    try:
        message = b"" if from_imap else read_message(sys.stdin.buffer)
        ensure_schema(settings)
        if from_imap:
            report = poll_mailbox(settings)
            results, summary = report.results, report.summary()
        else:
            results = [unsubscribe_by_mail(settings, message, recipient)]
    except MessageTooLarge as exc:
        results = [MailResult(MailOutcome.REFUSED, str(exc))]
    except MailboxError as exc:
        raise click.ClickException(str(exc)) from exc
    except (click.ClickException, SettingsError, SQLAlchemyError) as exc:
        text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"try again later: {' '.join(text.split())[:500]}", err=True)
        ctx.exit(EX_TEMPFAIL)
    for result in results:
        click.echo(result.line(), err=result.refused)
    if summary:
        click.echo(summary)


# --- deliverability ---------------------------------------------------------------------


@main.command("dns-check")
@click.option("--include", "includes", multiple=True, metavar="DOMAIN",
              callback=_dns_names,
              help="Your mail provider's SPF domain, e.g. sendgrid.net (repeatable).")
@click.option("--dmarc-policy", type=click.Choice(["none", "quarantine", "reject"]),
              default="none", show_default=True)
@click.option("--dmarc-reports", default="", metavar="ADDRESS",
              callback=_report_address,
              help="Where receivers send DMARC aggregate reports.")
@click.pass_context
def dns_check(
    ctx: click.Context, includes: tuple[str, ...], dmarc_policy: str, dmarc_reports: str
) -> None:
    """Print the SPF, DKIM and DMARC records the sending domain needs, as zone-file lines.

    The DKIM record carries the public half of DKIM_PRIVATE_KEY_PATH.

    Example: digest dns-check --include sendgrid.net --dmarc-reports dmarc@example.org
    """
    from .deliverability import DeliverabilityError, dns_records

    try:
        report = dns_records(_settings(ctx), includes, dmarc_policy, dmarc_reports)
    except DeliverabilityError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"; DNS records for mail from {report.domain}")
    for record in report.records:
        click.echo(f"; {record.why}")
        click.echo(record.zone_line())
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)


# --- ranking: ad-hoc recommendations and the evaluation ----------------------------------


@main.command()
@click.option("--topics", required=True, help="Comma-separated topics, e.g. 'LoRA, RLHF'.",
              callback=_topics)
@click.option("--limit", "-n", default=10, show_default=True, type=click.IntRange(1, 100),
              help="How many papers.")
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD",
              help="Rank that day's candidates.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {title, score, why}.")
@click.pass_context
@needs_database
def recommend(ctx: click.Context, topics: str, limit: int, day: date | None,
              as_json: bool) -> None:
    """Rank the papers in the database for ad-hoc topics, as a digest would.

    Ranks the day's candidate papers, or every paper when the day has none.

    Example: digest recommend --topics "LoRA, activation sparsity" --limit 5 --json
    """
    import json

    from .recommend import recommend as recommend_papers

    settings = _settings(ctx)
    papers = recommend_papers(settings, topics, limit, day or _today(), max_limit=100)
    if as_json:
        click.echo(json.dumps(papers, indent=2, ensure_ascii=False))
        return
    if not papers:
        click.echo("No paper matches these topics. Ingest some papers or try other words.")
    for rank, paper in enumerate(papers, 1):
        click.echo(f"{rank:>2}. {paper['score']:.3f}  {paper['title']}")
        click.echo(f"    {paper['why']}" + (f"  {paper['url']}" if paper["url"] else ""))


@main.command("eval")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The labelled set (profiles.json, judgments.jsonl); default: the repo's eval/.")
@click.option("--seeds", "seeds_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Seed pages (*.txt); default: the repo's inputs/seeds.")
@click.option("--split", type=click.Choice(["dev", "test", "all"]), default="dev",
              show_default=True, help="Profiles to score; keep test for the very end.")
@click.option("--method", "methods", multiple=True, type=click.Choice(EVAL_METHODS),
              help="Only these methods (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def eval_command(ctx: click.Context, eval_dir: Path | None, seeds_dir: Path | None, split: str,
                 methods: tuple[str, ...], as_json: bool) -> None:
    """Print nDCG@10 and P@10 of each ranking method on the labelled set, side by side.

    Example: digest eval --split dev
    """
    from .tools import evaluate

    try:
        report = evaluate.run_eval(
            _settings(ctx),
            eval_dir or evaluate.DEFAULT_EVAL_DIR,
            seeds_dir or evaluate.DEFAULT_SEEDS_DIR,
            split,
            methods,
        )
    except OSError as exc:  # a missing directory or file says which, and what to pass
        raise click.ClickException(str(exc)) from exc
    except (ValueError, KeyError) as exc:  # JSON that does not parse, a field missing
        raise click.ClickException(
            f"The labelled set in {eval_dir or evaluate.DEFAULT_EVAL_DIR} is malformed "
            f"({type(exc).__name__}: {exc}): profiles.json is a list of {{id, topics, split}}, "
            "judgments.jsonl one {profile, paper, grade} per line."
        ) from exc
    click.echo(report.as_json() if as_json else report.table())


if __name__ == "__main__":  # pragma: no cover
    main()
