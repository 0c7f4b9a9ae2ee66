"""Health checks for `digest health`, monitors and operators: is each part this deployment
needs in order, and what should be fixed first?

Every check runs, whatever the others find (an operator wants the whole picture, not the first
failure), and each says what to do. A check is `ok`, `warn` (works, but something a reader
or a mailbox provider will notice: plain-http links beside SMTP mail) or `fail`.
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum

from sqlalchemy import text

from . import db
from .mail.smtp import SMTPUnreachable, open_smtp
from .settings import PROJECT_DIR, Settings, SettingsError


class Level(str, Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str

    @property
    def ok(self) -> bool:
        return self.level is not Level.FAIL

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "level": self.level.value}


def database_error(settings: Settings) -> str | None:
    """Why the database does not answer, or None when it does. A load balancer (`/healthz`)
    asks only this: an unmigrated schema is the operator's to fix, not a reason to stop traffic."""
    try:
        with db.engine_for(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - every failure is "down", with its reason
        return str(exc)
    return None


def check_database(settings: Settings) -> Check:
    error = database_error(settings)
    revision = None
    if error is None:
        try:
            revision = db.current_revision(settings)
        except Exception as exc:  # noqa: BLE001 - every failure is "down", with its reason
            error = str(exc)
    if error is not None:
        return Check("database", Level.FAIL, f"cannot connect: {error}. Check DATABASE_URL.")
    if revision is None:
        return Check("database", Level.FAIL, "reachable but empty: run `digest db upgrade`.")
    return Check("database", Level.OK, f"schema revision {revision}")


def check_redis(settings: Settings) -> Check:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=3,
                                      socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001
        return Check("redis", Level.FAIL, f"cannot reach {settings.redis_url}: {exc}. "
                     "Check REDIS_URL and that redis-server runs.")
    return Check("redis", Level.OK, settings.redis_url)


def check_smtp(settings: Settings) -> Check:
    if settings.mail_backend != "smtp":
        return Check("smtp", Level.OK, f"not used (MAIL_BACKEND={settings.mail_backend})")
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    # The senders' own connect: the same TLS context and login, and the same advice.
    try:
        client = open_smtp(settings, timeout=min(settings.smtp_timeout, 10))
    except SMTPUnreachable as exc:
        return Check("smtp", Level.FAIL, str(exc))
    try:
        client.noop()
    except (smtplib.SMTPException, OSError) as exc:
        return Check("smtp", Level.FAIL, f"{where} dropped the session: {exc}. "
                     "Check the SMTP_* settings and the server's logs.")
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
    return Check("smtp", Level.OK, f"{where} ({settings.smtp_security})")


def check_secret_key(settings: Settings) -> Check:
    try:
        key = settings.signing_key()
    except SettingsError as exc:
        return Check("secret key", Level.FAIL, str(exc))
    if settings.secret_key and len(key) < 32:
        return Check("secret key", Level.WARN,
                     f"SECRET_KEY is {len(key)} characters: anyone who guesses it can forge "
                     "unsubscribe and preferences links. Use 32 or more random characters.")
    where = "SECRET_KEY" if settings.secret_key else "generated into DATA_DIR/secret_key"
    return Check("secret key", Level.OK, where)


def check_templates(settings: Settings) -> Check:
    """Every email template parses: a broken edit is found here, not by the day's run."""
    from jinja2 import Environment, FileSystemLoader, TemplateError

    root = PROJECT_DIR / "templates"
    env = Environment(loader=FileSystemLoader(str(root)), autoescape=False)
    names = sorted(p.relative_to(root).as_posix() for p in (root / "email").rglob("*")
                   if p.is_file())
    try:
        for name in names:
            env.parse(env.loader.get_source(env, name)[0])  # type: ignore[union-attr]
    except (TemplateError, OSError) as exc:
        return Check("templates", Level.FAIL, f"{name}: {exc}")
    if not names:
        return Check("templates", Level.FAIL, f"no email templates under {root / 'email'}")
    return Check("templates", Level.OK, f"{len(names)} email templates parse")


def check_links(settings: Settings) -> Check:
    warning = link_warning(settings)
    if warning:
        return Check("links", Level.WARN, warning)
    return Check("links", Level.OK, settings.public_base_url)


def link_warning(settings: Settings) -> str | None:
    """Why the links in real mail would be refused or distrusted, if they would be."""
    if settings.mail_backend == "smtp" and not settings.public_base_url.startswith("https://"):
        return (f"PUBLIC_BASE_URL={settings.public_base_url} is not https:// while mail goes "
                "out over SMTP: Gmail and Yahoo ignore a List-Unsubscribe URL that is not "
                "https, and readers' clients warn about plain-http links. Serve the web app "
                "over TLS and set PUBLIC_BASE_URL=https://...")
    return None


CHECKS: list[Callable[[Settings], Check]] = [
    check_database, check_redis, check_smtp, check_secret_key, check_templates, check_links,
]


def run_checks(settings: Settings) -> list[Check]:
    """Run every check, each whatever the others found."""
    return [check(settings) for check in CHECKS]
