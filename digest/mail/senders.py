"""Open the mail backend MAIL_BACKEND names, wrapped as the settings ask: retries, the shared
send rate, parallel connections, and a worker's session kept from one batch to the next.

- `smtp`: `SMTPSender`, one reused connection, every failure classified into a `SendResult`;
- `file` (the embedded default): `FileSender`, `.eml` + `.html` files and a browsable index;
- `console`: `ConsoleSender`, a short summary per message on stdout.

`RetryingSender` retries a temporary failure a few times with backoff (SMTP_RETRY_*),
`RateLimitedSender` holds every worker to one shared send rate kept in Redis
(SEND_RATE_PER_SECOND).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random as random_module
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TextIO

from ..journal import Journal
from ..settings import Settings
from .backend import OutboxRows, Sender, SendOutcome, SendResult, journaled_send
from .console import ConsoleSender
from .message import OutgoingEmail
from .outbox import FileSender
from .smtp import SMTPSender
from .throttle import RateLimitedSender, RedisRateLimiter

log = logging.getLogger(__name__)


def open_sender(
    settings: Settings, stream: TextIO | None = None, *, outbox_index: bool = True
) -> Sender:
    """The backend MAIL_BACKEND names, wrapped as the settings ask.

    smtp: `SMTPSender` in a `RetryingSender` (if SMTP_RETRY_ATTEMPTS > 1); any backend: in a
    `RateLimitedSender` sharing SEND_RATE_PER_SECOND through Redis (if it is > 0). Closing the
    result closes the backend. With SMTP_CONNECTIONS > 1, smtp is that many of these in a
    `ParallelSender`. `stream` is where the console backend prints. Without
    `outbox_index`, the file backend leaves the index to whoever gathers `outbox_rows`.
    """
    if settings.mail_backend == "smtp" and settings.smtp_connections > 1:
        return ParallelSender(lambda: _one_sender(settings, stream, outbox_index),
                              settings.smtp_connections)
    return _one_sender(settings, stream, outbox_index)


# --- A worker's mail session, kept from one batch to the next -----------------------------

KEEP_IDLE_SECONDS = 20.0  # well inside servers' idle timeouts (RFC 5321 asks them for 5 min)


class _KeptSender(Sender):
    """A sender that notes whether every message got a definite answer (sent or refused)."""

    def __init__(self, inner: Sender, settings: Settings) -> None:
        self.inner = inner
        self.settings = settings
        self.clean = True
        self.pid = os.getpid()

    def send(self, email: OutgoingEmail) -> SendResult:
        return self._note([self.inner.send(email)])[0]

    def send_many(
        self, emails: Sequence[OutgoingEmail], journal: Journal | None = None
    ) -> list[SendResult]:
        return self._note(self.inner.send_many(emails, journal))

    def outbox_rows(self) -> OutboxRows:
        return self.inner.outbox_rows()

    def _note(self, results: list[SendResult]) -> list[SendResult]:
        if any(result.outcome is SendOutcome.TEMPORARY for result in results):
            self.clean = False
        return results

    def close(self) -> None:
        self.inner.close()


_kept: dict[str, tuple[_KeptSender, float]] = {}
_kept_lock = threading.Lock()


@contextlib.contextmanager
def batch_sender(settings: Settings) -> Iterator[Sender]:
    """The mail session of one batch in a long-lived worker process.

    SMTP connections outlive the batch: the worker's next batch, usually milliseconds later,
    sends over them instead of each of a day's thousand batches opening SMTP_CONNECTIONS
    connections and closing them again, round trips the workers and the server both paid
    for. A session is kept only after a batch in which every message got a definite answer
    (after a temporary failure or an unreachable server the next batch starts afresh), and
    only for KEEP_IDLE_SECONDS; a connection the server dropped anyway is reopened by
    `SMTPSender`. Other backends are opened and closed per batch, as `open_sender` does.
    """
    if settings.mail_backend != "smtp":
        with open_sender(settings) as plain:
            yield plain
        return
    sender = _take_kept(settings) or _KeptSender(open_sender(settings), settings)
    try:
        yield sender
    except BaseException:
        sender.close()
        raise
    _keep(sender)


def _take_kept(settings: Settings) -> _KeptSender | None:
    with _kept_lock:
        kept = _kept.pop("smtp", None)
    if kept is None:
        return None
    sender, since = kept
    if sender.settings == settings and time.monotonic() - since < KEEP_IDLE_SECONDS:
        return sender
    sender.close()
    return None


def _keep(sender: _KeptSender) -> None:
    if sender.clean and sender.pid == os.getpid():
        with _kept_lock:
            if "smtp" not in _kept:
                _kept["smtp"] = (sender, time.monotonic())
                return
    sender.close()


def close_kept_sender() -> None:
    """Close the kept session, if any (at exit; tests)."""
    with _kept_lock:
        kept = _kept.pop("smtp", None)
    if kept is not None and kept[0].pid == os.getpid():
        kept[0].close()


def _forget_kept_sender() -> None:
    # A forked child must not talk over its parent's connections, nor QUIT them.
    _kept.clear()


atexit.register(close_kept_sender)
os.register_at_fork(after_in_child=_forget_kept_sender)


def _one_sender(settings: Settings, stream: TextIO | None, outbox_index: bool) -> Sender:
    sender: Sender
    if settings.mail_backend == "smtp":
        sender = SMTPSender(settings)
        if settings.smtp_retry_attempts > 1:
            sender = RetryingSender(
                sender,
                attempts=settings.smtp_retry_attempts,
                base_delay=settings.smtp_retry_base_delay,
                max_delay=settings.smtp_retry_max_delay,
            )
    elif settings.mail_backend == "file":
        sender = FileSender(settings, write_index_on_close=outbox_index)
    elif settings.mail_backend == "console":
        sender = ConsoleSender(settings, stream)
    else:
        raise ValueError(
            f"MAIL_BACKEND={settings.mail_backend!r} is not one of file, smtp, console"
        )
    if settings.send_rate_per_second > 0:
        limiter = RedisRateLimiter(settings.redis_url, settings.send_rate_per_second)
        sender = RateLimitedSender(sender, limiter)
    return sender


class ParallelSender(Sender):
    """Several connections to the server, each with its own thread and sender (`make()`).

    Each message waits for the server's replies to MAIL, RCPT and DATA; over one
    connection the server and we take turns, and the server idles while we build the next
    message. `send_many` spreads the messages over the connections (results in order); a
    message's outcome, in doubt included, is its own connection's, as with one.
    """

    def __init__(self, make: Callable[[], Sender], connections: int) -> None:
        self._make = make
        self._local = threading.local()
        self._senders: list[Sender] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="smtp-connection")

    def send(self, email: OutgoingEmail) -> SendResult:
        return self._own().send(email)

    def send_many(
        self, emails: Sequence[OutgoingEmail], journal: Journal | None = None
    ) -> list[SendResult]:
        return list(self._pool.map(
            lambda email: journaled_send(self._own().send, email, journal), emails
        ))

    def _own(self) -> Sender:
        """This thread's sender, made on its first message."""
        sender: Sender | None = getattr(self._local, "sender", None)
        if sender is None:
            sender = self._local.sender = self._make()
            with self._lock:
                self._senders.append(sender)
        return sender

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            senders, self._senders = self._senders, []
        for sender in senders:
            sender.close()

