"""Messages built directly as bytes parse to the same headers and parts as EmailMessage's."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from digest.mail.message import OutgoingEmail, build_message, clean_subject
from digest.mail.mime import fast_message_bytes, message_bytes
from digest.settings import Settings

from ..conftest import make_settings

SUBJECTS = [
    "Paper Digest for 23 Nov 2026: 10 new papers on LoRA, activation sparsity",
    "Paper Digest for 23 Nov 2026: 3 new papers on β-OPSD, Σ-Mem, Jörg’s “quotes” — and more",
    "x" * 200,
    "word " * 60,
    "=?utf-8?q?not_an_encoded_word?= but looks like one",
    "tabs\tand  double  spaces",
    "Paper Digest for 1 Dec 2026: 10 new papers on " + "ünïcödé " * 12 + "end…",
    "…" * 40,
    "a" * 70 + " é " + "b" * 90,
]
BODIES = [
    "plain ascii\nsecond line\n",
    "β-OPSD — Σ-Mem für Jörg\n" * 3,
    "a very long line " * 40 + "\n",
    "trailing spaces   \nand tabs\t\n= signs == and =3D\n.dot at start\nFrom the top\n",
    "no final newline",
    "windows\r\nline\r\nendings\r\n",
    "",
]


def emails(settings: Settings) -> list[OutgoingEmail]:
    rng = random.Random(5)
    out = []
    for i in range(60):
        out.append(OutgoingEmail(
            to=rng.choice(["ada@example.org", "x@bücher.example", "grace.hopper+d@example.com"]),
            subject=rng.choice(SUBJECTS),
            html=rng.choice(["<html><head><style>p{}</style></head>", "<html><head>é</head>",
                             ""])
                 + "<body>" + rng.choice(BODIES) + "<p>" + "é" * rng.randint(0, 300)
                 + "</p>" + "<td>x</td>" * rng.choice([1, 300]) + "</body></html>",
            text=rng.choice(BODIES),
            message_id=f"<digest.2026-11-23.{i}.abc@digest.test>",
            unsubscribe_url=rng.choice([
                f"https://digest.test/unsubscribe/{'t' * rng.randint(10, 200)}",
                "https://digest.test/u/x"]),
            date=datetime(2026, 11, 23, 7, i % 60, tzinfo=timezone.utc),
            unsubscribe_mailto=rng.choice([  # empty: UNSUBSCRIBE_MAILTO; else the reader's own
                "", "unsubscribe+42-mfrggzdfmztwq2lk@digest.test",
                "u" * 36 + "+2147483647-mfrggzdfmztwq2lk@digest.test"]),
        ))
    return out


@pytest.fixture(params=["plain", "unicode-from-reply-to"])
def mail_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    s = make_settings(tmp_path)
    if request.param != "plain":
        s = replace(s, mail_from="Jörg’s Paper Digest <digest@digest.test>",
                    mail_reply_to="Help <help@digest.test>")
    return s


def parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def test_fast_bytes_parse_to_the_same_headers_and_parts(mail_settings: Settings) -> None:
    for email in emails(mail_settings):
        fast = parsed(fast_message_bytes(mail_settings, email))
        slow_msg = build_message(mail_settings, email)
        slow = parsed(slow_msg.as_bytes(policy=slow_msg.policy))
        assert [k for k in fast] == [k for k in slow]
        for name in slow:
            if name == "Content-Type":
                assert fast.get_content_type() == slow.get_content_type()
            elif name == "Subject":
                # Ours reads exactly as written. The email package's does not always: it
                # passes "=?...?=" through (a reader decodes it) and, folding a long line
                # next to an encoded word, can move a space.
                assert str(fast[name]) == clean_subject(email.subject)
            else:
                # EmailMessage sometimes folds right after "Subject:", which a parser reads
                # as a leading space; ours never does. Otherwise the values are identical.
                assert str(fast[name]) == str(slow[name]).strip(), name
        fast_parts, slow_parts = list(fast.iter_parts()), list(slow.iter_parts())
        assert [p.get_content_type() for p in fast_parts] == ["text/plain", "text/html"]
        for f, s in zip(fast_parts, slow_parts, strict=True):
            assert f.get_content_type() == s.get_content_type()
            assert f.get_content_charset() == s.get_content_charset() == "utf-8"
            ours, theirs = (str(x.get_content()).replace("\r\n", "\n") for x in (f, s))
            assert ours == theirs or ours.replace(">\n<", "><") in (
                theirs.replace(">\n<", "><"), as_7bit_html(theirs).replace(">\n<", "><"))


def as_7bit_html(page: str) -> str:
    """The same page as _html_part sends it in 7 bits: references for non-ASCII, some line
    breaks between tags (removed here, as a browser ignores them)."""
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")


def test_fast_bytes_are_well_formed_mail(mail_settings: Settings) -> None:
    for email in emails(mail_settings):
        data = fast_message_bytes(mail_settings, email)
        assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF everywhere, no bare LF
        assert data.isascii()  # 7-bit: no 8BITMIME needed
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        assert not parsed(data).defects


def test_an_international_mailbox_takes_the_email_packages_smtputf8_path(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    email = replace(emails(settings)[0], to="jörg@example.org")
    assert parsed(message_bytes(settings, email))["To"] == "jörg@example.org"


def test_a_header_can_never_carry_a_line_break(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, list_id="x\r\nBcc: victim@example.com")
    with pytest.raises(ValueError):
        fast_message_bytes(settings, emails(settings)[0])


def test_any_subject_reads_back_exactly_as_written(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    rng = random.Random(11)
    alphabet = "abc XYZ 019 =?_!*/-…—“”βΣéü中文😀\t\r\n"
    for _ in range(400):
        subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 160)))
        email = replace(emails(settings)[0], subject=subject)
        data = fast_message_bytes(settings, email)
        head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
        subject_lines = head.split("\r\nSubject: ", 1)[1].split("\r\n")
        subject_lines = subject_lines[: next(i for i, line in enumerate(subject_lines[1:], 1)
                                             if not line.startswith(" "))]
        subject_lines[0] = "Subject: " + subject_lines[0]
        assert max(len(line) for line in subject_lines) <= 78
        assert str(parsed(data)["Subject"]) == clean_subject(subject)


@pytest.mark.parametrize(("page", "encoding"), [
    ("<html><body>" + "<td>cell</td>" * 500 + "</body></html>", "7bit"),
    ("<html><body><p>" + "word " * 400 + "</p></body></html>", "quoted-printable"),
    ("<html><head><title>Jörg</title></head><body>x</body></html>", "quoted-printable"),
])
def test_html_goes_in_long_7_bit_lines_only_where_it_can(
    tmp_path: Path, page: str, encoding: str
) -> None:
    settings = make_settings(tmp_path)
    data = fast_message_bytes(settings, replace(emails(settings)[0], html=page))
    part = parsed(data).get_body(("html",))
    assert part is not None and part["Content-Transfer-Encoding"] == encoding
    assert str(part.get_content()).replace("\r\n", "\n").replace(">\n<", "><") in (
        page + "\n", as_7bit_html(page) + "\n")
    lines = data.split(b"\r\n")
    assert max(map(len, lines)) <= 998
    if encoding == "7bit":
        assert len(lines) < 40  # broken where needed, not at every tag



def test_quoted_printable_is_what_binascii_gives_on_any_text() -> None:
    """`quoted_printable` gives the bytes b2a_qp gives, at the soft-break column, with a lone
    '.', spaces and tabs at a line's end, '=', control and non-ASCII characters: the day
    renderer's pieces, encoded apart, must join to the whole text's encoding, and any shortcut
    taken for plain lines has to give the same bytes."""
    import binascii

    from digest.mail.mime import quoted_printable

    rng = random.Random(20261207)
    plain = ["a", "Z", "0", " ", ".", "/", ":", "-", "~", "\n"]
    hostile = [*plain, "=", "\t", "é", "—", "\x7f", "\x01", " \n", ".\n", "\r"]
    for _ in range(20000):
        length = rng.choice([rng.randint(0, 10), rng.randint(70, 80), rng.randint(145, 156),
                             rng.randint(0, 400)])
        text = "".join(rng.choice(rng.choice([plain, hostile])) for _ in range(length))
        expected = binascii.b2a_qp(text.encode(), quotetabs=False, istext=True, header=False)
        assert quoted_printable(text) == expected, repr(text)
