"""A small IMAP4rev1 server on loopback for tests: one mailbox, the commands imaplib sends to
read unseen messages (LOGIN, SELECT, UID SEARCH UNSEEN, UID FETCH, UID STORE +FLAGS).

Implicit TLS (`tls_context`) or STARTTLS (`starttls_context`) like a real server; it records
each command with whether it came over TLS, so a test can check that a password never
travelled in the clear.
"""

from __future__ import annotations

import re
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StoredMessage:
    uid: int
    data: bytes
    seen: bool = False
    fetched: bool = False  # its body was downloaded


@dataclass
class IMAPServer:
    username: str = "digest"
    password: str = "s3cret"
    mailbox: str = "INBOX"
    tls_context: ssl.SSLContext | None = None
    starttls_context: ssl.SSLContext | None = None
    messages: list[StoredMessage] = field(default_factory=list)
    commands: list[tuple[str, bool]] = field(default_factory=list)  # (command, over TLS)
    port: int = 0
    _server: socketserver.ThreadingTCPServer | None = None

    def add(self, data: bytes, seen: bool = False) -> StoredMessage:
        message = StoredMessage(len(self.messages) + 1, data, seen)
        self.messages.append(message)
        return message

    def start(self) -> None:
        owner = self

        class Handler(_Session):
            server_state = owner

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _QuietServer(socketserver.ThreadingTCPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses the certificate or hangs up is part of the tests."""


_ARGUMENT = re.compile(rb'"((?:[^"\\]|\\.)*)"|(\S+)')


class _Session(socketserver.StreamRequestHandler):
    server_state: IMAPServer

    def setup(self) -> None:
        self.tls = self.server_state.tls_context is not None
        if self.tls:
            self.request = self.server_state.tls_context.wrap_socket(  # type: ignore[union-attr]
                self.request, server_side=True)
        super().setup()

    def handle(self) -> None:
        self.logged_in = False
        self.say(b"* OK IMAP4rev1 test server ready")
        while line := self.rfile.readline(65536):
            parts = [m[1] if m[1] is not None else m[2] for m in _ARGUMENT.finditer(line)]
            parts = [p.replace(b'\\"', b'"').replace(b"\\\\", b"\\") for p in parts]
            if len(parts) < 2:
                self.say(b"* BAD no command")
                continue
            tag, command, args = parts[0], parts[1].upper(), parts[2:]
            self.server_state.commands.append((command.decode(), self.tls))
            if not self.answer(tag, command, args):
                return

    def answer(self, tag: bytes, command: bytes, args: list[bytes]) -> bool:
        state = self.server_state
        if command == b"CAPABILITY":
            starttls = b" STARTTLS" if state.starttls_context and not self.tls else b""
            self.say(b"* CAPABILITY IMAP4rev1" + starttls)
        elif command == b"STARTTLS" and state.starttls_context and not self.tls:
            self.say(tag + b" OK begin TLS")
            self.request = state.starttls_context.wrap_socket(self.request, server_side=True)
            self.tls = True
            self.rfile, self.wfile = self.request.makefile("rb"), self.request.makefile("wb")
            return True
        elif command == b"LOGIN":
            if args != [state.username.encode(), state.password.encode()]:
                self.say(tag + b" NO [AUTHENTICATIONFAILED] invalid credentials")
                return True
            self.logged_in = True
        elif command == b"SELECT" and self.logged_in:
            if args != [state.mailbox.encode()]:
                self.say(tag + b" NO no such mailbox")
                return True
            self.say(f"* {len(state.messages)} EXISTS".encode())
            self.say(b"* FLAGS (\\Seen)")
        elif command == b"UID" and self.logged_in and args:
            self.uid_command(args[0].upper(), args[1:])
        elif command == b"LOGOUT":
            self.say(b"* BYE")
            self.say(tag + b" OK LOGOUT completed")
            return False
        elif command != b"NOOP":
            self.say(tag + b" BAD unknown command or state")
            return True
        self.say(tag + b" OK " + command + b" completed")
        return True

    def uid_command(self, command: bytes, args: list[bytes]) -> None:
        state = self.server_state
        if command == b"SEARCH":
            unseen = [str(m.uid).encode() for m in state.messages if not m.seen]
            self.say(b" ".join([b"* SEARCH", *unseen]))
            return
        message = next(m for m in state.messages if str(m.uid).encode() == args[0])
        seq = str(state.messages.index(message) + 1).encode()
        what = b" ".join(args[1:]).upper()
        if command == b"FETCH" and what == b"(RFC822.SIZE)":
            self.say(b"* %s FETCH (UID %d RFC822.SIZE %d)" % (seq, message.uid, len(message.data)))
        elif command == b"FETCH" and what == b"(BODY.PEEK[])":
            message.fetched = True
            self.wfile.write(b"* %s FETCH (UID %d BODY[] {%d}\r\n"
                             % (seq, message.uid, len(message.data)))
            self.wfile.write(message.data)
            self.say(b")")
        elif command == b"STORE" and what == b"+FLAGS.SILENT (\\SEEN)":
            message.seen = True

    def say(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")
        self.wfile.flush()


def make_server(**kwargs: Any) -> IMAPServer:
    server = IMAPServer(**kwargs)
    server.start()
    return server
