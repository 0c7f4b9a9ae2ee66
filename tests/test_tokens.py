"""Signed links: the hand-made fast path equals itsdangerous' own tokens, a token names one
purpose and one person (id and link key), and links sent before link keys still work for the
right person only."""

from __future__ import annotations

import random
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import pytest
from itsdangerous import URLSafeTimedSerializer

from digest import tokens
from digest.models import new_link_key
from digest.settings import Settings
from digest.tokens import Claim, Purpose, make_token, make_tokens, read_claim

from .conftest import make_settings


class Owner(NamedTuple):
    id: int
    link_key: str


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def reference(settings: Settings, purpose: Purpose) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.signing_key(), salt=f"paper-digest:{purpose.value}")


def test_tokens_are_exactly_what_itsdangerous_makes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)  # one second for both
    ids = (0, 1, 42, 99_999, 123_456_789, 999_999_999, 10**9, 10**12 - 1, 10**18)
    owners = [Owner(i, new_link_key()) for i in ids for _ in range(50)]
    owners += [Owner(random.randrange(10**9), new_link_key()) for _ in range(5000)]
    owners += [Owner(7, "a"), Owner(7, 'quote"and\\slash'), Owner(-3, "k")]
    for owner in owners:
        for purpose, token in make_tokens(settings, owner, list(Purpose)).items():
            assert token == reference(settings, purpose).dumps([owner.id, owner.link_key])
            claim = read_claim(settings, purpose, token)
            assert (claim.id, claim.key) == (owner.id, owner.link_key)


def test_a_fast_token_that_zlib_would_have_shortened_still_reads_the_same(
    settings: Settings,
) -> None:
    """No key new_link_key makes repeats itself like this one; were one to, only the bytes of
    its token would differ from `dumps`', not what it says."""
    owner = Owner(111_111_111, "a" * 22)
    for purpose, token in make_tokens(settings, owner, list(Purpose)).items():
        assert reference(settings, purpose).loads(token) == [owner.id, owner.link_key]
        assert read_claim(settings, purpose, token).key == owner.link_key


def test_a_token_is_for_one_purpose_and_one_deployment(settings: Settings, tmp_path: Path) -> None:
    owner = Owner(5, new_link_key())
    token = make_token(settings, Purpose.PREFERENCES, owner)
    with pytest.raises(tokens.InvalidToken):
        read_claim(settings, Purpose.UNSUBSCRIBE, token)
    other = make_settings(tmp_path, secret_key="another deployment")
    with pytest.raises(tokens.InvalidToken):
        read_claim(other, Purpose.PREFERENCES, token)
    for garbage in ("", "x", token[:-1], token + "x", "." * 40):
        with pytest.raises(tokens.InvalidToken):
            read_claim(settings, Purpose.PREFERENCES, garbage)
    # A genuine token whose payload is neither an id nor [id, key] names nobody.
    for payload in ("5", [5], [5, 6], {"id": 5}, ["5", "k"], [True, "k"]):
        with pytest.raises(tokens.InvalidToken):
            read_claim(settings, Purpose.PREFERENCES,
                       reference(settings, Purpose.PREFERENCES).dumps(payload))


def test_a_link_is_made_for_a_row_never_for_a_bare_id(settings: Settings) -> None:
    with pytest.raises(TypeError, match="link_key"):
        tokens.link(settings, Purpose.UNSUBSCRIBE, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="link_key"):
        make_token(settings, Purpose.UNSUBSCRIBE, Owner(5, ""))


def test_a_claim_binds_only_the_row_with_its_key(settings: Settings) -> None:
    created = datetime.now(timezone.utc) - timedelta(days=3)
    claim = read_claim(settings, Purpose.UNSUBSCRIBE,
                       make_token(settings, Purpose.UNSUBSCRIBE, Owner(5, "a" * 22)))
    assert claim.binds("a" * 22, created)
    assert not claim.binds("b" * 22, created)  # the row with id 5 is someone else now
    assert not claim.binds("a" * 21, created)


