"""Signed links in emails: each token names one purpose and the one person it was made for.

itsdangerous signs `[id, link_key]` with a salt per purpose, so a token made to confirm an
address cannot unsubscribe anyone. The id alone is not enough to name a person: a deleted
subscriber's row may be followed by another (on SQLite, before migration 0005, with the same
id). The row's random `link_key` goes with it, so a link made for the deleted one does
nothing for whoever comes next. Confirmation links name a sign-up request (`SignupRequest`),
the others a subscriber.

Links sent before link keys existed carry the bare id; they still work for the right person
(an unsubscribe link must, for years), by the rule in `Claim.binds`.
"""

from __future__ import annotations

import binascii
import hmac
import re
from collections.abc import Sequence
from datetime import date, datetime
from enum import Enum
from functools import lru_cache
from typing import NamedTuple, Protocol

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import int_to_bytes
from itsdangerous.signer import HMACAlgorithm

from .settings import Settings


class Purpose(str, Enum):
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    CONFIRM = "confirm"
    FEEDBACK = "feedback"  # the paper links of a digest: clicks, "more / less like this"
    ARCHIVE = "archive"  # one digest on the web ("View in browser"): names the reader and date


# None: never expires. An unsubscribe link in a year-old email must still work.
MAX_AGE_SECONDS: dict[Purpose, int | None] = {
    Purpose.UNSUBSCRIBE: None,
    Purpose.PREFERENCES: 90 * 86400,
    Purpose.CONFIRM: 2 * 86400,
    Purpose.FEEDBACK: 365 * 86400,  # an older link still leads to the paper, unrecorded
    Purpose.ARCHIVE: None,  # ARCHIVE_LINK_DAYS, a setting: `read_archive_claim` checks it
}
# Purposes whose links from before link keys (payload: the bare subscriber id) still count.
# Confirmation links now name a sign-up request, so an old one has nothing to confirm.
LEGACY_PURPOSES = frozenset({Purpose.UNSUBSCRIBE, Purpose.PREFERENCES, Purpose.FEEDBACK})


class InvalidToken(ValueError):
    """The link is forged, for another purpose, or expired."""


class ExpiredToken(InvalidToken):
    """The link was genuine but is older than its purpose allows."""


def _serializer(settings: Settings, purpose: Purpose) -> URLSafeTimedSerializer:
    return _serializer_for(settings.signing_key(), purpose)


@lru_cache(maxsize=32)
def _serializer_for(key: str, purpose: Purpose) -> URLSafeTimedSerializer:
    # Three links are signed per digest: build each purpose's serializer once, not per link.
    return URLSafeTimedSerializer(key, salt=f"paper-digest:{purpose.value}")


@lru_cache(maxsize=32)
def _signer_for(key: str, purpose: Purpose) -> TimestampSigner:
    serializer = _serializer_for(key, purpose)
    return serializer.make_signer(serializer.salt)  # type: ignore[return-value]


class LinkOwner(Protocol):
    """What a link is made for: a subscriber, or a sign-up request awaiting confirmation."""

    @property
    def id(self) -> int: ...

    @property
    def link_key(self) -> str: ...


class Claim(NamedTuple):
    """What a genuine token says: whose it is and when it was signed. Whether that row still
    is the person it was made for is `binds`' question, asked with the row in hand."""

    id: int
    key: str | None  # None: a token made before links carried a key (its payload: the id)
    signed_at: datetime

    def binds(self, link_key: str, created_at: datetime) -> bool:
        """True if this token was made for the row with `link_key`, created at `created_at`.

        A token without a key is older than link keys and names only an id, which SQLite gave
        to the next subscriber when one was deleted: it counts only if it was signed no
        earlier than the row was created (in whole seconds, as tokens are timed), since a
        token of the deleted subscriber was signed before the newcomer existed.
        """
        if self.key is None:
            return self.signed_at >= created_at.replace(microsecond=0)
        return hmac.compare_digest(self.key.encode(), link_key.encode())


def make_token(settings: Settings, purpose: Purpose, owner: LinkOwner) -> str:
    return make_tokens(settings, owner, (purpose,))[purpose]


def make_tokens(
    settings: Settings, owner: LinkOwner, purposes: Sequence[Purpose]
) -> dict[Purpose, str]:
    """One owner's tokens for several purposes, exactly as `serializer.dumps` makes them.

    The payload is `[id, link_key]`. Every email carries three (preferences, unsubscribe,
    feedback) and a digest run signs hundreds of thousands: the payload is encoded once and
    only signed per purpose.
    """
    key = settings.signing_key()
    owner_id, link_key = _owner_fields(owner)
    if 0 <= owner_id < 10**9 and _PLAIN_KEY.fullmatch(link_key):
        # What dump_payload makes of it: compact JSON, base64 without padding. itsdangerous
        # compresses only when zlib saves two bytes, which its six bytes of framing forbid
        # unless the text repeats itself: 22 random characters and a short id do not (the
        # odds are below one in a million). Were it ever to, this token would still read
        # the same, since `loads` takes an uncompressed payload too.
        payload = _base64(f'[{owner_id},"{link_key}"]'.encode())
    else:
        payload = _serializer_for(key, purposes[0]).dump_payload([owner_id, link_key])
    return _signed(key, payload, purposes)


