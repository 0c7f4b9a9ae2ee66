"""Prometheus metrics: every metric the service exports, declared here and nowhere else.

Each name starts with `paper_digest_` and ends with its unit (`_seconds`, or `_total` for a
counter). Labels take a few known values only (an outcome, a provider, a route's rule, a
source's host), never an address, a token or a raw path: a year of scrapes stays small, and no
subscriber is named in the monitoring system.

The library records facts where it learns them (`pipeline`, `journal`, `send`, `ingest`,
`webhooks`, the web app); two doors export them: the web app's `/metrics` (off unless
METRICS_TOKEN is set) and a Celery worker's own HTTP server (METRICS_PORT).

**Several processes.** gunicorn's workers and Celery's prefork children each count in their
own memory, so a scrape of one process would see a fraction of the traffic. With
PROMETHEUS_MULTIPROC_DIR set in the environment, prometheus_client keeps each process's values
in files in that directory and `exposition()` sums them. The directory must be emptied when the
service starts (`wipe_multiprocess_dir`: gunicorn's `on_starting`, the worker's `worker_init`),
belongs to one service only (the web app and the workers each need their own), and a process
that ends is reported with `mark_process_dead` (gunicorn's `child_exit`).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Mapping, Sized
from functools import wraps
from pathlib import Path
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

from .settings import SettingsError

if TYPE_CHECKING:
    from flask import Request, Response

    from .ingest import SourceReport
    from .journal import Recovery
    from .settings import Settings

log = logging.getLogger(__name__)
P = ParamSpec("P")

# prometheus_client reads this variable itself, when it is imported, and it must come from the
# environment (a start-up script, systemd or compose) so that forked children inherit it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    """The directory of the per-process value files, or None in single-process mode."""
    value = os.environ.get(MULTIPROC_ENV, "")
    return Path(value) if value else None


# prometheus_client opens its value files as the metrics below are created: the directory has
# to exist first (a fresh tmpfs after a reboot does not have it).
if (_directory := multiprocess_dir()) is not None:
    _directory.mkdir(parents=True, exist_ok=True)


# --- the metrics ------------------------------------------------------------------------------

DIGEST_OUTCOMES = ("sent", "bounced", "failed", "retrying", "in_doubt", "skipped")
DIGESTS_PLANNED = Counter(
    "paper_digest_digests_planned_total",
    "Delivery rows planned (one per subscriber and local date; a retry is planned again).",
)
DIGESTS = Counter(
    "paper_digest_digests_total",
    "Digests by outcome: sent; bounced (the server refused the address, now suppressed); "
    "failed (could not be sent at all); retrying (temporary failure); in_doubt (the server may "
    "have it, not resent); skipped (nothing matched).",
    ["outcome"],
)
BATCH_SECONDS = Histogram(
    "paper_digest_batch_duration_seconds",
    "Time to claim, score, render, send and record one batch of subscribers.",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
SMTP_ERROR_KINDS = ("connect", "temporary", "permanent", "in_doubt", "dropped")
SMTP_SECONDS = Histogram(
    "paper_digest_smtp_transaction_duration_seconds",
    "One message's MAIL, RCPT and DATA exchange with the SMTP server, whatever its outcome.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SMTP_ERRORS = Counter(
    "paper_digest_smtp_errors_total",
    "SMTP failures: connect (server unreachable or login refused); temporary (4xx); permanent "
    "(5xx); in_doubt (no reply to DATA); dropped (connection lost before the body, retried).",
    ["kind"],
)
INGEST_RESULTS = ("inserted", "updated", "unchanged", "rejected")
INGEST_RECORDS = Counter(
    "paper_digest_ingest_records_total",
    "Ingested paper records by source format, host (or 'file') and result.",
    ["source", "host", "result"],
)
INGEST_FAILURES = Counter(
    "paper_digest_ingest_source_failures_total",
    "Sources that could not be read or stored at all.",
    ["host"],
)
INGEST_LAST_SUCCESS = Gauge(
    "paper_digest_ingest_last_success_timestamp_seconds",
    "Unix time of the last ingest of this host that could be read and stored.",
    ["host"],
    multiprocess_mode="max",  # the newest of any process, living or not
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_REQUESTS = Counter(
    "paper_digest_http_requests_total",
    "Web requests by route rule (not the path, which carries tokens), method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "paper_digest_http_request_duration_seconds",
    "Time the web app took to answer, by route rule and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_EVENTS = Counter(
    "paper_digest_webhook_events_total",
    "Provider events by provider and outcome: applied, duplicate (a retry, applied once) or "
    "ignored (nothing to do, e.g. a soft bounce).",
    ["provider", "outcome"],
)
WEBHOOK_REJECTIONS = {400: "bad_payload", 401: "unauthorized", 403: "forbidden"}
WEBHOOK_REJECTED = Counter(
    "paper_digest_webhook_requests_rejected_total",
    "Webhook requests refused before any event was applied: unauthorized (no signature), "
    "forbidden (a signature that does not verify, a stale timestamp, a replay), bad_payload.",
    ["provider", "reason"],
)



def after_fork() -> None:
    """Show the main counters at 0 from the start, so rate() and alerts have a series before
    the first event. Also called in each process forked after this module was imported
    (gunicorn's post_fork, Celery's worker_process_init): in multiprocess mode a process
    writes only what it touches, and the parent's files are wiped at start."""
    DIGESTS_PLANNED.inc(0)
    for outcome in DIGEST_OUTCOMES:
        DIGESTS.labels(outcome).inc(0)
    for kind in SMTP_ERROR_KINDS:
        SMTP_ERRORS.labels(kind).inc(0)