def test_links_sent_before_link_keys_count_only_if_signed_after_the_row_was_made(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A legacy token's payload is the bare id. The removed subscriber's token was signed
    before the newcomer who got the same id existed, so it must not bind the newcomer."""
    signed_at = 1_800_000_000.5
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: signed_at)
        legacy = reference(settings, Purpose.UNSUBSCRIBE).dumps(5)
    claim = read_claim(settings, Purpose.UNSUBSCRIBE, legacy)
    assert (claim.id, claim.key) == (5, None)
    moment = datetime.fromtimestamp(signed_at, timezone.utc)
    assert claim.binds("any key", moment - timedelta(days=30))  # the row it was made for
    assert claim.binds("any key", moment.replace(microsecond=999_999))  # the same second
    assert not claim.binds("any key", moment + timedelta(seconds=1))  # a newcomer
    assert not claim.binds("any key", moment + timedelta(days=30))
    assert read_claim(settings, Purpose.PREFERENCES,
                      reference(settings, Purpose.PREFERENCES).dumps(5)).key is None
    assert read_claim(settings, Purpose.FEEDBACK,
                      reference(settings, Purpose.FEEDBACK).dumps(5)).key is None
    # A confirmation link from before sign-up requests names no request: it has expired.
    with pytest.raises(tokens.ExpiredToken):
        read_claim(settings, Purpose.CONFIRM, reference(settings, Purpose.CONFIRM).dumps(5))


def test_max_age_per_purpose(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = Owner(5, new_link_key())
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: 1_700_000_000.0)
        old = make_tokens(settings, owner, list(Purpose))
    assert read_claim(settings, Purpose.UNSUBSCRIBE, old[Purpose.UNSUBSCRIBE]).id == 5
    for purpose in (Purpose.CONFIRM, Purpose.PREFERENCES, Purpose.FEEDBACK):
        with pytest.raises(tokens.ExpiredToken):
            read_claim(settings, purpose, old[purpose])
    assert isinstance(read_claim(settings, Purpose.CONFIRM,
                                 make_token(settings, Purpose.CONFIRM, owner)), Claim)


def test_an_archive_token_names_the_reader_and_the_date_and_lives_archive_link_days(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = date(2026, 12, 6)
    owners = [Owner(i, new_link_key()) for i in (0, 42, 10**9, 10**12)] + [Owner(7, 'q"\\')]
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: 1_800_000_000.25)
        for owner in owners:
            token = tokens.make_archive_token(settings, owner, day)
            assert token == reference(settings, Purpose.ARCHIVE).dumps(
                [owner.id, owner.link_key, "2026-12-06"])
    owner = owners[1]
    token = tokens.make_archive_token(settings, owner, day)
    claim, read_day = tokens.read_archive_claim(settings, token)
    assert (claim.id, claim.key, read_day) == (owner.id, owner.link_key, day)
    assert tokens.archive_link(settings, owner, day).startswith("https://digest.test/archive/")
    # Another purpose's token, a token without a date, a forged one: not an archive link.
    for bad in (make_token(settings, Purpose.PREFERENCES, owner),
                reference(settings, Purpose.ARCHIVE).dumps([owner.id, owner.link_key]),
                reference(settings, Purpose.ARCHIVE).dumps([owner.id, owner.link_key, "6/12"]),
                token[:-2] + ("AA" if not token.endswith("AA") else "BB")):
        with pytest.raises(tokens.InvalidToken):
            tokens.read_archive_claim(settings, bad)
    # It lives ARCHIVE_LINK_DAYS, and a day for the reader's time zone; then it has expired.
    signed = time.time()
    for days, expired in ((settings.archive_link_days, False),
                          (settings.archive_link_days + 1.01, True)):
        monkeypatch.setattr(time, "time", lambda days=days: signed + days * 86400)
        if expired:
            with pytest.raises(tokens.ExpiredToken):
                tokens.read_archive_claim(settings, token)
        else:
            assert tokens.read_archive_claim(settings, token)[1] == day
