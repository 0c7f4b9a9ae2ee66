"""The Celery app, configured from the same Settings object as everything else, and its schedule."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from digest import metrics, pipeline
from digest.health import link_warning
from digest.settings import Settings, SettingsError


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("paper_digest", include=["workers.tasks"])
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        # Redis redelivers a task whose worker died once visibility_timeout has passed; the
        # delivery ledger makes that redelivery (and any duplicate) harmless.
        broker_transport_options={"visibility_timeout": settings.claim_lease_seconds * 2},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
    )
    app.conf.digest_settings = settings
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    """Beat looks for due subscribers every few minutes; ingest runs on its own schedule;
    what the retention settings no longer keep is pruned once a day.

    Two beats running at once are harmless: planning inserts ledger rows, and a subscriber
    planned by one beat is not planned again by the other.
    """
    schedule: dict[str, dict[str, object]] = {
        "plan-due-digests": {
            "task": "workers.tasks.tick",
            "schedule": timedelta(minutes=max(settings.beat_interval_minutes, 0.01)),
        },
    }
    # The web app sends sign-up emails itself; this sends what a restart left behind.
    schedule["send-signup-emails"] = {
        "task": "workers.tasks.send_signup_emails",
        "schedule": timedelta(minutes=1),
    }
    schedule["prune-old-rows"] = {
        "task": "workers.tasks.prune",
        # Daily, at a fixed hour: the prune goes in short batches and may meet sending.
        "schedule": crontab(hour=3, minute=17),
    }
    if settings.ingest_sources.strip():
        schedule["ingest-sources"] = {
            "task": "workers.tasks.ingest_sources",
            "schedule": timedelta(minutes=max(1, settings.ingest_interval_minutes)),
        }
    return schedule


@worker_init.connect
@beat_init.connect
def refuse_to_start_without_a_shared_key(sender: object = None, **_: object) -> None:
    """Workers sign the links in digests and the web app checks them: with a database they
    share, a key generated per DATA_DIR would not match, and every link would be refused.
    So the worker (or beat) stops before its first task, saying what to set. (Celery logs and
    ignores an exception from a signal handler: SystemExit is what stops it.)"""
    settings = app.conf.digest_settings
    try:
        settings.signing_key()
    except SettingsError as exc:
        raise SystemExit(f"paper-digest: {exc}") from exc
    warning = link_warning(settings)
    if warning:
        logging.getLogger("paper_digest").warning("%s", warning)


@worker_init.connect
def serve_metrics(sender: object = None, **_: object) -> None:
    """The worker's Prometheus exporter (METRICS_PORT), started in the main process before
    the pool forks; with PROMETHEUS_MULTIPROC_DIR it sums what the pool processes count."""
    pool = getattr(sender, "pool_cls", "prefork")
    prefork = "prefork" in str(getattr(pool, "__module__", pool))
    try:
        metrics.serve_worker_metrics(app.conf.digest_settings, prefork=prefork)
    except SettingsError as exc:
        raise SystemExit(f"paper-digest: {exc}") from exc


@worker_process_init.connect
def count_in_this_pool_process(**_: object) -> None:
    metrics.after_fork()


@worker_process_shutdown.connect
@worker_shutdown.connect
def finish_sending(**_: object) -> None:
    """A task returns once its batch is composed and handed to the process's sending thread
    (`pipeline.SendingThread`): before the process exits, that thread sends and records what
    it was handed, so a warm shutdown leaves nothing SENDING."""
    pipeline.SENDING.finish()


app = make_app()
