"""The file outbox: .eml files on disk, parsed back, and the index a browser shows."""

from __future__ import annotations

from datetime import timedelta
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from digest.mail.message import build_message
from digest.mail.mime import message_bytes
from digest.mail.outbox import FileSender

from ..conftest import make_settings
from .emails import SENT_AT, make_email, parts

# --- File outbox --------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [v for k, v in attrs if k == "href" and v]


def test_file_sender_writes_the_message_and_an_html_copy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    email = make_email(settings)
    with FileSender(settings) as sender:
        result = sender.send(email)

    eml = Path(result.detail)
    assert result.sent
    assert eml.parent == settings.outbox_dir.resolve() / "2026-11-23"
    assert eml.read_bytes() == message_bytes(settings, email)
    msg = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    expected = build_message(settings, email)
    assert [(k, str(v)) for k, v in msg.items()] == [(k, str(v)) for k, v in expected.items()]
    assert parts(msg) == {"text/plain": email.text, "text/html": email.html}  # type: ignore[arg-type]
    assert eml.with_suffix(".html").read_text(encoding="utf-8") == email.html


def test_file_sender_overwrites_a_resent_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        first = sender.send(make_email(settings, subject="first try"))
        second = sender.send(make_email(settings, subject="second try"))

    assert first.detail == second.detail
    assert list(settings.outbox_dir.glob("*/*.eml")) == [Path(second.detail)]
    assert b"Subject: second try" in Path(second.detail).read_bytes()


def test_outbox_index_lists_every_session_newest_day_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        sender.send(make_email(settings, 1, subject="Monday's papers"))
    later = SENT_AT + timedelta(days=1)
    with FileSender(settings) as sender:
        sender.send(make_email(settings, 2, subject="Tuesday's papers", date=later))
        sender.send(make_email(settings, 3, subject="Tuesday's other papers", date=later))

    page = sender.index_path.read_text(encoding="utf-8")
    assert sender.index_path == settings.outbox_dir.resolve() / "index.html"
    assert page.index("2026-11-24") < page.index("2026-11-23")
    for n, subject in ((1, "Monday&#39;s papers"), (2, "Tuesday&#39;s papers")):
        assert subject in page and f"reader{n}@example.org" in page
    links = _Links()
    links.feed(page)
    targets = {(sender.index_path.parent / unquote(href)).resolve() for href in links.hrefs}
    assert {t.suffix for t in targets} == {".eml", ".html"}
    assert len(targets) == 6 and all(t.is_file() for t in targets)


def test_html_copies_are_written_for_the_messages_the_index_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import digest.mail.outbox

    monkeypatch.setattr(digest.mail.outbox, "INDEX_ROWS", 2)
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        paths = [Path(sender.send(make_email(settings, n, date=SENT_AT + timedelta(minutes=n)))
                      .detail) for n in (1, 2, 3)]
    # A big day writes one file per message; the two the index lists get their copy.
    assert [p.with_suffix(".html").exists() for p in paths] == [False, True, True]
    with FileSender(settings) as sender:  # sent again, changed: the copy follows the .eml
        sender.send(make_email(settings, 3, date=SENT_AT + timedelta(minutes=3),
                               html="<p>second version</p>\n"))
    assert paths[2].with_suffix(".html").read_text(encoding="utf-8") == "<p>second version</p>\n"


def test_hostile_recipient_stays_inside_the_outbox(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        result = sender.send(make_email(settings, to="../../../../x@y.org"))

    written = Path(result.detail).resolve()
    assert written.is_relative_to(settings.outbox_dir.resolve())
    assert written.parent.name == "2026-11-23"
    assert not (tmp_path / "x@y.org.eml").exists()


def test_hostile_subject_is_escaped_in_the_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        sender.send(make_email(settings, subject='<script>alert("x")</script> & <b>papers</b>'))

    page = sender.index_path.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<b>papers" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;papers" in page


def test_empty_outbox_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    FileSender(settings).close()
    assert "The outbox is empty." in (settings.outbox_dir / "index.html").read_text()


def test_outbox_index_rereads_a_changed_file_and_lists_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    with FileSender(settings) as sender:
        paths = [Path(sender.send(make_email(settings, n, subject=f"Papers {n}")).detail)
                 for n in range(1, 4)]
    assert (settings.outbox_dir / ".index-cache.json").is_file()
    # A file changed behind the index's back (another run, a hand edit) is read again.
    paths[0].write_bytes(paths[0].read_bytes().replace(b"Papers 1", b"Edited 1"))
    monkeypatch.setattr("digest.mail.outbox.INDEX_ROWS", 2)
    FileSender(settings).close()
    page = (settings.outbox_dir / "index.html").read_text(encoding="utf-8")
    assert "3 messages" in page and "The newest 2 are listed here" in page
    assert page.count('download>.eml</a>') == 2
    monkeypatch.setattr("digest.mail.outbox.INDEX_ROWS", 10)
    FileSender(settings).close()
    page = (settings.outbox_dir / "index.html").read_text(encoding="utf-8")
    assert "Edited 1" in page and "Papers 1" not in page and "Papers 3" in page


