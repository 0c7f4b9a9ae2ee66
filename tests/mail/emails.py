"""Sample emails for the mail tests, and their parts read back."""

from __future__ import annotations

from datetime import date, datetime, timezone
from email.message import EmailMessage
from typing import Any

from digest.mail.message import OutgoingEmail, message_id_for
from digest.settings import Settings

SENT_AT = datetime(2026, 11, 23, 7, 0, 5, tzinfo=timezone.utc)
UNSUBSCRIBE = "https://digest.test/unsubscribe/one-click?token=abc.DEF-123"
MAILTO = "<mailto:unsubscribe@digest.test?subject=unsubscribe>"


def make_email(settings: Settings, n: int = 1, **overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        to=f"reader{n}@example.org",
        subject=f"Your papers for 23 Nov: β-OPSD and {n} more",
        text=f"Hello Jörg,\n\n1. β-OPSD: low-rank adapters, {n}\nhttps://arxiv.org/abs/2611.0{n}\n",
        html=f"<p>Hello Jörg,</p><ol><li>β-OPSD: low-rank adapters, {n}</li></ol>\n",
        message_id=message_id_for(settings, "digest", n, date(2026, 11, 23)),
        unsubscribe_url=f"{UNSUBSCRIBE}{n}",
        date=SENT_AT,
    )
    fields.update(overrides)
    return OutgoingEmail(**fields)


def parts(msg: EmailMessage) -> dict[str, str]:
    """Each part's decoded text, with the wire's CRLF line ends read as newlines."""
    return {
        p.get_content_type(): p.get_content().replace("\r\n", "\n")  # type: ignore[attr-defined]
        for p in msg.iter_parts()
    }

