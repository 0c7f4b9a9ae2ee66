"""Send over SMTP: `open_smtp` opens and authenticates a session as the settings say (the
health check uses it too, so both speak to the server the same way), and `SMTPSender` sends
over one kept connection, telling every failure apart by stage."""

from __future__ import annotations

import contextlib
import functools
import logging
import smtplib
import socket
import ssl
from email.utils import parseaddr

from .. import metrics
from ..settings import Settings
from .backend import Sender, SendOutcome, SendResult
from .message import OutgoingEmail, check_address, wire_address
from .mime import message_bytes

log = logging.getLogger(__name__)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """The system's CAs, loaded once per process: a worker opens a connection per batch, and
    loading the certificate store each time would cost more than the batch's first message."""
    return ssl.create_default_context()


@functools.cache
def _local_hostname() -> str:
    # smtplib calls getfqdn() (a DNS lookup) for every connection unless told the name.
    return socket.getfqdn()


class SMTPUnreachable(Exception):
    """Could not open a usable session; the message says what to check."""


class _Dropped(Exception):
    """The connection broke before the message body went out: safe to send again."""


class SMTPSender(Sender):
    """Send over one SMTP connection, opened on the first message and reused for the rest.

    A connection that broke while idle (the server's timeout, a "421" on MAIL) is reopened
    once and the message retried. If the server cannot be reached at all, this and every
    later message of this sender answer TEMPORARY at once, so an unreachable host costs one
    timeout per session rather than one per message.
    """

    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.connections_opened = 0
        self._ssl_context = ssl_context
        self._smtp: smtplib.SMTP | None = None
        self._unreachable: str | None = None
        self._envelope_from = check_address(parseaddr(settings.mail_from)[1], "MAIL_FROM")
        self._pipelining = settings.smtp_pipelining and _pipelinable(self._envelope_from)

    def send(self, email: OutgoingEmail) -> SendResult:
        data = message_bytes(self.settings, email)
        try:
            return self._attempt(email.to, data)
        except _Dropped as exc:
            log.info("SMTP connection lost (%s); reconnecting to retry %s", exc, email.to)
        try:
            return self._attempt(email.to, data)
        except _Dropped as exc:
            return SendResult(SendOutcome.TEMPORARY, f"connection lost twice: {exc}")

    def _attempt(self, to: str, data: bytes) -> SendResult:
        if self._unreachable is not None:
            return SendResult(SendOutcome.TEMPORARY, self._unreachable, retry_now=False)
        try:
            smtp = self._connection()
        except SMTPUnreachable as exc:
            self._unreachable = str(exc)
            log.warning("%s", exc)
            metrics.count_smtp_unreachable()
            return SendResult(SendOutcome.TEMPORARY, str(exc), retry_now=False)
        try:
            return self._transaction(smtp, wire_address(to), data)
        except _Dropped:
            self._discard()
            raise

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._discard()

    @metrics.timed_smtp_transaction
    def _transaction(self, smtp: smtplib.SMTP, to: str, data: bytes) -> SendResult:
        """MAIL, RCPT, DATA by hand, so a failure can be told apart by stage."""
        options: list[str] = []
        if not to.isascii():
            if not smtp.has_extn("smtputf8"):
                # Retrying cannot help while the relay stays the same.
                return SendResult(
                    SendOutcome.PERMANENT,
                    f"the SMTP server does not offer SMTPUTF8, needed for {to}",
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        if (self._pipelining and not options and smtp.has_extn("pipelining")
                and _pipelinable(to)):
            return self._pipelined(smtp, to, data)
        try:
            code, reply = smtp.mail(self._envelope_from, options)
            if code != 250:
                return self._refused(smtp, code, reply, f"sender {self._envelope_from} refused")
            code, reply = smtp.rcpt(to)
            if code not in (250, 251):
                return self._refused(smtp, code, reply)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Dropped(_describe(exc)) from exc
        try:
            smtp.putcmd("data")
            code, reply = smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Dropped(_describe(exc)) from exc
        if code != 354:  # the DATA command itself was refused
            return self._refused(smtp, code, reply)
        return self._body(smtp, data)

    def _pipelined(self, smtp: smtplib.SMTP, to: str, data: bytes) -> SendResult:
        """MAIL, RCPT and DATA in one write, then their three replies (RFC 2920), then the
        body: two round trips a message instead of four. Each reply is still read and told
        apart by stage; nothing of the message has gone out until DATA is answered 354."""
        try:
            smtp.send(_envelope(self._envelope_from, to))
            (mail, mail_reply), (rcpt, rcpt_reply), (go, go_reply) = (
                smtp.getreply(), smtp.getreply(), smtp.getreply()
            )
            if go == 354 and (mail != 250 or rcpt not in (250, 251)):
                # A server should refuse DATA without a recipient; one that did not gets an
                # empty message, ended at once, and its reply read (RFC 2920, section 3.1).
                smtp.send(b".\r\n")
                smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Dropped(_describe(exc)) from exc
        if mail != 250:
            return self._refused(smtp, mail, mail_reply, f"sender {self._envelope_from} refused")
        if rcpt not in (250, 251):
            return self._refused(smtp, rcpt, rcpt_reply)
        if go != 354:
            return self._refused(smtp, go, go_reply)
        return self._body(smtp, data)

    def _body(self, smtp: smtplib.SMTP, data: bytes) -> SendResult:
        """The message after DATA's 354, and the server's answer to it."""
        try:
            code, reply = _send_body(smtp, data)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Whether the server queued the message is unknown: do not send it again here.
            self._discard()
            return SendResult(
                SendOutcome.TEMPORARY, f"no reply to DATA: {_describe(exc)}", in_doubt=True
            )
        if code != 250:
            return self._refused(smtp, code, reply)
        return SendResult(SendOutcome.SENT, _reply_text(code, reply))

    def _refused(
        self, smtp: smtplib.SMTP, code: int, reply: bytes | str, context: str = ""
    ) -> SendResult:
        if code == 421:  # "closing the channel": typically the server's idle timeout
            raise _Dropped(_reply_text(code, reply))
        detail = _reply_text(code, reply)
        if context or code == 530:
            # A refused MAIL FROM or "530 authentication required" is about our configuration,
            # not the recipient: never PERMANENT, which would mark a good address as bad.
            log.error(
                "%s: %s; check MAIL_FROM, SMTP_USERNAME and the server's relay rules",
                context or "the SMTP server refused to relay",
                detail,
            )
            self._reset(smtp)
            return SendResult(
                SendOutcome.TEMPORARY,
                f"{context or 'not relayed'}: {detail}",
                retry_now=not 500 <= code <= 599,  # a 5xx stays until the settings change
            )
        self._reset(smtp)
        outcome = SendOutcome.PERMANENT if 500 <= code <= 599 else SendOutcome.TEMPORARY
        return SendResult(outcome, detail)

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a refusal so the connection is clean for the next message."""
        try:
            code, _ = smtp.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._discard()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = self._connect()
            self.connections_opened += 1
        return self._smtp

    def _connect(self) -> smtplib.SMTP:
        return open_smtp(self.settings, self._ssl_context)

    def _discard(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None


def open_smtp(
    settings: Settings,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = None,
) -> smtplib.SMTP:
    """A session with the SMTP server, greeted, secured and logged in as the settings say.

    Raises `SMTPUnreachable` with what to check when the server cannot be reached, refuses
    TLS or refuses the login. `timeout` defaults to SMTP_TIMEOUT.
    """
    s = settings
    context = ssl_context or _default_ssl_context()
    wait = s.smtp_timeout if timeout is None else timeout
    smtp: smtplib.SMTP | None = None
    try:
        if s.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(
                s.smtp_host,
                s.smtp_port,
                local_hostname=_local_hostname(),
                timeout=wait,
                context=context,
            )
        else:
            smtp = smtplib.SMTP(
                s.smtp_host, s.smtp_port, local_hostname=_local_hostname(), timeout=wait
            )
        smtp.ehlo()
        if s.smtp_security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
        if s.smtp_username:
            smtp.login(s.smtp_username, s.smtp_password)
        return smtp
    except (smtplib.SMTPException, OSError) as exc:
        if smtp is not None:
            smtp.close()
        raise SMTPUnreachable(_connect_problem(settings, exc)) from exc


def _connect_problem(settings: Settings, exc: smtplib.SMTPException | OSError) -> str:
    """What went wrong opening a session, and which settings to check."""
    s = settings
    where = f"SMTP server {s.smtp_host}:{s.smtp_port} (SMTP_SECURITY={s.smtp_security})"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (
            f"{where} refused the login as {s.smtp_username!r}: {_describe(exc)}; "
            "check SMTP_USERNAME and SMTP_PASSWORD"
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return (
            f"{where} cannot do what the settings ask ({exc}); check SMTP_SECURITY "
            "(starttls needs the server to offer STARTTLS) and SMTP_USERNAME (login needs "
            "the server to offer AUTH, usually only after STARTTLS)"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS with {where} failed: {exc}; check SMTP_SECURITY (port 465 is usually tls, "
            "587 starttls) and the server's certificate"
        )
    return (
        f"cannot reach {where}: {_describe(exc)}; check SMTP_HOST, SMTP_PORT and that "
        "the server is running and reachable from here"
    )


def _pipelinable(address: str) -> bool:
    """Whether `address` goes into a MAIL or RCPT command as it is: what smtplib's `mail`
    and `rcpt` would send for it (`quoteaddr`), an ASCII address with no line break. Any
    other goes the sequential way, through smtplib's own commands."""
    return address.isascii() and smtplib.quoteaddr(address) == f"<{address}>" and not any(
        ch in address for ch in "\r\n\0"
    )


def _envelope(sender: str, to: str) -> bytes:
    """MAIL, RCPT and DATA as one pipelined write (both addresses `_pipelinable`)."""
    return f"MAIL FROM:<{sender}>\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode("ascii")


def _send_body(smtp: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """What `smtp.data(message)` does after DATA's 354, for bytes, with its dot-stuffing
    done by bytes.replace, which is much cheaper than smtplib's regular expression over the
    whole message."""
    stuffed = message.replace(b"\n.", b"\n..")  # what (?m)^\. -> .. does, as bytes
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    smtp.send(stuffed + b".\r\n")
    return smtp.getreply()


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())}".strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out ({exc or 'no answer'})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

