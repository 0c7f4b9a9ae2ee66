"""What the subscribe and preferences forms share: the CSRF token and the choices they offer.

The CSRF token lives in the (signed) session cookie; a form that comes back without it, or
with another, gets a page that says how to try again.
"""

from __future__ import annotations

import hmac
import secrets
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from flask import abort, request, session

from ..models import Cadence
from ..subscribers import MAX_PAPERS_PER_DIGEST, WEEKDAYS
from .context import current_settings
from .responses import message

PAPER_CHOICES = (3, 5, 10, 15, 20, 30, MAX_PAPERS_PER_DIGEST)


@cache
def time_zones() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z or z == "UTC")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not sent or not expected or not hmac.compare_digest(str(sent), str(expected)):
        abort(message(
            "This form has expired",
            "For your safety, forms stop working after a while or when cookies are blocked. "
            "Go back, reload the page and try again.",
            status=400,
        ))


def form_choices() -> dict[str, Any]:
    return {
        "time_zones": time_zones(),
        "hours": list(range(24)),
        "paper_choices": PAPER_CHOICES,
        "cadences": [c.value for c in Cadence],
        "weekdays": list(enumerate(WEEKDAYS)),
        "default_time_zone": current_settings().default_time_zone,
        # The papers a new reader who chose no length gets: subscribers.default_papers.
        "default_papers": current_settings().default_papers_per_digest,
        "weekly_papers": current_settings().weekly_papers_per_digest,
        "kept_days": kept_days(),
    }


def kept_days() -> dict[str, int]:
    """How long each kind of row about a reader is kept (0: until they delete it), from the
    RETENTION_* settings `digest prune` applies: what the privacy text on the pages says."""
    settings = current_settings()
    return {
        "signup_requests": settings.retention_signup_requests_days,
        "events": settings.retention_subscriber_events_days,
        "deliveries": settings.retention_deliveries_days,
        "delivery_items": settings.retention_delivery_items_days,
        "feedback": settings.retention_feedback_days,
    }
