"""The file backend: each message an `.eml` in `outbox/<day>/`, and `outbox/index.html`
listing the newest ones, read from their headers through a cache kept beside them."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.parser import BytesHeaderParser, BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from jinja2 import Environment, FileSystemLoader

from ..settings import PROJECT_DIR, Settings
from .backend import OutboxRow, OutboxRows, Sender, SendOutcome, SendResult
from .message import OutgoingEmail, clean_subject, wire_address
from .mime import message_bytes

TEMPLATES_DIR = PROJECT_DIR / "templates"


@dataclass(frozen=True)
class OutboxEntry:
    """One message in the file outbox, as the index shows it."""

    day: str
    date: datetime | None
    to: str
    subject: str
    kind: str
    message_id: str
    eml_href: str
    html_href: str | None


# What an .eml name may not hold of the recipient's address (no slash: it stays in its folder).
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9@+_.-]+")


class FileSender(Sender):
    """Write each message into `outbox_dir/<day>/` as an `.eml` file.

    A file's name comes from the kind, recipient and Message-ID, so sending the same message
    again overwrites it. `close()` rewrites `outbox_dir/index.html` listing the newest
    messages in the outbox, earlier runs included, each with an `.html` copy of its HTML part
    to open in a browser. The copies are written then, for the messages the index can list:
    a large day need not write a copy of every message when the index links to few.
    """

    def __init__(self, settings: Settings, write_index_on_close: bool = True) -> None:
        self.settings = settings
        self.write_index_on_close = write_index_on_close
        self.outbox_dir = Path(settings.outbox_dir).resolve()
        self.index_path = self.outbox_dir / "index.html"
        self.known: OutboxRows = {}  # index rows of the messages written here
        self._folders: dict[str, str] = {}
        # The HTML of the newest messages written here: their copies are written on close.
        self._recent: OrderedDict[str, str] = OrderedDict()

    def send(self, email: OutgoingEmail) -> SendResult:
        day, file_name = self._place(email)
        name = f"{self._day_folder(day)}/{file_name}"
        data = message_bytes(self.settings, email)
        stat = _write_atomically(name, data)
        self._recent[name] = email.html
        self._recent.move_to_end(name)
        if len(self._recent) > INDEX_ROWS:
            self._recent.popitem(last=False)
        # What the index shows of it, so that writing the index needs not read it back.
        sent_at = email.date if email.date.tzinfo else email.date.replace(tzinfo=timezone.utc)
        self.known[f"{day}/{file_name}"] = OutboxRow(
            stat.st_size, stat.st_mtime_ns, sent_at.replace(microsecond=0).isoformat(),
            wire_address(email.to), clean_subject(email.subject), email.kind, email.message_id,
        )
        return SendResult(SendOutcome.SENT, name)

    @staticmethod
    def _place(email: OutgoingEmail) -> tuple[str, str]:
        """(day folder name, file name) of `email`'s .eml, always inside the outbox whatever
        the address holds; as strings: a day makes one per subscriber, and pathlib's joins
        cost more than the names."""
        recipient = _UNSAFE_IN_NAME.sub("_", email.to).strip("._-")[:64] or "recipient"
        digest = hashlib.sha256(email.message_id.encode()).hexdigest()[:12]
        return email.date.date().isoformat(), f"{email.kind}--{recipient}--{digest}.eml"

    def _day_folder(self, day: str) -> str:
        """outbox/<day>/, checked once per day to lie inside the outbox (a symlink might not).

        The file name itself cannot leave it: the recipient part keeps only [A-Za-z0-9@+_.-]
        (no slash), and the kind and hash are our own."""
        folder = self._folders.get(day)
        if folder is None:
            path = self.outbox_dir / day
            if not path.resolve().is_relative_to(self.outbox_dir):
                raise ValueError(f"refusing to write into {path}: outside the outbox")
            path.mkdir(parents=True, exist_ok=True)
            folder = self._folders[day] = str(path)
        return folder

    def outbox_rows(self) -> OutboxRows:
        return self.known

    def close(self) -> None:
        """Write the .html copies of the newest messages (the index may list them), then,
        unless another process gathers the rows, the index."""
        for eml_name, html in self._recent.items():
            _write_atomically(Path(eml_name).with_suffix(".html"), html.encode("utf-8"))
        self._recent.clear()
        if self.write_index_on_close:
            self.write_index()

    def write_index(self) -> Path:
        entries, count = outbox_entries(self.outbox_dir, self.known, INDEX_ROWS)
        shown = [_with_html_copy(self.outbox_dir, entry) for entry in entries]
        days: dict[str, list[OutboxEntry]] = {}
        for entry in shown:
            days.setdefault(entry.day, []).append(entry)
        html = (
            _templates()
            .get_template("outbox/index.html")
            .render(days=days, count=count, shown=len(shown),
                    outbox_dir=str(self.outbox_dir))
        )
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.index_path, html.encode("utf-8"))
        return self.index_path


def outbox_rows(sender: Sender) -> OutboxRows:
    """The index rows of what a file backend (however wrapped) wrote; {} for the others."""
    return sender.outbox_rows()


def write_outbox_index(settings: Settings, rows: OutboxRows) -> Path:
    """Rewrite the outbox index once for messages several processes wrote (their rows)."""
    sender = FileSender(settings)
    sender.known.update(rows)
    return sender.write_index()


INDEX_ROWS = 1000  # the index lists the newest messages; the day folders hold them all
INDEX_CACHE = ".index-cache.json"


def outbox_entries(
    outbox_dir: Path, known: OutboxRows | None = None, limit: int = INDEX_ROWS
) -> tuple[list[OutboxEntry], int]:
    """The newest `limit` .eml files under `outbox_dir/<day>/`, newest first, and how many
    there are; read from their headers only.

    The headers of each file are kept in `INDEX_CACHE` under its size and modification time,
    so a run that adds many messages does not re-read the ones already there; a file that
    changed or appeared from elsewhere is read again. The `known` rows, of files this run
    wrote, are taken as they are.
    """
    if not outbox_dir.is_dir():
        return [], 0
    cache_path = outbox_dir / INDEX_CACHE
    stored = _load_index_cache(cache_path)
    known = known or {}
    fresh: OutboxRows = {}
    parser = BytesHeaderParser(policy=default_policy)
    found: list[tuple[str, float, str, OutboxRow, bool]] = []
    # A day's messages share each second's Date: each distinct one is parsed once.
    stamps: dict[str, float] = {}
    for day_dir in outbox_dir.iterdir():
        if not (day_dir.is_dir() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", day_dir.name)):
            continue
        day = day_dir.name
        names = set(os.listdir(day_dir))
        for name in names:
            if not is_message_name(name):
                continue
            key = f"{day}/{name}"
            row = known.get(key)
            if row is None:
                eml = day_dir / name
                stat = eml.stat()
                row = stored.get(key)
                if row is None or row[:2] != (stat.st_size, stat.st_mtime_ns):
                    row = OutboxRow(stat.st_size, stat.st_mtime_ns, *_header_fields(parser, eml))
            fresh[key] = row
            when = row.sent_at or ""
            sent_at = stamps.get(when)
            if sent_at is None:
                sent_at = stamps[when] = datetime.fromisoformat(when).timestamp() if when else 0.0
            has_html = name[: -len(".eml")] + ".html" in names
            found.append((day, sent_at, name, row, has_html))
    if fresh != stored:
        _write_atomically(cache_path, json.dumps(fresh).encode("utf-8"))
    newest = heapq.nlargest(limit, found, key=lambda f: (f[0], f[1], f[2]))
    entries = [
        _entry(day, name, row, name[: -len(".eml")] + ".html" if has_html else None)
        for day, _, name, row, has_html in newest
    ]
    return entries, len(found)


def _with_html_copy(outbox_dir: Path, entry: OutboxEntry) -> OutboxEntry:
    """The entry, its .html copy written (or rewritten, if the .eml is newer) from the .eml:
    for messages written elsewhere, or by a sender that did not close."""
    eml = outbox_dir / unquote(entry.eml_href)
    html = eml.with_suffix(".html")
    with contextlib.suppress(OSError):
        if entry.html_href and html.stat().st_mtime_ns >= eml.stat().st_mtime_ns:
            return entry
    try:
        message = BytesParser(policy=default_policy).parsebytes(eml.read_bytes())
        part = message.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
        if part is None:
            return replace(entry, html_href=None)
        _write_atomically(html, part.get_content().encode("utf-8"))
    except (OSError, LookupError, ValueError):  # unreadable: the .eml link still works
        return replace(entry, html_href=None)
    return replace(entry, html_href=entry.eml_href[: -len(".eml")] + ".html")


def _load_index_cache(path: Path) -> OutboxRows:
    """The cached rows; a damaged cache or row is only read again from its file."""
    try:
        cache = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict):
        return {}
    return {key: OutboxRow(*row) for key, row in cache.items()
            if isinstance(row, list) and len(row) == len(OutboxRow._fields)}


def _header_fields(
    parser: BytesHeaderParser[Any], eml: Path
) -> tuple[str | None, str, str, str, str]:
    """(date ISO or None, to, subject, kind, message id) from a message file's headers."""
    headers = parser.parsebytes(_read_head(eml))
    sent_at = getattr(headers["Date"], "datetime", None) if headers["Date"] else None
    return (
        sent_at.isoformat() if sent_at else None,
        str(headers["To"] or ""), str(headers["Subject"] or ""),
        str(headers["X-Digest-Kind"] or ""), str(headers["Message-ID"] or ""),
    )


