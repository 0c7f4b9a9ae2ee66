"""Reading on the web: a past digest behind its "View in browser" link, and today's digest
sent at once after confirming (FIRST_DIGEST).

The digest page is built from the ledger (`archive.shown_digest`) and its link names one
reader and one date, signed (`tokens.read_archive_claim`): a forged or altered link is a
400, an old one a 410, one for a digest that was never sent a 404. The first digest is
planned in the ledger here and sent by a background thread (`first_digest`), so the
request never waits on the mail server.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from .. import archive, db, first_digest, subscribers, tokens
from ..models import Cadence, Subscriber
from ..render.content import engagement
from ..render.filters import author_line, long_date, safe_url, shorten
from ..tokens import Purpose
from .context import current_settings, now
from .forms import check_csrf
from .links import preferences_path, read_claim
from .responses import LinkError

bp = Blueprint("reading", __name__)
for _filter in (author_line, long_date, safe_url, shorten, engagement):
    bp.add_app_template_filter(_filter)


@bp.get("/archive/<token>")
def digest_page(token: str) -> Any:
    settings = current_settings()
    claim, day = read_archive_claim(token)
    with db.session_scope(settings) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        try:
            shown = archive.shown_digest(s, settings, subscriber.id, day, now().date())
        except archive.DigestTooOld as exc:
            raise LinkError(str(exc), 410) from exc
        except archive.DigestNotShown as exc:
            raise LinkError(str(exc), 404) from exc
        return render_template(
            "digest.html",
            digest=shown,
            subscriber=subscriber,
            topics=subscriber.profile.topics,
            feedback=feedback_path(subscriber),
            tracking=subscriber.click_tracking,
            preferences_url=preferences_path(subscriber),
        )


@bp.post("/first-digest/<token>")
def send_first_digest(token: str) -> Any:
    """The confirmed page's button: today's digest now (a weekly reader's, this week's),
    through the ledger (once a day, or once a week)."""
    check_csrf()
    settings = current_settings()
    claim = read_claim(Purpose.PREFERENCES, token)
    with db.session_scope(settings) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        subscriber_id, weekly = subscriber.id, subscriber.cadence is Cadence.WEEKLY
        trending = bool(subscriber.profile and subscriber.profile.trending_fallback)
    started = first_digest.start(settings, subscriber_id, now())
    return render_template(
        "first_digest.html", started=started, weekly=weekly, trending_fallback=trending,
        preferences_url=f"/preferences/{token}",
    )


def read_archive_claim(token: str) -> tuple[tokens.Claim, Any]:
    """Whose digest of which day a link shows, if it is genuine and not too old."""
    try:
        return tokens.read_archive_claim(current_settings(), token)
    except tokens.ExpiredToken as exc:
        days = current_settings().archive_link_days
        raise LinkError(
            f"Digests stay on the web for {days} days; this link is older.", 410
        ) from exc
    except tokens.InvalidToken as exc:
        raise LinkError("This link is not valid. Copy the whole link from the email.", 400) from exc


def feedback_path(subscriber: Subscriber) -> str:
    """The reader's "more / less like this" (and, if they chose it, click) link base."""
    return "/feedback/" + tokens.make_token(current_settings(), Purpose.FEEDBACK, subscriber)
