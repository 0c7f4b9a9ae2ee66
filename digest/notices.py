"""One-off emails the subscribe form causes: the confirmation request (double opt-in) and,
when the address is already subscribed, a notice to its owner instead.

Each is an email type under `templates/email/<name>/` rendered by `render_email`, and goes
out through the configured sender like a digest, with the same List-Unsubscribe headers: the
owner of an address someone else typed in can stop it with one click.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from .render import one_line, render_email, safe_url, topic_list
from .send import OutgoingEmail, SendResult, open_sender
from .settings import Settings
from .tokens import MAX_AGE_SECONDS, Purpose, link

# Template folder -> the X-Digest-Kind (and Message-ID prefix) of its emails.
KINDS = {"confirm": "confirm", "already_subscribed": "notice"}


def confirm_template_context(
    recipient: str, topics: str, confirm_url: str, unsubscribe_url: str, site_url: str,
    expires_hours: int,
) -> dict[str, Any]:
    """The variables templates/email/confirm/* use."""
    _check_links(confirm_url=confirm_url, unsubscribe_url=unsubscribe_url, site_url=site_url)
    return {
        "recipient": one_line(recipient),
        "topics": topic_list(topics),
        "confirm_url": confirm_url,
        "unsubscribe_url": unsubscribe_url,
        "site_url": site_url,
        "expires_hours": expires_hours,
    }


def already_subscribed_template_context(
    recipient: str, topics: str, preferences_url: str, unsubscribe_url: str, site_url: str
) -> dict[str, Any]:
    """The variables templates/email/already_subscribed/* use."""
    _check_links(preferences_url=preferences_url, unsubscribe_url=unsubscribe_url,
                 site_url=site_url)
    return {
        "recipient": one_line(recipient),
        "topics": topic_list(topics),
        "preferences_url": preferences_url,
        "unsubscribe_url": unsubscribe_url,
        "site_url": site_url,
    }


def _check_links(**urls: str) -> None:
    for label, url in urls.items():
        if not safe_url(url):
            raise ValueError(f"{label} must be an http(s) URL, got {url!r}")


def notice_context(
    settings: Settings, template: str, subscriber_id: int, email: str, topics: str
) -> dict[str, Any]:
    """The template context of `template` for one subscriber, with freshly signed links."""
    unsubscribe_url = link(settings, Purpose.UNSUBSCRIBE, subscriber_id)
    site_url = settings.public_base_url
    if template == "confirm":
        max_age = MAX_AGE_SECONDS[Purpose.CONFIRM] or 0
        return confirm_template_context(
            email, topics, link(settings, Purpose.CONFIRM, subscriber_id), unsubscribe_url,
            site_url, max_age // 3600,
        )
    if template == "already_subscribed":
        return already_subscribed_template_context(
            email, topics, link(settings, Purpose.PREFERENCES, subscriber_id), unsubscribe_url,
            site_url,
        )
    raise ValueError(f"not a notice template: {template!r}")


def compose_notice(
    settings: Settings,
    template: str,
    subscriber_id: int,
    email: str,
    topics: str,
    now: datetime | None = None,
) -> OutgoingEmail:
    now = now or datetime.now(timezone.utc)
    kind = KINDS[template]
    rendered = render_email(template, notice_context(settings, template, subscriber_id, email,
                                                     topics))
    # Unique, unlike a digest's: two confirmations on one day are two different messages.
    local = f"{kind}.{now:%Y-%m-%d}.{int(subscriber_id)}.{secrets.token_hex(8)}"
    return OutgoingEmail(
        to=email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=f"<{local}@{settings.mail_domain}>",
        unsubscribe_url=link(settings, Purpose.UNSUBSCRIBE, subscriber_id),
        date=now,
        kind=kind,
    )


def send_notice(
    settings: Settings, template: str, subscriber_id: int, email: str, topics: str
) -> SendResult:
    """Render and send one notice now, over its own connection to the mail backend."""
    message = compose_notice(settings, template, subscriber_id, email, topics)
    with open_sender(settings) as sender:
        return sender.send(message)
