"""Outgoing mail: turn a rendered email into the bytes a mailbox receives and hand them to the
backend MAIL_BACKEND names.

The folder is the table of contents:

| module        | what it holds                                                          |
|---------------|------------------------------------------------------------------------|
| `message.py`  | `OutgoingEmail`, address/URL checks, Message-ID, the email-package build |
| `mime.py`     | `message_bytes`: the bytes as sent, built directly; DKIM-signed        |
| `dkim.py`     | `dkim_sign` with the deployment's key                                  |
| `backend.py`  | the `Sender` protocol, `SendResult`, `OutboxRow`                       |
| `senders.py`  | `open_sender`, `batch_sender`, retries, parallel connections           |
| `smtp.py`     | `open_smtp` (also the health check's) and `SMTPSender`                 |
| `outbox.py`   | `FileSender`: `.eml` files and the outbox index                        |
| `console.py`  | `ConsoleSender`: a summary per message on stdout                       |
| `throttle.py` | the send-rate limiters (GCRA, shared through Redis)                    |

What the rest of the library uses is exported here.
"""

from .backend import OutboxRow, OutboxRows, Sender, SendOutcome, SendResult
from .message import OutgoingEmail, message_id_for, message_id_sql
from .mime import message_bytes
from .outbox import outbox_rows, write_outbox_index
from .senders import batch_sender, close_kept_sender, open_sender

__all__ = [
    "OutboxRow",
    "OutboxRows",
    "OutgoingEmail",
    "SendOutcome",
    "SendResult",
    "Sender",
    "batch_sender",
    "close_kept_sender",
    "message_bytes",
    "message_id_for",
    "message_id_sql",
    "open_sender",
    "outbox_rows",
    "write_outbox_index",
]
