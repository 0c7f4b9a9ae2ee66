"""Today's digest at once, right after a reader confirms (FIRST_DIGEST=offer|send|off), so
they see what they signed up for instead of waiting for their next send hour.

The ledger decides, as for every digest: `start` plans the reader's delivery row for their
local date and period (`pipeline.plan_pairs`), which the scheduled run later that day finds
and leaves alone, so nobody gets two digests in a day (nor, weekly, in a week). If a row is
already there (the scheduled run came first, or the button was pressed twice), nothing more
is planned. The planned row is then sent by a thread of this process through the pipeline's
own batch path, never inside the web request. If the process stops first, the row's lease
runs out and the beat's tick sends it at the reader's hour, as it does any abandoned row.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import date, datetime

from sqlalchemy import select

from . import db
from .mail import open_sender
from .models import Subscriber, delivery_period
from .pipeline import plan_pairs, process_batch, reader_zone
from .prepare import prepared_day
from .settings import Settings
from .status import DayReport, mailable

log = logging.getLogger(__name__)


def start(settings: Settings, subscriber_id: int, now: datetime) -> bool:
    """Plan the reader's digest for their local today and hand it to the background sender.
    False if there is nothing to start: not an active, unpaused reader, or today's digest
    (this period's) is already planned or sent."""
    with db.session_scope(settings) as session:
        subscriber = session.scalar(
            select(Subscriber).where(Subscriber.id == subscriber_id, mailable())
        )
        if subscriber is None:
            return False
        day = now.astimezone(reader_zone(subscriber.time_zone)).date()
        period = delivery_period(day, subscriber.cadence)
        if not plan_pairs(session, settings, [(subscriber_id, day, period)], now):
            return False
    _SENDER.submit(settings, day, subscriber_id)
    return True


def after_confirming(settings: Settings, subscriber_id: int, already: bool, now: datetime) -> bool:
    """With FIRST_DIGEST=send, start today's digest for a reader who has just confirmed.
    Never fails the confirmation: a digest not started here comes at the reader's hour."""
    if already or settings.first_digest != "send":
        return False
    try:
        return start(settings, subscriber_id, now)
    except Exception:  # the reader is confirmed: their hour's digest still comes
        log.exception("first digest of subscriber %s not started", subscriber_id)
        return False


def send_planned(settings: Settings, day: date, subscriber_id: int) -> DayReport:
    """Send one planned digest as a batch of one, over a mail connection of its own."""
    with db.session_scope(settings) as session:
        prepared = prepared_day(session, settings, day)
        with open_sender(settings) as sender:
            return process_batch(session, settings, prepared, [subscriber_id], sender)


class FirstDigestSender:
    """One thread of this process that sends the first digests it is given, one at a time.

    Started on first use in each process (gunicorn forks after loading the app). What it
    holds is in the ledger as planned rows, so a process that stops loses nothing: the
    beat's tick takes those rows over once their lease has passed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()

    def submit(self, settings: Settings, day: date, subscriber_id: int) -> None:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-digest")
                self._pending = set()
            future = self._pool.submit(self._send, settings, day, subscriber_id)
            self._pending.add(future)
            future.add_done_callback(self._done)

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait until what was submitted here was sent (or failed); False on timeout."""
        with self._lock:
            pending = set(self._pending)
        return not wait(pending, timeout).not_done

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    @staticmethod
    def _send(settings: Settings, day: date, subscriber_id: int) -> None:
        try:
            report = send_planned(settings, day, subscriber_id)
        except Exception:  # the row stays planned: the beat's tick sends it later
            log.exception("first digest of subscriber %s for %s not sent", subscriber_id, day)
            return
        for email, reason in report.failed:
            log.warning("first digest to %s not sent: %s", email, reason)


_SENDER = FirstDigestSender()


def wait_for_first_digests(timeout: float = 30.0) -> bool:
    """Wait for this process's first digests to be sent (tests, CLI)."""
    return _SENDER.wait(timeout)
