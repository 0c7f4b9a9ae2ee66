"""Commands about readers: `subscribers`, the `suppressions` list and `unsubscribe-mail` (for an
MTA pipe or an IMAP poll)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from .. import db
from ..models import SubscriberStatus
from ..settings import SettingsError
from .base import ensure_schema, main, needs_database, settings_of

if TYPE_CHECKING:
    from ..feedback import LearnedProfile


def _suppression_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An address for the suppression list, checked before anything is opened."""
    from ..suppressions import SuppressionError, suppression_key

    try:
        return suppression_key(value)
    except SuppressionError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.group("subscribers")
def subscribers_group() -> None:
    """Add, list, inspect, import, export and remove subscribers."""


def _subscriber_errors(func_: Any) -> Any:
    """Turn a SubscriberError into a clear CLI error instead of a traceback."""
    import functools

    from ..subscribers import SubscriberError

    @functools.wraps(func_)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func_(*args, **kwargs)
        except SubscriberError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


WEEKDAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]  # subscribers.WEEKDAY_KEYS
CADENCE_NAMES = ["daily", "weekly"]


@subscribers_group.command("add")
@click.argument("email")
@click.option("--topics", required=True, help="Comma-separated topics, e.g. 'LoRA, RLHF'.")
@click.option("--exclude", default="", help="Comma-separated words to keep out.")
@click.option("--time-zone", default=None, help="IANA zone, e.g. Europe/Paris.")
@click.option("--hour", "send_hour", type=int, default=None, help="Local hour to send (0-23).")
@click.option("--papers", "papers_per_digest", type=int, default=None, help="Papers per digest.")
@click.option("--trending-fallback", is_flag=True, help="Send trending papers when none match.")
@click.option("--pending", is_flag=True, help="Add as pending (awaiting confirmation).")
@click.option("--cadence", type=click.Choice(CADENCE_NAMES), default="daily",
              show_default=True, help="A digest every day, or once a week on --weekday.")
@click.option("--weekday", type=click.Choice(WEEKDAY_NAMES, case_sensitive=False),
              default="mon", show_default=True, help="A weekly digest's day.")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_add(
    ctx: click.Context, email: str, topics: str, exclude: str, time_zone: str | None,
    send_hour: int | None, papers_per_digest: int | None, trending_fallback: bool, pending: bool,
    cadence: str, weekday: str,
) -> None:
    """Add an active subscriber (an admin action: no confirmation email). A weekly reader
    gets WEEKLY_PAPERS_PER_DIGEST papers unless --papers says otherwise.

    Example: digest subscribers add ada@example.org --topics "LoRA, activation sparsity"
    --cadence weekly --weekday fri
    """
    from ..models import Cadence, EventKind
    from ..subscribers import add_subscriber, default_papers, record_event

    settings = settings_of(ctx)
    chosen = Cadence(cadence)
    with db.session_scope(settings) as session:
        sub = add_subscriber(
            session, email, topics, exclude=exclude,
            time_zone=time_zone or settings.default_time_zone,
            send_hour=settings.default_send_hour if send_hour is None else send_hour,
            papers_per_digest=(default_papers(settings, chosen) if papers_per_digest is None
                               else papers_per_digest),
            trending_fallback=trending_fallback,
            status=SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE,
            cadence=chosen, send_weekday=WEEKDAY_NAMES.index(weekday.lower()),
        )
        record_event(session, sub.id, EventKind.SUBSCRIBED, "cli",
                     f"added by an admin ({sub.status.value})")
        click.echo(f"Added {sub.email} ({sub.status.value}).")


@subscribers_group.command("edit")
@click.argument("email")
@click.option("--cadence", type=click.Choice(CADENCE_NAMES, case_sensitive=False), default=None,
              help="A digest every day, or once a week (on --weekday).")
@click.option("--weekday", type=click.Choice(WEEKDAY_NAMES, case_sensitive=False),
              default=None, help="A weekly digest's day, in the reader's time zone.")
@click.option("--papers", "papers_per_digest", type=int, default=None, help="Papers per digest.")
@click.option("--hour", "send_hour", type=int, default=None, help="Local hour to send (0-23).")
@click.option("--time-zone", default=None, help="IANA zone, e.g. Europe/Paris.")
@click.option("--tracking/--no-tracking", "click_tracking", default=None,
              help="Paper links through the click-recording redirect, or straight to the paper.")
@click.option("--trending-fallback/--no-trending-fallback", default=None,
              help="Send trending papers when none match, or nothing.")
