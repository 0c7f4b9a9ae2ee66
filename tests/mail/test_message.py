"""The message: headers that cannot be injected, bare unsubscribe URLs, deterministic ids."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from digest.mail.message import message_id_for
from digest.mail.mime import message_bytes

from ..conftest import make_settings
from .emails import MAILTO, make_email, parts


def test_message_bytes_are_crlf_seven_bit_and_short_lined(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail_reply_to="Editors <editors@digest.test>")
    long_html = "<p>" + "Jörg β " * 400 + "</p>"  # one 2,800-character line
    data = message_bytes(settings, make_email(settings, html=long_html))

    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(data) < 128  # no 8BITMIME needed
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["Reply-To"] == "Editors <editors@digest.test>"
    assert parts(msg)["text/html"] == long_html + "\n"  # type: ignore[arg-type]


def test_long_unsubscribe_url_stays_a_bare_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    url = "https://digest.test/u/" + "x" * 180 + "?t=" + "y" * 60
    data = message_bytes(settings, make_email(settings, unsubscribe_url=url))

    assert f"<{url}>".encode() in data  # not =?utf-8?q?...?= encoded-words
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["List-Unsubscribe"] == f"<{url}>, {MAILTO}"


def test_injected_subject_stays_one_subject_and_adds_no_header(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    email = make_email(
        settings, subject="Papers\r\nBcc: victim@x.org\r\n\r\nbody\x00\x1b!\u2028X-Evil: 1"
    )
    msg = message_from_bytes(message_bytes(settings, email), policy=policy.default)

    assert msg.get_all("Subject") == ["Papers Bcc: victim@x.org body ! X-Evil: 1"]
    assert "Bcc" not in msg and "X-Evil" not in msg
    assert sorted(msg.keys()) == sorted(
        [
            "From",
            "To",
            "Date",
            "Subject",
            "Message-ID",
            "List-Id",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Precedence",
            "X-Digest-Kind",
            "MIME-Version",
            "Content-Type",
        ]
    )


@pytest.mark.parametrize(
    "to",
    [
        "reader@example.org\r\nBcc: victim@x.org",
        "reader@example.org\nBcc: v@x.org",
        "Reader <reader@example.org>",
        "reader @example.org",
        "reader@exa\x00mple.org",
        "a@b.org, c@d.org",
        "no-at-sign",
        '"quoted"@example.org',
        "a@b@example.org",
        "reader@example..org",
    ],
)
def test_unsafe_recipient_is_refused(tmp_path: Path, to: str) -> None:
    with pytest.raises(ValueError, match="refusing recipient"):
        make_email(make_settings(tmp_path), to=to)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "mailto:x@y.org",
        "https://digest.test/u\r\nBcc: v@x.org",
        "https://digest.test/u>, <https://evil.test/",
        "//digest.test/u",
        "https://dígest.test/",
    ],
)
def test_unsafe_unsubscribe_url_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="refusing unsubscribe URL"):
        make_email(make_settings(tmp_path), unsubscribe_url=url)


def test_a_link_like_one_accepted_before_is_still_checked(tmp_path: Path) -> None:
    # Links with the head of one that passed are checked faster, but checked all the same.
    settings = make_settings(tmp_path)
    make_email(settings, unsubscribe_url="https://digest.test/unsubscribe/token1")
    for url in ("https://digest.test/unsubscribe/a b", "https://digest.test/unsubscribe/a>",
                "https://digest.test/unsubscribe/\u00e9", "https://digest.test/unsubscribe/\n"):
        with pytest.raises(ValueError, match="refusing unsubscribe URL"):
            make_email(settings, unsubscribe_url=url)


def test_message_id_is_the_keyed_hash_of_its_local_part(tmp_path: Path) -> None:
    # A retried send, even from a newer release, must carry the id the first attempt had.
    settings = make_settings(tmp_path)
    local = "digest.2026-11-23.42"
    tag = hmac.new(settings.signing_key().encode(), local.encode(), hashlib.sha256).hexdigest()
    assert message_id_for(settings, "digest", 42, date(2026, 11, 23)) == (
        f"<{local}.{tag[:16]}@{settings.mail_domain}>"
    )


def test_message_id_is_deterministic_and_distinct(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    day = date(2026, 11, 23)
    mid = message_id_for(settings, "digest", 42, day)

    assert mid == message_id_for(settings, "digest", 42, day)
    assert mid.startswith("<digest.2026-11-23.42.") and mid.endswith("@digest.test>")
    others = {
        message_id_for(settings, "digest", 43, day),
        message_id_for(settings, "digest", 42, day + timedelta(days=1)),
        message_id_for(settings, "welcome", 42, day),
        message_id_for(make_settings(tmp_path, secret_key="other-deployment"), "digest", 42, day),
    }
    assert mid not in others and len(others) == 4
    with pytest.raises(ValueError):
        message_id_for(settings, "digest\r\nBcc: x", 42, day)


