"""Commands that keep a deployment running: the schema (`db`), `health`, `serve`, `dns-check`."""

from __future__ import annotations

import re
import sys

import click

from .. import db
from .base import main, needs_database, safe_url, settings_of

# A DNS name as SPF's include: takes it: letters, digits, hyphens and underscores
# ("_spf.google.com"), dot-separated, at most 253 characters.
DNS_NAME = re.compile(r"(?=.{1,253}\.?$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+"
                      r"[A-Za-z][A-Za-z0-9-]{0,61}[A-Za-z0-9]\.?")


def _report_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Where DMARC reports go: an email address, or nothing."""
    from ..subscribers import SubscriberError, normalize_email

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

    settings = settings_of(ctx)
    try:
        db.upgrade(settings, revision)
    except CommandError as exc:
        raise click.BadParameter(f"{exc}; see `digest db current`.",
                                 param_hint="'--revision'") from exc
    click.echo(f"Database at {safe_url(settings)} is at revision {db.current_revision(settings)}.")


@db_group.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the database's migration revision.

    Example: digest db current
    """
    click.echo(db.current_revision(settings_of(ctx)) or "none (run `digest db upgrade`)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for monitors.")
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Check everything this deployment needs (database, Redis, SMTP, secret key, templates,
    links) and report each; exit non-zero if any failed (warnings do not fail).

    Example: digest health --json
    """
    import json

    from ..health import run_checks

    checks = run_checks(settings_of(ctx))
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
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--debug", is_flag=True, help="Reload on code changes (development only).")
@click.pass_context
@needs_database
def serve(ctx: click.Context, host: str, port: int, debug: bool) -> None:
    """Run the web app for development (production: gunicorn, see deploy/).

    Example: digest serve --port 8000
    """
    from ..web import create_app

    settings = settings_of(ctx)
    try:
        create_app(settings).run(host=host, port=port, debug=debug)
    except OSError as exc:  # a host that does not resolve, a port taken or not ours
        raise click.ClickException(
            f"Cannot serve on {host}:{port}: {exc.strerror or exc}."
        ) from exc


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
    from ..deliverability import DeliverabilityError, dns_records

    try:
        report = dns_records(settings_of(ctx), includes, dmarc_policy, dmarc_reports)
    except DeliverabilityError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"; DNS records for mail from {report.domain}")
    for record in report.records:
        click.echo(f"; {record.why}")
        click.echo(record.zone_line())
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