@click.pass_context
@_subscriber_errors
@needs_database
def subscribers_edit(
    ctx: click.Context, email: str, cadence: str | None, weekday: str | None,
    papers_per_digest: int | None, send_hour: int | None, time_zone: str | None,
    click_tracking: bool | None, trending_fallback: bool | None,
) -> None:
    """Change a subscriber's choices; what is not given stays. From their next digest on,
    as on the preferences page; switching cadence keeps their papers per digest.

    Example: digest subscribers edit ada@example.org --cadence weekly --weekday fri --papers 20
    """
    from ..subscribers import cadence_text, change_preferences, parse_cadence, parse_weekday

    settings = settings_of(ctx)
    with db.session_scope(settings) as session:
        sub, changes = change_preferences(
            session, email,
            cadence=parse_cadence(cadence) if cadence else None,
            send_weekday=parse_weekday(weekday) if weekday else None,
            papers_per_digest=papers_per_digest, send_hour=send_hour, time_zone=time_zone,
            click_tracking=click_tracking, trending_fallback=trending_fallback,
        )
        if not changes:
            click.echo(f"{sub.email}: nothing to change.")
            return
        click.echo(f"{sub.email}: {'; '.join(changes)}.")
        if weekday and sub.cadence.value == "daily":
            click.echo(f"The weekday counts once they are weekly; now they are "
                       f"{cadence_text(sub.cadence, sub.send_weekday)}.")


@subscribers_group.command("list")
@click.option("--status", type=click.Choice([s.value for s in SubscriberStatus]), default=None)
@click.pass_context
@needs_database
def subscribers_list(ctx: click.Context, status: str | None) -> None:
    """List subscribers with their status and topics.

    Example: digest subscribers list --status active
    """
    from ..subscribers import list_subscribers

    settings = settings_of(ctx)
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
    from ..feedback import learned_profile
    from ..lookups import latest_deliveries
    from ..subscribers import get_subscriber, subscriber_history

    settings = settings_of(ctx)
    with db.session_scope(settings) as session:
        sub = get_subscriber(session, email)
        click.echo(f"Email:        {sub.email}")
        click.echo(f"Status:       {sub.status.value}{' (paused)' if sub.paused else ''}")
        click.echo(f"Topics:       {sub.profile.topics}")
        click.echo(f"Exclude:      {sub.profile.exclude or '-'}")
        fallback = "yes" if sub.profile.trending_fallback else "no"
        click.echo(f"Trending when nothing matches: {fallback}")
        click.echo(f"Click tracking: {'on' if sub.click_tracking else 'off'}")
        click.echo(f"Sends at:     {sub.send_hour:02d}:00 {sub.time_zone}, "
                   f"{sub.papers_per_digest} papers")
        weekly = f" on {WEEKDAY_NAMES[sub.send_weekday % 7]}" if sub.cadence == "weekly" else ""
        click.echo(f"Cadence:      {sub.cadence.value}{weekly}")
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
    from ..render.filters import plural

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
    from ..subscribers import get_subscriber, remove_subscriber

    settings = settings_of(ctx)
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
    from ..subscribers import set_topics

    settings = settings_of(ctx)
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
    """Import subscribers from CSV with a header row (email,topics[,exclude,time_zone,...,
    cadence,weekday,click_tracking]); what a line leaves out takes the defaults.

    Bad lines are reported one by one; every valid line is imported.

    Example: digest subscribers import people.csv
    """
    from ..subscribers_csv import import_csv

    settings = settings_of(ctx)
    status = SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE
    with db.session_scope(settings) as session:
        report = import_csv(session, csv_file, status, settings)
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
    from ..subscribers_csv import export_csv

    settings = settings_of(ctx)
    with db.session_scope(settings) as session:
        count = export_csv(session, csv_file)
    if csv_file.name != "<stdout>":
        click.echo(f"Exported {count} subscriber(s) to {csv_file.name}.")


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
    from ..suppressions import list_suppressions

    settings = settings_of(ctx)
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
    from ..models import SuppressionReason
    from ..suppressions import find_suppression, suppress_address

    settings = settings_of(ctx)
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
    from ..suppressions import unsuppress_address

    settings = settings_of(ctx)
    with db.session_scope(settings) as session:
        change = unsuppress_address(session, address, "cli")
    if not change.created:
        raise click.ClickException(f"{change.address} is not suppressed.")
    click.echo(f"{change.address} may subscribe again (they must confirm by email).")


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

    from ..mailto import (
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
    settings = settings_of(ctx)
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
