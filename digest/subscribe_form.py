"""The subscribe form: rate limits, validation, and the sign-up request recorded for the
background sender (`notices`), which emails what the request earns."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from . import db, notices, ratelimit
from .lifecycle import Signup, record_signup_request, signup_of, signup_requests_since
from .settings import Settings
from .subscribers import (
    InvalidForm,
    Preferences,
    SubscriberError,
    normalize_email,
    read_preferences,
)


def signup(
    settings: Settings,
    values: Mapping[str, str],
    client: str,
    source: str = "web",
    now: datetime | None = None,
) -> Signup:
    """The subscribe form: rate limits, validation, and the request recorded for the sender.

    Raises RateLimited (too many attempts from `client`, or for the address) or InvalidForm
    (per field). Otherwise the same work is done whatever the address is (new, pending,
    active or suppressed), and the email it earns goes out in the background, after this
    transaction: the answer, and its timing, tell the visitor nothing about the address.
    """
    per_client = ratelimit.hit(settings.redis_url, "subscribe-client", client,
                               settings.subscribe_rate_limit_per_hour, 3600)
    if not per_client.allowed:
        raise ratelimit.RateLimited(
            "Too many subscribe requests from your network. Please try again later.",
            per_client.retry_after,
        )
    address, prefs = _read_signup_form(settings, values)
    limit = settings.subscribe_address_limit_per_day
    per_address = ratelimit.hit(settings.redis_url, "subscribe-address", address, limit, 86400)
    now = now or datetime.now(timezone.utc)
    with db.session_scope(settings) as session:
        if not per_address.counted and limit > 0:
            # Redis is down: the requests of the last day are the count.
            day_ago = now - timedelta(days=1)
            per_address = ratelimit.Verdict(
                signup_requests_since(session, address, day_ago) < limit, 0, limit, 3600)
        if not per_address.allowed:
            # Says nothing about the address itself: only that it was asked for too often.
            raise ratelimit.RateLimited(
                "This address was submitted too many times today. Please try again tomorrow.",
                per_address.retry_after,
            )
        request = record_signup_request(session, address, prefs, source=source, now=now)
        result = signup_of(request)
    notices.send_in_background(settings, request.id)
    return result


def _read_signup_form(settings: Settings, values: Mapping[str, str]) -> tuple[str, Preferences]:
    """The address and choices of the subscribe form; InvalidForm names each bad field."""
    errors: dict[str, str] = {}
    address = ""
    try:
        address = normalize_email(values.get("email", ""))
    except SubscriberError as exc:
        errors["email"] = str(exc)
    try:
        prefs = read_preferences(values, settings.default_time_zone,
                                 settings.default_send_hour, settings.default_papers_per_digest,
                                 settings.weekly_papers_per_digest)
    except InvalidForm as exc:
        errors.update(exc.errors)
    if errors:
        raise InvalidForm(errors)
    return address, prefs
