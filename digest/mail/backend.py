"""What every mail backend is: the `Sender` protocol, the `SendResult` it answers for each
message, and the `OutboxRow` a backend that stores messages reports for the outbox index.

A sender never raises for one recipient's failure: it answers SENT, TEMPORARY or PERMANENT
and the pipeline decides what to record and whether to retry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import NamedTuple, Protocol, Self

from ..journal import Journal, mark_for
from .message import OutgoingEmail


class SendOutcome(str, Enum):
    SENT = "sent"
    TEMPORARY = "temporary"  # try again later; nothing says the address is bad
    PERMANENT = "permanent"  # the server refused this message or recipient for good


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    detail: str = ""  # the server's reply or the error, e.g. "550 5.1.1 No such user"
    # The server may have accepted the message but we never saw its answer (the connection
    # broke after the body went out), so sending again may deliver it twice.
    in_doubt: bool = False
    # For TEMPORARY only: False when trying again within seconds cannot help, because the
    # failure is about this session rather than this message (the server is unreachable, or
    # refuses our login or sender address); retrying wrappers then leave it to the next run.
    retry_now: bool = True

    @property
    def sent(self) -> bool:
        return self.outcome is SendOutcome.SENT


class OutboxRow(NamedTuple):
    """What the outbox index shows of one stored message, kept so that writing the index
    need not read the file back. A tuple, so it goes into the index cache as a JSON array
    and from a run process to its parent as it is."""

    size: int
    mtime_ns: int
    sent_at: str | None  # ISO 8601, to the second
    to: str
    subject: str
    kind: str
    message_id: str


# Rows by the message file's path under the outbox, "<day>/<name>.eml".
OutboxRows = dict[str, OutboxRow]


class Sender(Protocol):
    """A mail backend: send messages one by one, then close (or use as a context manager)."""

    def send(self, email: OutgoingEmail) -> SendResult: ...

    def close(self) -> None: ...

    def send_many(
        self, emails: Sequence[OutgoingEmail], journal: Journal | None = None
    ) -> list[SendResult]:
        """Send each; the results in the same order. With a `journal`, each message is
        written to it as it is handed over and again with the backend's answer."""
        return [journaled_send(self.send, email, journal) for email in emails]

    def outbox_rows(self) -> OutboxRows:
        """The outbox index rows of the messages this backend stored; none for most.

        A wrapper hands over its inner backend's, so whoever opened a sender can gather
        them without knowing how it is composed."""
        return {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def journaled_send(
    send: Callable[[OutgoingEmail], SendResult], email: OutgoingEmail, journal: Journal | None
) -> SendResult:
    """`send(email)`, written to the attempt's journal before and after (see journal.py)."""
    if journal is None:
        return send(email)
    journal.handing(email.message_id)
    result = send(email)
    journal.answered(email.message_id, mark_for(result.in_doubt, result.sent,
                                                result.outcome is SendOutcome.PERMANENT))
    return result

