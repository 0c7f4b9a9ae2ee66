"""The day's commands: `ingest`, `run`, `status`, the deliveries `in-doubt`, `preview`, `prune`
and the `demo`."""

from __future__ import annotations

import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import click

from .. import db
from ..ingest.formats import FORMATS
from ..settings import Settings
from .base import DAY, ensure_schema, main, needs_database, safe_url, settings_of, today


@main.command()
@click.argument("sources", nargs=-1)
@click.option(
    "--source", "names", multiple=True, metavar="NAME",
    help="A source by name: arxiv:CAT, arxiv-api:CAT, daily-papers[:YYYY-MM-DD], rss:URL "
         "(repeatable; as in INGEST_SOURCES).",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS),
    help="Format of the files and URLs; detected from the content when omitted.",
)
@click.option("--sample", is_flag=True, help="Ingest the bundled sample papers.")
@click.pass_context
def ingest(
    ctx: click.Context, sources: tuple[str, ...], names: tuple[str, ...], fmt: str | None,
    sample: bool,
) -> None:
    """Add papers from sources by name, files or URLs (papers page text, daily-papers JSON,
    arXiv Atom, RSS).

    \b
    Example: digest ingest --source arxiv:cs.CL --source daily-papers
             digest ingest inputs/seeds/*.txt
             digest ingest 'https://export.arxiv.org/api/query?search_query=cat:cs.LG'
    """
    from ..ingest import ConnectorOptions, load_sample_papers
    from ..ingest import ingest as ingest_sources

    settings = settings_of(ctx)
    sources = (*names, *sources)
    if not sources and not sample:
        raise click.UsageError("Give at least one file or URL, a --source NAME, or --sample.")
    ensure_schema(settings)
    with db.session_scope(settings) as session:
        reports = []
        if sample:
            reports.append(load_sample_papers(session))
        if sources:
            reports.append(ingest_sources(
                session, list(sources), fmt, settings.http_timeout,
                allow_private_networks=settings.ingest_allow_private_networks,
                connectors=ConnectorOptions.from_settings(settings),
            ))
    failed = False
    for report in reports:
        click.echo(report.summary())
        failed = failed or any(s.error for s in report.sources)
    if failed:
        sys.exit(1)


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
    settings = settings_of(ctx)
    report = _run_with_progress(settings, day or today(), dry_run)
    click.echo(report.summary())
    if report.outbox_index:
        click.echo(f"Outbox: {report.outbox_index.resolve()}")
    if report.failed:
        sys.exit(1)


def _run_with_progress(settings: Settings, day: date, dry_run: bool) -> Any:
    from ..pipeline import run_day

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
    from ..status import day_status

    settings = settings_of(ctx)
    result = day_status(settings, day or today())
    click.echo(f"Digests for {result.day.isoformat()}")
    for line in result.lines():
        click.echo(f"  {line}")
    if result.counts["in_doubt"]:
        click.echo(f"{result.counts['in_doubt']} in doubt: see `digest in-doubt list --date "
                   f"{result.day.isoformat()}`, then `digest in-doubt resend` or `mark-sent`.")


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
    from ..journal import in_doubt

    settings = settings_of(ctx)
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
    from ..journal import resolve_abandoned

    settings = settings_of(ctx)
    with db.session_scope(settings) as session:
        recovery = resolve_abandoned(session, settings, datetime.now(timezone.utc))
    click.echo(recovery.summary())


def _settle(ctx: click.Context, day: date | None, emails: tuple[str, ...],
            every: bool, resend: bool) -> None:
    from ..journal import in_doubt, settle_in_doubt

    if not emails and not every:
        raise click.UsageError("Name the addresses to settle, or pass --all.")
    settings = settings_of(ctx)
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
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.pass_context
@needs_database
def prune(ctx: click.Context, dry_run: bool) -> None:
    """Delete what the retention settings (RETENTION_*) no longer keep, in short batches,
    and print per table how many rows went and what is kept (beat does this daily).

    Example: digest prune --dry-run
    """
    from ..retention import prune as prune_rows

    settings = settings_of(ctx)
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
    from ..pipeline import preview_digest
    from ..subscribers import SubscriberError

    settings = settings_of(ctx)
    day = day or today()
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
    from ..demo import demo_settings, seed_demo

    settings = demo_settings(settings_of(ctx))
    click.echo(f"Database: {safe_url(settings)}")
    with db.session_scope(settings) as session:
        for line in seed_demo(session).lines():
            click.echo(line)
    report = _run_with_progress(settings, datetime.now(timezone.utc).date(), False)
    click.echo(report.summary())
    _print_sent(settings, report.day)
    index = Path(settings.outbox_dir).resolve() / "index.html"
    click.echo(f"\nOpen the outbox in a browser: file://{index}")
    click.echo(f"Links in these emails lead to {settings.public_base_url} (PUBLIC_BASE_URL).")


def _print_sent(settings: Settings, day: date) -> None:
    from ..lookups import day_digests

    with db.session_scope(settings) as session:
        digests = day_digests(session, day)
    if digests:
        click.echo(f"\nDigests for {day}:")
    for d in digests:
        click.echo(f"  {d.email:<28} {d.paper_count:>2} paper{'' if d.paper_count == 1 else 's'}"
                   f"  {d.status.value}")
