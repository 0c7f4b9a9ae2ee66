"""A real SMTP server on loopback for tests: aiosmtpd, recording every accepted message.

It can be told to refuse: `reject_recipients` answers 550 for those addresses, `fail_next`
answers the next N DATA commands with a given reply (e.g. "451 4.3.0 try later").

It can also misbehave the way real servers do: `mail_replies` answers the next MAIL commands
with given replies (a "421" one then closes the connection, like an idle timeout);
`drop_next_mail` closes the connection instead of answering the next N MAIL commands;
`drop_next_data` records the next N messages but closes the connection before answering.
Set `credentials` (login -> password) to require AUTH, and `tls_context` to offer STARTTLS
(or `implicit_tls_context` to speak TLS from the first byte, like port 465), before `start()`.
It offers PIPELINING (RFC 2920), as the relays of mail providers do, unless `pipelining` is
False; aiosmtpd answers pipelined commands one by one, in order, as the RFC asks.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class SMTPServer:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    reject_recipients: set[str] = field(default_factory=set)
    fail_next: list[str] = field(default_factory=list)
    connections: int = 0
    mail_replies: list[str] = field(default_factory=list)
    drop_next_mail: int = 0
    drop_next_data: int = 0
    data_delay: float = 0.0  # seconds before answering DATA: a slow server, for crash tests
    pipelining: bool = True  # offer PIPELINING in the EHLO reply
    credentials: dict[str, str] | None = None
    tls_context: ssl.SSLContext | None = None
    implicit_tls_context: ssl.SSLContext | None = None
    _controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        options: dict[str, Any] = {}
        if self.credentials is not None:
            options.update(authenticator=self._authenticate, auth_required=True)
            # aiosmtpd does not count implicit TLS as encryption (it warns), so only
            # STARTTLS can require it.
            options.update(auth_require_tls=self.tls_context is not None)
        if self.tls_context is not None:
            options.update(tls_context=self.tls_context, require_starttls=True)
        self._controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            ready_timeout=10,
            ssl_context=self.implicit_tls_context,
            **options,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and self.credentials.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    @property
    def messages(self) -> list[EmailMessage]:
        return [r.message for r in self.received]

    def by_recipient(self) -> dict[str, list[EmailMessage]]:
        out: dict[str, list[EmailMessage]] = {}
        for r in self.received:
            for rcpt in r.rcpt_tos:
                out.setdefault(rcpt.lower(), []).append(r.message)
        return out


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        with self.server._lock:
            self.server.connections += 1
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")  # the last line ends the reply
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        with self.server._lock:
            drop = self.server.drop_next_mail > 0
            if drop:
                self.server.drop_next_mail -= 1
            reply = self.server.mail_replies.pop(0) if self.server.mail_replies else None
        if drop:
            _hang_up(server)
            return "250 OK"  # never reaches the client
        if reply is not None:
            if reply.startswith("421"):
                await server.push(reply)
                _hang_up(server)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.lower() in self.server.reject_recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server.data_delay:
            await asyncio.sleep(self.server.data_delay)
        with self.server._lock:
            if self.server.fail_next:
                return self.server.fail_next.pop(0)
            self.server.received.append(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or envelope.content or b""),
                )
            )
            drop = self.server.drop_next_data > 0
            if drop:
                self.server.drop_next_data -= 1
        if drop:
            _hang_up(server)
        return "250 Message accepted for delivery"


def _hang_up(server: SMTP) -> None:
    """Close the connection at once: whatever the session answers next is discarded."""
    if isinstance(server.transport, asyncio.Transport):
        server.transport.abort()