class RetryingSender(Sender):
    """Retry a temporary failure of `inner` with exponential backoff and full jitter.

    Only a TEMPORARY result that is neither in doubt nor marked `retry_now=False` is tried
    again, up to `attempts` tries in all; the n-th wait is random() * min(max_delay,
    base_delay * 2**n). SENT and PERMANENT come back at once, and so does an in-doubt result:
    the server may have queued that message, and a second copy is worse than a late one.
    The detail of the result says how many attempts were made.
    """

    def __init__(
        self,
        inner: Sender,
        attempts: int,
        base_delay: float,
        max_delay: float,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"SMTP_RETRY_ATTEMPTS={attempts} must be at least 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("SMTP_RETRY_BASE_DELAY and SMTP_RETRY_MAX_DELAY must not be negative")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._random = random

    def send(self, email: OutgoingEmail) -> SendResult:
        attempt = 0
        while True:
            result = self.inner.send(email)
            attempt += 1
            if not self._worth_retrying(result) or attempt >= self.attempts:
                break
            # Full jitter: workers that failed together do not come back together.
            delay = self._random() * min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            log.info(
                "temporary failure sending to %s (%s); attempt %d of %d, next in %.2fs",
                email.to,
                result.detail,
                attempt,
                self.attempts,
                delay,
            )
            self._sleep(delay)
        tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
        return replace(result, detail=f"{result.detail} ({tries})".lstrip())

    def outbox_rows(self) -> OutboxRows:
        return self.inner.outbox_rows()

    @staticmethod
    def _worth_retrying(result: SendResult) -> bool:
        return result.outcome is SendOutcome.TEMPORARY and not result.in_doubt and result.retry_now

    def close(self) -> None:
        self.inner.close()

