"""The console backend: a short summary of each message on stdout, for trying the service
without mail."""

from __future__ import annotations

import sys
from typing import TextIO

from ..settings import Settings
from .backend import Sender, SendOutcome, SendResult
from .message import OutgoingEmail, clean_subject


class ConsoleSender(Sender):
    """Print a short summary of each message: for trying the service without mail."""

    preview_lines = 6

    def __init__(self, settings: Settings, stream: TextIO | None = None) -> None:
        self.settings = settings
        self._stream = stream

    def send(self, email: OutgoingEmail) -> SendResult:
        out = self._stream or sys.stdout
        lines = [line for line in email.text.splitlines() if line.strip()]
        print(f"--- {email.kind} to {email.to} ---", file=out)
        print(f"Subject: {clean_subject(email.subject)}", file=out)
        print(f"Message-ID: {email.message_id}", file=out)
        for line in lines[: self.preview_lines]:
            print(f"  {line}", file=out)
        if len(lines) > self.preview_lines:
            print(f"  ... ({len(lines) - self.preview_lines} more lines)", file=out)
        out.flush()
        return SendResult(SendOutcome.SENT, "printed")

    def close(self) -> None:
        """Nothing to release."""