def _signed(key: str, payload: bytes, purposes: Sequence[Purpose]) -> dict[Purpose, str]:
    """`payload` signed for each purpose, as `serializer.dumps` signs it."""
    signer = _signer_for(key, purposes[0])
    # TimestampSigner.sign's own steps, with each purpose's derived key and HMAC state
    # prepared once: itsdangerous derives the key again for every signature.
    sep = signer.sep
    signed = payload + sep + _base64(int_to_bytes(signer.get_timestamp()))
    tokens = {}
    for purpose in purposes:
        mac = _mac_for(key, purpose).copy()
        mac.update(signed)
        tokens[purpose] = (signed + sep + _base64(mac.digest())).decode("ascii")
    return tokens


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _base64(data: bytes) -> bytes:
    """itsdangerous' `base64_encode` (URL-safe, no padding) in C calls only: six of these
    a digest."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


def make_archive_token(settings: Settings, owner: LinkOwner, day: date) -> str:
    """The token of one reader's digest of `day` on the web: `[id, link_key, "YYYY-MM-DD"]`,
    so the link shows that digest of that person and nothing else (no part of its URL is
    unsigned). Made for every digest sent, as cheaply as the other links (`make_tokens`)."""
    key = settings.signing_key()
    owner_id, link_key = _owner_fields(owner)
    if 0 <= owner_id < 10**9 and _PLAIN_KEY.fullmatch(link_key):
        # As in make_tokens: compact JSON, base64 without padding (an ISO date needs no escape).
        payload = _base64(f'[{owner_id},"{link_key}","{day.isoformat()}"]'.encode())
    else:
        payload = _serializer_for(key, Purpose.ARCHIVE).dump_payload(
            [owner_id, link_key, day.isoformat()]
        )
    return _signed(key, payload, (Purpose.ARCHIVE,))[Purpose.ARCHIVE]


def _owner_fields(owner: LinkOwner) -> tuple[int, str]:
    owner_id, link_key = getattr(owner, "id", None), getattr(owner, "link_key", None)
    if type(owner_id) is not int or not isinstance(link_key, str) or not link_key:
        raise TypeError("a link is made for a row with an id and a link_key (a Subscriber or "
                        f"a SignupRequest), not {owner!r}")
    return owner_id, link_key


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{22}")  # new_link_key's form: JSON needs no escape


@lru_cache(maxsize=32)
def _mac_for(key: str, purpose: Purpose) -> hmac.HMAC:
    signer = _signer_for(key, purpose)
    if not isinstance(signer.algorithm, HMACAlgorithm):
        raise TypeError("tokens are HMAC-signed")
    return hmac.new(signer.derive_key(), digestmod=signer.algorithm.digest_method)


def read_claim(settings: Settings, purpose: Purpose, token: str) -> Claim:
    """Whose a genuine, unexpired token for `purpose` is; InvalidToken otherwise.

    The caller must still check the claim against the row it names (`Claim.binds`).
    """
    try:
        value, signed_at = _serializer(settings, purpose).loads(
            token, max_age=MAX_AGE_SECONDS[purpose], return_timestamp=True
        )
    except SignatureExpired as exc:
        raise ExpiredToken("This link has expired.") from exc
    except BadSignature as exc:
        raise InvalidToken("This link is not valid.") from exc
    if type(value) is int and purpose in LEGACY_PURPOSES:
        return Claim(value, None, signed_at)
    if type(value) is int:
        # A confirmation link from before sign-up requests: it names no request.
        raise ExpiredToken("This link has expired.")
    if (
        isinstance(value, list) and len(value) == 2 and type(value[0]) is int
        and isinstance(value[1], str)
    ):
        return Claim(value[0], value[1], signed_at)
    raise InvalidToken("This link is not valid.")


def read_token(settings: Settings, purpose: Purpose, token: str) -> int:
    """The id a genuine token names. Only a claim checked against its row (`read_claim`,
    `Claim.binds`) may act on anyone: this is for tests and reports."""
    return read_claim(settings, purpose, token).id


def read_archive_claim(settings: Settings, token: str) -> tuple[Claim, date]:
    """Whose digest of which date a genuine "View in browser" token names; InvalidToken
    otherwise, ExpiredToken once it is older than ARCHIVE_LINK_DAYS (and a day, since a
    reader's local date may start a day before the UTC one the link was signed on).

    The caller must still check the claim against the row it names (`Claim.binds`).
    """
    max_age = (settings.archive_link_days + 1) * 86400
    try:
        value, signed_at = _serializer(settings, Purpose.ARCHIVE).loads(
            token, max_age=max_age, return_timestamp=True
        )
    except SignatureExpired as exc:
        raise ExpiredToken("This link has expired.") from exc
    except BadSignature as exc:
        raise InvalidToken("This link is not valid.") from exc
    if (
        isinstance(value, list) and len(value) == 3 and type(value[0]) is int
        and isinstance(value[1], str) and isinstance(value[2], str)
    ):
        try:
            day = date.fromisoformat(value[2])
        except ValueError as exc:
            raise InvalidToken("This link is not valid.") from exc
        return Claim(value[0], value[1], signed_at), day
    raise InvalidToken("This link is not valid.")


def archive_link(settings: Settings, owner: LinkOwner, day: date) -> str:
    """The absolute URL of the owner's digest of `day` on the web."""
    base = settings.public_base_url.rstrip("/")
    return f"{base}/{Purpose.ARCHIVE.value}/{make_archive_token(settings, owner, day)}"


def link(settings: Settings, purpose: Purpose, owner: LinkOwner) -> str:
    """The absolute URL the owner follows for `purpose`."""
    return links(settings, owner, (purpose,))[purpose]


def links(
    settings: Settings, owner: LinkOwner, purposes: Sequence[Purpose]
) -> dict[Purpose, str]:
    """The absolute URLs the owner follows, one per purpose."""
    base = settings.public_base_url.rstrip("/")
    return {
        purpose: f"{base}/{purpose.value}/{token}"
        for purpose, token in make_tokens(settings, owner, purposes).items()
    }
