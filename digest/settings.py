"""Every setting in one typed object, read once from the environment and an optional `.env`.

The rest of the code receives a `Settings`; nothing else reads `os.environ`. `.env.example`
documents each variable below with its default, and a test keeps the two in step.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent


class SettingsError(ValueError):
    """A setting has a value the service cannot use; the message says which and how to fix it."""


def _env_name(name: str) -> str:
    return name.upper()


@dataclass(frozen=True)
class Settings:
    """Configuration of one deployment. Field names are the lower-case environment variables."""

    # Storage
    data_dir: Path = Path("data")
    database_url: str = ""  # empty: SQLite file under data_dir

    # Mail
    mail_backend: str = "file"  # file | smtp | console
    outbox_dir: Path = Path("")  # empty: data_dir / "outbox"
    mail_from: str = "Paper Digest <digest@localhost>"
    mail_reply_to: str = ""
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "none"  # none | starttls | tls
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_timeout: float = 30.0
    smtp_connections: int = 2  # per process, each in its own thread, many messages each
    smtp_pipelining: bool = True  # RFC 2920 when the server offers it: 2 round trips, not 4

    # Links and identity
    public_base_url: str = "http://localhost:8000"
    list_id: str = "Paper Digest <daily.digest.localhost>"
    unsubscribe_mailto: str = ""  # empty: unsubscribe@<domain of mail_from>
    secret_key: str = field(default="", repr=False)  # empty: generated once into data_dir

    # Unsubscribe by email from a mailbox (`digest unsubscribe-mail --imap`); empty host: off
    imap_host: str = ""
    imap_port: int = 993
    imap_security: str = "tls"  # tls | starttls | none
    imap_username: str = ""
    imap_password: str = field(default="", repr=False)
    imap_mailbox: str = "INBOX"

    # Digest and ranking
    default_send_hour: int = 7
    default_time_zone: str = "UTC"
    default_papers_per_digest: int = 10
    weekly_papers_per_digest: int = 20  # a new weekly reader's length: a week holds more
    lookback_days: int = 3
    min_relevance: float = 0.01  # the floor: below it a paper only shares a stray word
    relative_relevance: float = 0.1  # and below this share of the reader's best match today
    trending_boost: float = 1.0  # a paper at the top of the trending signal scores up to 2x
    recency_half_life_days: float = 3.0
    semantic_weight: float = 0.7  # share of embedding similarity; used only with [semantic]
    mmr_lambda: float = 0.95  # 1: pure score order; lower: more diverse digests
    expansion_weight: float = 0.5  # share of the pull toward their best matches of the day; 0: off
    feedback_like_weight: float = 0.5  # Rocchio: pull toward papers the reader liked
    feedback_dislike_weight: float = 0.5  # Rocchio: push away from papers they disliked

    # Ingest
    http_timeout: float = 20.0  # a URL's whole fetch: DNS, connect, redirects, every byte
    ingest_allow_private_networks: bool = False  # let URLs reach loopback and private addresses

    # What the scheduled ingest reads: source names (arxiv:cs.CL, arxiv-api:cs.LG, daily-papers,
    # rss:URL), URLs or paths, separated by spaces or commas (digest/ingest/connectors.py)
    ingest_sources: str = ""
    ingest_interval_minutes: int = 60
    arxiv_listing_url: str = "https://rss.arxiv.org/rss/{category}"  # arxiv:CAT
    arxiv_api_url: str = "https://export.arxiv.org/api/query"  # arxiv-api:CAT
    arxiv_api_delay_seconds: float = 3.0  # between two arXiv requests, as arXiv's terms ask
    arxiv_api_page_size: int = 200  # results per API request (arXiv allows up to 2,000)
    arxiv_api_max_results: int = 2000  # at most this many per category and run
    daily_papers_url: str = "https://huggingface.co/api/daily_papers"  # daily-papers

    # Scale-out (Celery workers)
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str = ""  # empty: redis_url
    batch_size: int = 100
    run_jobs: int = 0  # `digest run`: processes sharing a big day's batches; 0: one per core
    beat_interval_minutes: float = 15.0
    claim_lease_seconds: int = 600
    ledger_window: int = 25
    send_rate_per_second: float = 0.0  # 0: unlimited
    smtp_retry_attempts: int = 4
    smtp_retry_base_delay: float = 0.5
    smtp_retry_max_delay: float = 8.0

    # Web app: subscribe, confirm, preferences, unsubscribe
    trusted_proxy_count: int = 0  # reverse proxies in front whose X-Forwarded-For is believed
    subscribe_rate_limit_per_hour: int = 10  # subscribe attempts per client address
    subscribe_address_limit_per_day: int = 5  # subscribe attempts per email address
    confirm_resend_minutes: int = 10  # a pending address gets at most one confirmation per window
    archive_link_days: int = 60  # a digest's "View in browser" page works this long (<= items kept)
    first_digest: str = "offer"  # after confirming: offer | send | off today's digest at once

    # Provider webhooks (bounces, complaints, unsubscribes); empty: that endpoint is off
    webhook_secret: str = field(default="", repr=False)  # generic JSON webhook, HMAC-SHA256
    webhook_max_age_seconds: int = 300  # older (or newer) signed timestamps are replays
    sendgrid_webhook_public_key: str = ""  # base64 DER ECDSA key from SendGrid's settings
    mailgun_webhook_signing_key: str = field(default="", repr=False)
    postmark_webhook_username: str = ""
    postmark_webhook_password: str = field(default="", repr=False)

    # DKIM signing of outgoing mail; empty path: messages go out unsigned
    dkim_private_key_path: str = ""
    dkim_selector: str = "digest"
    dkim_domain: str = ""  # empty: the domain of MAIL_FROM

    # Retention (`digest prune`, daily on beat): days each kind of row is kept; 0 keeps forever
    retention_delivery_items_days: int = 60  # which papers each digest carried ("never twice")
    retention_deliveries_days: int = 180  # the digests themselves (history, status)
    retention_feedback_days: int = 365  # clicks and votes the profile learns from
    retention_subscriber_events_days: int = 365  # history; the latest opt-in is always kept
    retention_signup_requests_days: int = 30
    retention_webhook_events_days: int = 30  # the webhook replay and retry ledger
    retention_papers_days: int = 0  # papers nobody was sent; 0: every paper is kept
    retention_embeddings_days: int = 30  # paper vectors under DATA_DIR/embeddings
    retention_batch_size: int = 5000  # rows per delete: each batch is one short transaction

    # Prometheus metrics (digest/metrics.py)
    metrics_token: str = field(default="", repr=False)  # empty: the web app's /metrics is off
    metrics_port: int = 0  # a Celery worker's exporter; 0: off
    metrics_address: str = "127.0.0.1"  # where the worker's exporter listens

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Build settings from `.env` (if present) overlaid by the process environment."""
        values: dict[str, str] = {}
        if env_file and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = values.get(_env_name(f.name))
            if raw is None or raw == "":
                continue
            kwargs[f.name] = _coerce(f.name, f.type, raw)
        return cls(**kwargs).resolved()

    def resolved(self) -> Settings:
        """Fill the derived defaults (paths under data_dir, SQLite URL) and validate."""
        data_dir = Path(self.data_dir).expanduser()
        changes: dict[str, Any] = {"data_dir": data_dir}
        if not self.database_url:
            changes["database_url"] = f"sqlite:///{(data_dir / 'digest.sqlite3').as_posix()}"
        if str(self.outbox_dir) in ("", "."):
            changes["outbox_dir"] = data_dir / "outbox"
        if self.mail_backend not in ("file", "smtp", "console"):
            raise SettingsError(
                f"MAIL_BACKEND={self.mail_backend!r} is not one of file, smtp, console."
            )
        if self.smtp_security not in ("none", "starttls", "tls"):
            raise SettingsError(
                f"SMTP_SECURITY={self.smtp_security!r} is not one of none, starttls, tls."
            )
        if not self.celery_broker_url:
            changes["celery_broker_url"] = self.redis_url
        if not 0 <= self.default_send_hour <= 23:
            raise SettingsError("DEFAULT_SEND_HOUR must be an hour from 0 to 23.")
        _check_digest_lengths(self)
        if self.trending_boost <= -1:
            raise SettingsError(
                f"TRENDING_BOOST={self.trending_boost} would give trending papers no score "
                "at all; use a number above -1 (0 turns the boost off)."
            )
        _check_relevance_cuts(self)
        if self.postmark_webhook_username and not self.postmark_webhook_password:
            raise SettingsError(
                "POSTMARK_WEBHOOK_USERNAME is set but POSTMARK_WEBHOOK_PASSWORD is empty; "
                "set both, or neither to turn the Postmark webhook off."
            )
        if self.metrics_token and len(self.metrics_token) < 16:
            raise SettingsError(
                "METRICS_TOKEN is too short to keep /metrics private; use at least 16 random "
                "characters: python3 -c 'import secrets;print(secrets.token_urlsafe(32))'."
            )
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"METRICS_PORT={self.metrics_port} is not a port (0 turns it off).")
        _check_retention(self)
        _check_unsubscribe_by_mail(self)
        _check_reading_links(self)
        _check_connectors(self)
        return _replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property  # read per message: parse MAIL_FROM once
    def mail_domain(self) -> str:
        """The domain of the From address, used for Message-IDs and the unsubscribe mailto."""
        from email.utils import parseaddr

        address = parseaddr(self.mail_from)[1]
        return address.rpartition("@")[2] or "localhost"

    @property
    def dkim_signing_domain(self) -> str:
        """The d= of our DKIM signatures: DKIM_DOMAIN, or the domain of MAIL_FROM (aligned)."""
        return self.dkim_domain or self.mail_domain

    @property
    def unsubscribe_address(self) -> str:
        return self.unsubscribe_mailto or f"unsubscribe@{self.mail_domain}"

    def signing_key(self) -> str:
        """SECRET_KEY, or a random key generated once and kept in data_dir (embedded default).

        Generating it keeps a newcomer's links stable across runs without shipping a secret.
        With any other database SECRET_KEY is required (SettingsError): processes sharing a
        database must share the key, and one generated per DATA_DIR would not be shared.
        """
        return self._signing_key

    @property
    def uses_embedded_database(self) -> bool:
        """The SQLite file under DATA_DIR that nothing else can share (DATABASE_URL unset)."""
        return self.database_url == f"sqlite:///{(self.data_dir / 'digest.sqlite3').as_posix()}"

    @cached_property  # signed links are made per email: read the key file once
    def _signing_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        if not self.uses_embedded_database:
            # A generated key lives in one DATA_DIR: the web app, workers and beat started
            # elsewhere would each make their own, and refuse each other's links.
            raise SettingsError(
                "SECRET_KEY is not set, but DATABASE_URL names a database that several "
                "processes (web app, workers, beat) can share, and they must sign links with "
                "the same key. Set SECRET_KEY to one long random value for all of them, e.g. "
                "the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        key_file = self.data_dir / "secret_key"
        if key_file.is_file():
            return key_file.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        return key


# Of RFC 5321's 64 characters of a local part, what "+<id>-<tag>" (mailto.py) leaves.
UNSUBSCRIBE_LOCAL_PART_MAX = 36


def _check_unsubscribe_by_mail(settings: Settings) -> None:
    """Refuse an UNSUBSCRIBE_MAILTO whose per-subscriber addresses would be too long, and a
    mailbox the service could not read."""
    if not 0 < len(settings.unsubscribe_address.rpartition("@")[0]) <= UNSUBSCRIBE_LOCAL_PART_MAX:
        raise SettingsError(
            f"UNSUBSCRIBE_MAILTO={settings.unsubscribe_mailto!r} needs 1 to "
            f"{UNSUBSCRIBE_LOCAL_PART_MAX} characters before the @: each email adds "
            "+<id>-<tag> to them, and an address's local part is at most 64 (RFC 5321)."
        )
    if settings.imap_security not in ("tls", "starttls", "none"):
        raise SettingsError(
            f"IMAP_SECURITY={settings.imap_security!r} is not one of tls, starttls, none."
        )
    if not 0 < settings.imap_port <= 65535:
        raise SettingsError(f"IMAP_PORT={settings.imap_port} is not a port (IMAPS is 993).")


def _check_relevance_cuts(settings: Settings) -> None:
    """MIN_RELEVANCE is a cosine floor, RELATIVE_RELEVANCE a share of the reader's best match."""
    if not 0 <= settings.min_relevance < 1:
        raise SettingsError(
            f"MIN_RELEVANCE={settings.min_relevance} must be from 0 (any match counts) to 1."
        )
    if not 0 <= settings.relative_relevance <= 1:
        raise SettingsError(
            f"RELATIVE_RELEVANCE={settings.relative_relevance} must be from 0 (only "
            "MIN_RELEVANCE counts) to 1 (only papers as relevant as the best)."
        )
    if not 0 <= settings.expansion_weight < 1:
        raise SettingsError(
            f"EXPANSION_WEIGHT={settings.expansion_weight} must be from 0 (off) to below 1 "
            "(at 1 the topics themselves would no longer count)."
        )


# A reader chooses from 1 to this many papers per digest (every door: see subscribers.py).
MAX_PAPERS_PER_DIGEST = 50


def _check_digest_lengths(settings: Settings) -> None:
    """A default length a reader could not choose would be refused on every new subscriber."""
    for name in ("default_papers_per_digest", "weekly_papers_per_digest"):
        value = getattr(settings, name)
        if not 1 <= value <= MAX_PAPERS_PER_DIGEST:
            raise SettingsError(
                f"{name.upper()}={value} must be from 1 to {MAX_PAPERS_PER_DIGEST} papers."
            )


FIRST_DIGEST_CHOICES = ("offer", "send", "off")

def _check_connectors(settings: Settings) -> None:
    """Refuse connector settings that would break arXiv's terms or every request."""
    if "{category}" not in settings.arxiv_listing_url:
        raise SettingsError(
            f"ARXIV_LISTING_URL={settings.arxiv_listing_url!r} must contain {{category}}, where "
            "the category goes (https://rss.arxiv.org/rss/{category})."
        )
    if settings.arxiv_api_delay_seconds < 0:
        raise SettingsError("ARXIV_API_DELAY_SECONDS must be 0 or more (arXiv asks for 3).")
    if not 1 <= settings.arxiv_api_page_size <= 2000:
        raise SettingsError(
            f"ARXIV_API_PAGE_SIZE={settings.arxiv_api_page_size} must be from 1 to 2000, the "
            "most arXiv answers in one request."
        )
    if settings.arxiv_api_max_results < 1:
        raise SettingsError("ARXIV_API_MAX_RESULTS must be at least 1.")


# Retention floors: below them pruning would break a promise the service makes.
CATCH_UP_DAYS = 7  # `digest run --date` this many days back still never resends a paper
PROVIDER_RETRY_DAYS = 3  # providers retry a webhook for up to a day (Mailgun 8 h, SendGrid 24 h)
HISTORY_FLOOR_DAYS = 7  # a confirmation link (2 days) outlives neither its request nor history


def retention_floors(settings: Settings) -> dict[str, int]:
    """The fewest days each retention setting may keep (when not 0), and so what `digest
    prune` can promise: a paper that can still be a candidate keeps its delivery items, an
    event a provider may still retry keeps its id."""
    candidate_window = settings.lookback_days + CATCH_UP_DAYS
    webhook_days = max(PROVIDER_RETRY_DAYS, -(-settings.webhook_max_age_seconds // 86400) + 1)
    return {
        "retention_delivery_items_days": candidate_window,
        "retention_deliveries_days": max(candidate_window, settings.retention_delivery_items_days),
        "retention_papers_days": candidate_window,
        "retention_embeddings_days": candidate_window,
        "retention_webhook_events_days": webhook_days,
        "retention_subscriber_events_days": HISTORY_FLOOR_DAYS,
        "retention_signup_requests_days": HISTORY_FLOOR_DAYS,
        "retention_feedback_days": 1,
    }


def _check_retention(settings: Settings) -> None:
    """Refuse retention settings under which pruning would resend a paper or replay an event."""
    for name, floor in retention_floors(settings).items():
        days = getattr(settings, name)
        if days < 0 or 0 < days < floor:
            raise SettingsError(
                f"{_env_name(name)}={days} is too short: use 0 (keep forever) or at least "
                f"{floor} days{_RETENTION_REASONS[name]}."
            )
    if settings.retention_deliveries_days and not settings.retention_delivery_items_days:
        raise SettingsError(
            f"RETENTION_DELIVERIES_DAYS={settings.retention_deliveries_days} would delete "
            "digests whose papers RETENTION_DELIVERY_ITEMS_DAYS=0 keeps forever (a digest's "
            "papers go with it): set it to 0 too, or give the items a retention."
        )
    items, papers = settings.retention_delivery_items_days, settings.retention_papers_days
    if papers and items and papers >= items:
        raise SettingsError(
            f"RETENTION_PAPERS_DAYS={papers} must be below RETENTION_DELIVERY_ITEMS_DAYS="
            f"{items}: a paper is deleted only while its delivery items show nobody got it."
        )
    if settings.retention_batch_size < 1:
        raise SettingsError("RETENTION_BATCH_SIZE must be at least 1 (rows per delete).")


def _check_reading_links(settings: Settings) -> None:
    """A "View in browser" page is built from the digest's delivery items: refuse a promise
    of links that outlive the rows they show. And FIRST_DIGEST must be one of its choices."""
    if settings.first_digest not in FIRST_DIGEST_CHOICES:
        raise SettingsError(f"FIRST_DIGEST={settings.first_digest!r} is not one of "
                            f"{', '.join(FIRST_DIGEST_CHOICES)}.")
    days, items = settings.archive_link_days, settings.retention_delivery_items_days
    if days < 1:
        raise SettingsError(f"ARCHIVE_LINK_DAYS={days} must be at least 1.")
    if items and days > items:
        raise SettingsError(
            f"ARCHIVE_LINK_DAYS={days} is longer than RETENTION_DELIVERY_ITEMS_DAYS={items}: a "
            "digest's web page shows its delivery items, which are deleted after that. Lower "
            "ARCHIVE_LINK_DAYS, or keep the items longer."
        )


_RETENTION_REASONS = {
    "retention_delivery_items_days": (
        " (LOOKBACK_DAYS + 7): a paper sent earlier could still be a candidate and be sent again"
    ),
    "retention_deliveries_days": (
        " (and no less than RETENTION_DELIVERY_ITEMS_DAYS): a digest's papers go with it"
    ),
    "retention_papers_days": " (LOOKBACK_DAYS + 7): a candidate paper must stay",
    "retention_embeddings_days": " (LOOKBACK_DAYS + 7): a candidate paper's vector must stay",
    "retention_webhook_events_days": (
        ": providers retry events for up to a day and signed requests live "
        "WEBHOOK_MAX_AGE_SECONDS; an event forgotten sooner would be applied twice"
    ),
    "retention_subscriber_events_days": ": confirmation links rely on recent history",
    "retention_signup_requests_days": ": confirmation links name their request",
    "retention_feedback_days": "",
}


def _replace(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    """Turn an environment string into the field's type, with an error that names the variable."""
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "str")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{_env_name(name)}={raw!r} is not a valid {kind}.") from exc


def setting_names() -> list[str]:
    """Environment variable names of every setting (used to check `.env.example`)."""
    return [_env_name(f.name) for f in fields(Settings)]