def _entry(day: str, name: str, row: OutboxRow, html_name: str | None) -> OutboxEntry:
    return OutboxEntry(
        day=day,
        date=datetime.fromisoformat(str(row.sent_at)) if row.sent_at else None,
        to=str(row.to), subject=str(row.subject), kind=str(row.kind),
        message_id=str(row.message_id),
        eml_href=f"{day}/{quote(name, safe='@+')}",
        html_href=f"{day}/{quote(html_name, safe='@+')}" if html_name else None,
    )


def _read_head(path: Path) -> bytes:
    """The header block of a message file, without reading a large body."""
    with path.open("rb") as f:
        head = f.read(16384)
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            more = f.read(16384)
            if not more:
                break
            head += more
    return head


def is_message_name(name: str) -> bool:
    """Whether a file name in an outbox day folder is a whole message: an .eml, not hidden (a
    write in progress, or one cut short by a kill, before this version named those ".part")."""
    return name.endswith(".eml") and not name.startswith(".")


def _write_atomically(path: Path | str, data: bytes) -> os.stat_result:
    # A reader (a browser on index.html, a mail client on an .eml) never sees half a file.
    # The temporary name is the file's own plus this process and thread: unique among
    # writers without mkstemp's random names and chmod (a file per message at 100k a day).
    # It is hidden and ends in ".part", so that what a killed writer leaves behind is never
    # taken for a message (`is_message_name`).
    target = str(path)
    folder, _, name = target.rpartition("/")
    tmp = f"{folder}/.{name}.{os.getpid()}-{threading.get_ident()}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            stat = os.fstat(fd)  # the outbox index keeps size and mtime: no lookup by name
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return stat


@functools.cache
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True)

