"""One-off emails the subscribe form causes: the confirmation request (double opt-in) and,
when the address is already subscribed, a notice to its owner instead.

Each is an email type under `templates/email/<name>/` rendered by `render_email`, and goes
out through the configured sender like a digest, with the same List-Unsubscribe headers: the
owner of an address someone else typed in can stop it with one click.

The form's request only records a sign-up request; `send_in_background` wakes a thread of
the web process, which claims it, decides what it earns, sends it, and records that, each
database step in a short transaction of its own; the table is the queue, so a restart loses
nothing (`send_pending_signup_emails`, run by the beat, sends what a stopped process left).
So no request waits on the mail server or holds a database connection while it answers,
and every outcome answers in the same time.

A visitor's topics go into a confirmation email to an address they typed: they are shown
plainly, shortened, and defanged so that no mail client can turn them into a link.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from . import db
from .lifecycle import Signup, preferences_of, process_signup_request, record_signup_email
from .mail import OutgoingEmail, open_sender
from .mailto import mailto_address
from .models import Cadence, SignupOutcome, SignupRequest, Subscriber
from .render.filters import one_line, safe_url, shorten, topic_list
from .render.plain import render_email
from .settings import Settings
from .subscribers import WEEKDAYS, DuplicateAddress, Preferences, subscriber_by_id
from .tokens import MAX_AGE_SECONDS, Purpose, link

log = logging.getLogger(__name__)

# Template folder -> the X-Digest-Kind (and Message-ID prefix) of its emails.
KINDS = {"confirm": "confirm", "already_subscribed": "notice"}
SHOWN_TOPICS_CHARS = 200  # of a visitor's topics in a confirmation email


def confirm_template_context(
    recipient: str, topics: str, confirm_url: str, unsubscribe_url: str, site_url: str,
    expires_hours: int, *, time_zone: str = "UTC", send_hour: int = 7,
    papers_per_digest: int = 10, exclude: str = "", trending_fallback: bool = False,
    cadence: Cadence = Cadence.DAILY, send_weekday: int = 0, click_tracking: bool = False,
) -> dict[str, Any]:
    """The variables templates/email/confirm/* use: what confirming will save, shown as
    plain text, since a stranger may have typed it."""
    _check_links(confirm_url=confirm_url, unsubscribe_url=unsubscribe_url, site_url=site_url)
    weekly = Cadence(cadence) is Cadence.WEEKLY
    return {
        "recipient": one_line(recipient),
        "topics": defang(shorten(topic_list(topics), SHOWN_TOPICS_CHARS)),
        "exclude": defang(shorten(topic_list(exclude), SHOWN_TOPICS_CHARS)) if exclude else "",
        "trending_fallback": bool(trending_fallback),
        "weekly": weekly,
        "weekday": WEEKDAYS[int(send_weekday) % 7],
        "click_tracking": bool(click_tracking),
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
    choices: Preferences | None = None  # confirm: everything the request would save


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
        choices=preferences_of(request) if signup.notice == "confirm" else None,
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
            **_confirm_extras(notice.choices),
        )
    if notice.template == "already_subscribed":
        return already_subscribed_template_context(
            notice.to, notice.topics, link(settings, Purpose.PREFERENCES, notice.subscriber),
            unsubscribe_url, site_url,
        )
    raise ValueError(f"not a notice template: {notice.template!r}")


def _confirm_extras(choices: Preferences | None) -> dict[str, Any]:
    """The request's choices beyond topics and schedule, for the confirmation's summary."""
    if choices is None:
        return {}
    return {"exclude": choices.exclude, "trending_fallback": choices.trending_fallback,
            "cadence": choices.cadence, "send_weekday": choices.send_weekday,
            "click_tracking": choices.click_tracking}


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


# A process decides one request at a time (a few milliseconds each), so that two requests
# for one new address never both see it absent; sending stays parallel.
_DECIDING = threading.Lock()


def _process(settings: Settings, request_id: int) -> tuple[Signup, Notice | None]:
    resend_after = timedelta(minutes=settings.confirm_resend_minutes)
    for attempt in (1, 2):
        try:
            with _DECIDING, db.session_scope(settings) as session:
                signup = process_signup_request(session, request_id, resend_after=resend_after)
                return signup, notice_for(session, signup)
        except (IntegrityError, DuplicateAddress):
            # Two processes decided requests for one new address at once: the other created
            # the subscriber, so the second attempt finds it pending.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# --- the background sender ----------------------------------------------------------------

# A claimed request belongs to its sender for this long; then (its process stopped) the next
# sender takes it. Longer than one email takes to send, even to a slow server.
CLAIM_SECONDS = 120
EXIT_WAIT_SECONDS = 10.0
# A confirmation link lives two days: an older request is not worth an email any more.
SEND_WITHIN = timedelta(seconds=MAX_AGE_SECONDS[Purpose.CONFIRM] or 2 * 86400)
_EMAILED_OUTCOMES = (SignupOutcome.RECEIVED, SignupOutcome.CONFIRMATION,
                     SignupOutcome.ALREADY_ACTIVE)


def _still_to_send(now: datetime) -> ColumnElement[bool]:
    """Requests whose email is neither sent nor refused, and that no live sender holds."""
    return and_(
        SignupRequest.created_at >= now - SEND_WITHIN,
        SignupRequest.outcome.in_(_EMAILED_OUTCOMES),
        SignupRequest.emailed_at.is_(None),
        SignupRequest.email_error.is_(None),
        or_(SignupRequest.claimed_until.is_(None), SignupRequest.claimed_until < now),
    )


def claim_signup_request(
    settings: Settings, preferred: int | None = None, *, only: bool = False
) -> int | None:
    """Take one request whose email is still to send (`preferred` first; with `only`, that
    one or none), for CLAIM_SECONDS; None when there is none. Two senders never take the
    same request."""
    now = datetime.now(timezone.utc)
    with db.session_scope(settings) as session:
        candidates = [preferred] if preferred is not None else []
        if not only:
            candidates += session.scalars(
                select(SignupRequest.id).where(_still_to_send(now))
                .order_by(SignupRequest.id).limit(10)
            ).all()
        for request_id in candidates:
            taken = session.execute(
                update(SignupRequest)
                .where(SignupRequest.id == request_id, _still_to_send(now))
                .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return request_id
    return None


def send_pending_signup_emails(settings: Settings, limit: int = 1000) -> int:
    """Send the emails of requests whose sender stopped before it could (a restart, a crash,
    a backlog at shutdown); the beat runs it every minute. Returns how many were handled."""
    handled = 0
    while handled < limit and (request_id := claim_signup_request(settings)) is not None:
        send_signup_email(settings, request_id)
        handled += 1
    return handled


class EmailSender:
    """Threads of the web process that send the emails sign-up requests earn.

    The queue is the `signup_requests` table itself: `submit` wakes a thread, which claims
    that request in the database, sends its email and records it. So a backlog costs no
    memory, and what a stopped process had not sent is not lost: its claims run out, and a
    thread with nothing to do for SWEEP_SECONDS (or the beat's `send_signup_emails`) sends
    whatever is still to send. Threads start on first use in each process (gunicorn forks
    after loading the app) and stop after a few quiet sweeps. At exit they take nothing new
    and finish the email each is sending; anything still held after EXIT_WAIT_SECONDS is
    handed back, so the next sender need not wait for the claims to run out.
    """

    THREADS = 2
    SWEEP_SECONDS = 30.0
    QUIET_SWEEPS = 2  # then the thread stops; the next submit starts another

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pid = 0
        self._generation = 0  # threads of an older generation stop (fork, tests)
        self._hints: dict[Settings, deque[int]] = {}
        self._threads: dict[Settings, int] = {}
        self._outstanding: set[int] = set()
        self._held: dict[int, Settings] = {}  # claimed here and not yet handled
        self._stopping = False

    def submit(self, settings: Settings, request_id: int) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use in this process: no thread here yet
                self._pid = os.getpid()
                self._reset()
                atexit.register(self.stop, EXIT_WAIT_SECONDS)
            self._hints.setdefault(settings, deque()).append(request_id)
            self._outstanding.add(request_id)
            while self._threads.get(settings, 0) < self.THREADS:
                self._threads[settings] = self._threads.get(settings, 0) + 1
                threading.Thread(target=self._work, args=(settings, self._generation),
                                 name="signup-emails", daemon=True).start()
            self._lock.notify_all()

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until every request submitted here was handled; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._outstanding, timeout)

    def forget_threads(self) -> None:
        """Let this process's threads stop and start afresh on the next submit (tests: each
        test's database and mail server are its own)."""
        with self._lock:
            self._reset()
            self._lock.notify_all()

    def stop(self, timeout: float) -> None:
        """At exit: take nothing new, let the emails being sent finish, hand back the rest."""
        with self._lock:
            self._stopping = True
            self._lock.wait_for(lambda: not self._held, timeout)
            held, self._held = self._held, {}
        by_settings: dict[Settings, list[int]] = {}
        for request_id, settings in held.items():
            by_settings.setdefault(settings, []).append(request_id)
        for settings, ids in by_settings.items():
            try:
                with db.session_scope(settings) as session:
                    session.execute(update(SignupRequest).where(SignupRequest.id.in_(ids))
                                    .values(claimed_until=None))
            except Exception:  # noqa: BLE001 - at exit: the claims run out by themselves
                log.warning("sign-up emails: %d claims left to run out", len(ids))

    def _reset(self) -> None:
        self._generation += 1
        self._hints, self._threads, self._outstanding, self._held = {}, {}, set(), {}
        self._stopping = False

    def _work(self, settings: Settings, generation: int) -> None:
        quiet = 0
        while quiet < self.QUIET_SWEEPS:
            hint = self._next_hint(settings, generation)
            if hint is False:
                return  # a newer generation took over: its counts are not ours
            if isinstance(hint, int):
                self._send(settings, hint)
            elif self._sweep(settings) == 0:
                quiet += 1
        with self._lock:
            if generation == self._generation:
                self._threads[settings] -= 1

    def _next_hint(self, settings: Settings, generation: int) -> int | bool | None:
        """A submitted request id; None after SWEEP_SECONDS of quiet; False to stop now."""
        with self._lock:
            hints = self._hints.setdefault(settings, deque())
            self._lock.wait_for(lambda: bool(hints) or generation != self._generation,
                                self.SWEEP_SECONDS)
            if generation != self._generation:
                return False
            return hints.popleft() if hints else None

    def _send(self, settings: Settings, request_id: int) -> None:
        """The submitted request's email, unless another sender has taken it."""
        try:
            if self._claim(settings, request_id) == request_id:
                self._send_claimed(settings, request_id)
        finally:
            self._handled(request_id)

    def _sweep(self, settings: Settings) -> int:
        """Send whatever is still to send (left by a stopped process); how many."""
        count = 0
        while (request_id := self._claim(settings, None)) is not None:
            self._send_claimed(settings, request_id)
            self._handled(request_id)
            count += 1
        return count

    def _send_claimed(self, settings: Settings, request_id: int) -> None:
        with self._lock:
            self._held[request_id] = settings
        try:
            send_signup_email(settings, request_id)
        except Exception:  # one bad request must not stop the others
            log.exception("sign-up request %s: email not handled", request_id)

    def _handled(self, request_id: int) -> None:
        with self._lock:
            self._held.pop(request_id, None)
            self._outstanding.discard(request_id)
            self._lock.notify_all()

    def _claim(self, settings: Settings, preferred: int | None) -> int | None:
        if self._stopping:
            return None
        try:
            if preferred is not None:
                return claim_signup_request(settings, preferred, only=True)
            return claim_signup_request(settings)
        except Exception:  # the database is away: the beat's sweep retries
            log.exception("sign-up emails: cannot claim a request")
            return None


_SENDER = EmailSender()


def send_in_background(settings: Settings, request_id: int) -> None:
    """Hand a recorded sign-up request to this process's email senders."""
    _SENDER.submit(settings, request_id)


def forget_background_senders() -> None:
    """Let this process's sender threads stop; the next request starts new ones (tests)."""
    _SENDER.forget_threads()


def wait_for_background_sends(timeout: float = 10.0) -> bool:
    """Wait for this process's email senders to handle what they were given (tests, CLI)."""
    return _SENDER.wait(timeout)
