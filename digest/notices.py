"""One-off emails the subscribe form causes: the confirmation request (double opt-in) and,
when the address is already subscribed, a notice to its owner instead.

Each is an email type under `templates/email/<name>/` rendered by `render_email`, and goes
out through the configured sender like a digest, with the same List-Unsubscribe headers: the
owner of an address someone else typed in can stop it with one click.

The form's request only records a sign-up request; `send_in_background` hands it to a thread
of the web process, which decides what it earns, sends it, and records that, each database
step in a short transaction of its own. So no request waits on the mail server or holds a
database connection while it answers, and every outcome answers in the same time.

A visitor's topics go into a confirmation email to an address they typed: they are shown
plainly, shortened, and defanged so that no mail client can turn them into a link.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import db
from .mailto import mailto_address
from .models import SignupRequest, Subscriber
from .render import one_line, render_email, safe_url, shorten, topic_list
from .send import OutgoingEmail, open_sender
from .settings import Settings
from .subscribers import (
    Signup,
    process_signup_request,
    record_signup_email,
    subscriber_by_id,
)
from .tokens import MAX_AGE_SECONDS, Purpose, link

log = logging.getLogger(__name__)

# Template folder -> the X-Digest-Kind (and Message-ID prefix) of its emails.
KINDS = {"confirm": "confirm", "already_subscribed": "notice"}
SHOWN_TOPICS_CHARS = 200  # of a visitor's topics in a confirmation email


def confirm_template_context(
    recipient: str, topics: str, confirm_url: str, unsubscribe_url: str, site_url: str,
    expires_hours: int, *, time_zone: str = "UTC", send_hour: int = 7,
    papers_per_digest: int = 10,
) -> dict[str, Any]:
    """The variables templates/email/confirm/* use: what confirming will save, shown as
    plain text, since a stranger may have typed it."""
    _check_links(confirm_url=confirm_url, unsubscribe_url=unsubscribe_url, site_url=site_url)
    return {
        "recipient": one_line(recipient),
        "topics": defang(shorten(topic_list(topics), SHOWN_TOPICS_CHARS)),
        "time_zone": one_line(time_zone).replace("_", " "),
        "send_hour": int(send_hour),
        "papers_per_digest": int(papers_per_digest),
        "confirm_url": confirm_url,
        "unsubscribe_url": unsubscribe_url,
        "site_url": site_url,
        "expires_hours": expires_hours,
    }


def already_subscribed_template_context(
    recipient: str, topics: str, preferences_url: str, unsubscribe_url: str, site_url: str
) -> dict[str, Any]:
    """The variables templates/email/already_subscribed/* use (the owner's own topics)."""
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


_LINK_DOT = re.compile(r"(?<=\S)[.\u3002\uff0e\uff61](?=\S)")


def defang(text: str) -> str:
    """`text` as it reads, with nothing a mail client would make a link of: a dot inside a
    word becomes a one-dot leader (U+2024) and "@" a full-width one; "://" is broken."""
    return _LINK_DOT.sub("\u2024", text).replace("@", "\uff20").replace("://", ":/\u2060/")


# --- what a request earns -----------------------------------------------------------------


@dataclass(frozen=True)
class LinkRef:
    """A row a link is made for, read out of its session."""

    id: int
    link_key: str


@dataclass(frozen=True)
class Notice:
    """Everything one notice needs, read in one short transaction."""

    template: str
    to: str
    subscriber: LinkRef
    request: LinkRef
    topics: str  # confirm: the request's; already_subscribed: the owner's own
    time_zone: str
    send_hour: int
    papers_per_digest: int


def notice_for(session: Session, signup: Signup) -> Notice | None:
    """The email a processed request earns, if any, with what its links and text need."""
    if signup.notice is None or signup.subscriber_id is None or signup.request_id is None:
        return None
    request = session.get(SignupRequest, signup.request_id)
    subscriber = subscriber_by_id(session, signup.subscriber_id)
    if request is None:
        return None
    if signup.notice == "confirm":
        to, topics = request.email, request.topics
        choices: Any = request
    else:
        to, topics = subscriber.email, subscriber.profile.topics
        choices = subscriber
    return Notice(
        template=signup.notice, to=to, subscriber=_ref(subscriber), request=_ref(request),
        topics=topics, time_zone=choices.time_zone, send_hour=choices.send_hour,
        papers_per_digest=choices.papers_per_digest,
    )


def _ref(row: Subscriber | SignupRequest) -> LinkRef:
    return LinkRef(row.id, row.link_key)


def notice_context(settings: Settings, notice: Notice) -> dict[str, Any]:
    """The template context of a notice, with freshly signed links."""
    unsubscribe_url = link(settings, Purpose.UNSUBSCRIBE, notice.subscriber)
    site_url = settings.public_base_url
    if notice.template == "confirm":
        max_age = MAX_AGE_SECONDS[Purpose.CONFIRM] or 0
        return confirm_template_context(
            notice.to, notice.topics, link(settings, Purpose.CONFIRM, notice.request),
            unsubscribe_url, site_url, max_age // 3600, time_zone=notice.time_zone,
            send_hour=notice.send_hour, papers_per_digest=notice.papers_per_digest,
        )
    if notice.template == "already_subscribed":
        return already_subscribed_template_context(
            notice.to, notice.topics, link(settings, Purpose.PREFERENCES, notice.subscriber),
            unsubscribe_url, site_url,
        )
    raise ValueError(f"not a notice template: {notice.template!r}")


def compose_notice(
    settings: Settings, notice: Notice, now: datetime | None = None
) -> OutgoingEmail:
    now = now or datetime.now(timezone.utc)
    kind = KINDS[notice.template]
    context = notice_context(settings, notice)
    rendered = render_email(notice.template, context)
    # Unique, unlike a digest's: two confirmations on one day are two different messages.
    local = f"{kind}.{now:%Y-%m-%d}.{int(notice.subscriber.id)}.{secrets.token_hex(8)}"
    return OutgoingEmail(
        to=notice.to,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=f"<{local}@{settings.mail_domain}>",
        unsubscribe_url=context["unsubscribe_url"],
        date=now,
        kind=kind,
        unsubscribe_mailto=mailto_address(settings, notice.subscriber),
    )


def send_signup_email(settings: Settings, request_id: int) -> Signup:
    """Process a recorded sign-up request and send the one email it earns, if any.

    The database is used in two short transactions, before and after: never while the mail
    server is being talked to.
    """
    signup, notice = _process(settings, request_id)
    if notice is None:
        return signup
    error: str | None = None
    try:
        with open_sender(settings) as sender:
            result = sender.send(compose_notice(settings, notice))
        if not result.sent:
            error = result.detail or result.outcome.value
    except Exception as exc:  # noqa: BLE001 - recorded, so the next request may try again
        error = f"{type(exc).__name__}: {exc}"
    if error is not None:
        log.warning("%s email for sign-up request %s not sent: %s", notice.template,
                    request_id, error)
    with db.session_scope(settings) as session:
        record_signup_email(session, signup, error)
    return signup


def _process(settings: Settings, request_id: int) -> tuple[Signup, Notice | None]:
    resend_after = timedelta(minutes=settings.confirm_resend_minutes)
    for attempt in (1, 2):
        try:
            with db.session_scope(settings) as session:
                signup = process_signup_request(session, request_id, resend_after=resend_after)
                return signup, notice_for(session, signup)
        except IntegrityError:
            # Two requests for a new address processed at once: the other one created the
            # subscriber, so the second attempt finds it pending.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# --- the background sender ----------------------------------------------------------------


class BackgroundSender:
    """A thread of the web process that sends the emails sign-up requests earn, one by one.

    Started on first use in each process (gunicorn forks its workers after loading the app),
    and given a few seconds at exit to finish what is queued. A request whose email was lost
    with its process is harmless: nothing was recorded as sent, so submitting the form
    again sends it.
    """

    def __init__(self, exit_wait_seconds: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.Queue[tuple[Settings, int]] = queue.Queue()
        self._exit_wait = exit_wait_seconds

    def submit(self, settings: Settings, request_id: int) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use in this process
                self._pid = os.getpid()
                self._queue = queue.Queue()
                threading.Thread(target=self._work, args=(self._queue,),
                                 name="signup-emails", daemon=True).start()
                atexit.register(self.wait, self._exit_wait)
            self._queue.put((settings, request_id))

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far was handled; False on timeout."""
        work = self._queue
        with work.all_tasks_done:
            return work.all_tasks_done.wait_for(lambda: work.unfinished_tasks == 0, timeout)

    @staticmethod
    def _work(work: queue.Queue[tuple[Settings, int]]) -> None:
        while True:
            settings, request_id = work.get()
            try:
                send_signup_email(settings, request_id)
            except Exception:  # one bad request must not stop the others
                log.exception("sign-up request %s: email not handled", request_id)
            finally:
                work.task_done()


_SENDER = BackgroundSender()


def send_in_background(settings: Settings, request_id: int) -> None:
    """Hand a recorded sign-up request to this process's background sender."""
    _SENDER.submit(settings, request_id)


def wait_for_background_sends(timeout: float = 10.0) -> bool:
    """Wait for this process's background sender to finish what it was given (tests, CLI)."""
    return _SENDER.wait(timeout)