after_fork()


# --- recording: what the library calls --------------------------------------------------------


def count_planned(pairs: Sized) -> None:
    DIGESTS_PLANNED.inc(len(pairs))


def count_digests(**outcomes: int) -> None:
    """`count_digests(sent=3, skipped=1)`; outcomes are DIGEST_OUTCOMES."""
    for outcome, count in outcomes.items():
        if count:
            DIGESTS.labels(outcome).inc(count)


class _Status(Protocol):
    @property
    def value(self) -> str: ...


def count_outcomes(by_status: Mapping[Any, Sized]) -> None:
    """A window's rows by ledger status, as `pipeline.record_outcomes` closes them. A row it
    marks FAILED is an address the server refused for good: that is a bounce."""
    count_digests(**{
        "bounced" if status.value == "failed" else status.value: len(ids)
        for status, ids in by_status.items()
    })


def count_recovery(recovery: Recovery) -> None:
    """What `journal.resolve_abandoned` settled: a dead attempt's messages the server had
    accepted were sent, and the ones in flight are now in doubt."""
    count_digests(sent=recovery.sent, failed=recovery.failed, in_doubt=recovery.in_doubt)


class _SendResult(Protocol):
    @property
    def outcome(self) -> _Status: ...

    @property
    def in_doubt(self) -> bool: ...


R = TypeVar("R", bound=_SendResult)


def timed_smtp_transaction(transaction: Callable[P, R]) -> Callable[P, R]:
    """Decorates `SMTPSender._transaction`: its latency, and its failure by kind."""

    @wraps(transaction)
    def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        start = perf_counter()
        kind: str | None = "dropped"  # an exception: the connection broke before the body
        try:
            result = transaction(*args, **kwargs)
            kind = _smtp_error_kind(result)
            return result
        finally:
            SMTP_SECONDS.observe(perf_counter() - start)
            if kind is not None:
                SMTP_ERRORS.labels(kind).inc()

    return timed


def _smtp_error_kind(result: _SendResult) -> str | None:
    if result.in_doubt:
        return "in_doubt"
    outcome = result.outcome.value
    return None if outcome == "sent" else outcome


