"""Health checks for `digest health` and operators: is each service this deployment uses up?"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text

from . import db
from .settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_database(settings: Settings) -> Check:
    try:
        with db.engine_for(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = db.current_revision(settings)
    except Exception as exc:  # noqa: BLE001 - every failure is "down", with its reason
        return Check("database", False, f"cannot connect: {exc}. Check DATABASE_URL.")
    if revision is None:
        return Check("database", False, "reachable but empty: run `digest db upgrade`.")
    return Check("database", True, f"ok, schema revision {revision}")


def check_redis(settings: Settings) -> Check:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=3,
                                      socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001
        return Check("redis", False, f"cannot reach {settings.redis_url}: {exc}. "
                     "Check REDIS_URL and that redis-server runs.")
    return Check("redis", True, f"ok, {settings.redis_url}")


def check_smtp(settings: Settings) -> Check:
    if settings.mail_backend != "smtp":
        return Check("smtp", True, f"not used (MAIL_BACKEND={settings.mail_backend})")
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        smtp_class = smtplib.SMTP_SSL if settings.smtp_security == "tls" else smtplib.SMTP
        with smtp_class(settings.smtp_host, settings.smtp_port,
                        timeout=min(settings.smtp_timeout, 10)) as client:
            client.ehlo()
            if settings.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if settings.smtp_username:
                client.login(settings.smtp_username, settings.smtp_password)
            client.noop()
    except Exception as exc:  # noqa: BLE001
        return Check("smtp", False, f"cannot use {where}: {exc}. Check the SMTP_* settings.")
    return Check("smtp", True, f"ok, {where} ({settings.smtp_security})")


CHECKS: list[Callable[[Settings], Check]] = [check_database, check_redis, check_smtp]


def run_checks(settings: Settings) -> list[Check]:
    """Run every check in order, stopping at the first service that is down."""
    results = []
    for check in CHECKS:
        result = check(settings)
        results.append(result)
        if not result.ok:
            break
    return results
