"""Celery tasks: each parses JSON-safe arguments, calls one library function, and reports."""

from __future__ import annotations

from datetime import date, datetime, timezone

from digest import db, notices, pipeline, retention
from digest.ingest import ConnectorOptions, ingest, source_list
from digest.settings import Settings

from .app import app


def _settings() -> Settings:
    return app.conf.digest_settings  # type: ignore[no-any-return]


@app.task(acks_late=True)
def tick(now: str | None = None) -> dict[str, object]:
    """Plan the subscribers whose local send hour has come and enqueue their batches."""
    moment = datetime.fromisoformat(now) if now else datetime.now(timezone.utc)
    batches = subscribers = 0
    for day, ids in pipeline.plan_due_batches(_settings(), moment):  # enqueued as planned
        send_batch.delay(day.isoformat(), ids)
        batches, subscribers = batches + 1, subscribers + len(ids)
    return {"batches": batches, "subscribers": subscribers}


@app.task(acks_late=True)
def send_batch(day: str, subscriber_ids: list[int]) -> dict[str, object]:
    """Send one batch of the day's digests; safe to run twice."""
    return pipeline.send_planned_batch(
        _settings(), date.fromisoformat(day), subscriber_ids
    ).as_dict()


@app.task(acks_late=True)
def ingest_sources() -> dict[str, object]:
    """Ingest the configured INGEST_SOURCES; a broken source is reported, not raised."""
    settings = _settings()
    with db.session_scope(settings) as session:
        report = ingest(
            session, source_list(settings.ingest_sources), None, settings.http_timeout,
            allow_private_networks=settings.ingest_allow_private_networks,
            connectors=ConnectorOptions.from_settings(settings),
        )
    return {
        "inserted": report.inserted,
        "updated": report.updated,
        "rejected": len(report.rejected),
        "errors": report.errors,
    }


@app.task(acks_late=True)
def send_signup_emails() -> dict[str, object]:
    """Send the sign-up emails a stopped web process left unsent; safe to run twice."""
    return {"sent": notices.send_pending_signup_emails(_settings())}


@app.task(acks_late=True)
def prune() -> dict[str, object]:
    """Delete what the retention settings no longer keep, in short batches; safe to run twice."""
    return retention.prune(_settings()).as_dict()