def count_smtp_unreachable() -> None:
    SMTP_ERRORS.labels("connect").inc()


def count_ingest_source(source: SourceReport, now: float | None = None) -> None:
    """One source's report from `ingest.ingest`: its records by result, or its failure."""
    host = source_host(source.origin)
    if source.error:
        INGEST_FAILURES.labels(host).inc()
        return
    kind = source.format or "unknown"
    for result, count in (("inserted", source.inserted), ("updated", source.updated),
                          ("unchanged", source.unchanged), ("rejected", len(source.rejected))):
        INGEST_RECORDS.labels(kind, host, result).inc(count)
    INGEST_LAST_SUCCESS.labels(host).set(time() if now is None else now)


def source_host(origin: str) -> str:
    """A URL's host, a connector's name ("arxiv", "daily-papers"; a feed's host), or "file": a
    label with the few values the operator configured."""
    name, _, rest = origin.partition(":")
    if name in ("rss", "atom"):
        return source_host(rest)
    if name in ("arxiv", "arxiv-api", "daily-papers"):
        return name
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.hostname:
        return parts.hostname.lower()
    return "file"


def count_webhook_events(provider: str, **outcomes: int) -> None:
    """`count_webhook_events("sendgrid", applied=2, duplicate=0, ignored=1)`."""
    for outcome, count in outcomes.items():
        WEBHOOK_EVENTS.labels(provider, outcome).inc(count)


def count_webhook_rejection(provider: str, status: int) -> None:
    WEBHOOK_REJECTED.labels(provider, WEBHOOK_REJECTIONS.get(status, "bad_payload")).inc()


def observe_request(request: Request, response: Response, started: float | None) -> None:
    """One answered web request (Flask's after_request)."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
    if started is not None:
        HTTP_SECONDS.labels(route, method).observe(perf_counter() - started)


# --- exporting -------------------------------------------------------------------------------


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type: this process's, or in
    multiprocess mode every process's, summed."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def _registry() -> CollectorRegistry:
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def bearer_token_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header is `Bearer <token>`, compared in constant time."""
    scheme, _, sent = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(sent.strip().encode(), token.encode())


def wipe_multiprocess_dir() -> None:
    """Remove the value files a previous run of this service left (multiprocess mode only):
    they would be summed forever with the new ones."""
    directory = multiprocess_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def mark_process_dead(pid: int) -> None:
    """A child process ended (gunicorn's child_exit): its live gauges stop counting."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_worker_metrics(settings: Settings, prefork: bool) -> bool:
    """A Celery worker's exporter: /metrics on METRICS_ADDRESS:METRICS_PORT from the main
    process, which forks the pool after this. False when METRICS_PORT is 0 (off).

    A prefork pool counts in its children, so it needs multiprocess mode; without it the
    exporter would show the main process's zeros, and refusing is kinder than that.
    """
    wipe_multiprocess_dir()
    if not settings.metrics_port:
        return False
    if prefork and multiprocess_dir() is None:
        raise SettingsError(
            f"METRICS_PORT={settings.metrics_port} needs PROMETHEUS_MULTIPROC_DIR in a prefork "
            "worker's environment (its pool processes do the counting; .env alone is not read "
            "by prometheus_client): export it as a directory of this worker's own, e.g. "
            "/tmp/paper-digest-metrics, or run with --pool=solo or --pool=threads."
        )
    try:
        start_http_server(settings.metrics_port, settings.metrics_address, registry=_registry())
    except OSError as exc:
        raise SettingsError(
            f"cannot serve metrics on METRICS_ADDRESS={settings.metrics_address} "
            f"METRICS_PORT={settings.metrics_port} ({exc}); give each worker on a host a port "
            "of its own."
        ) from exc
    log.info("metrics at http://%s:%d/metrics", settings.metrics_address, settings.metrics_port)
    return True
