"""Signed links in emails: each token names one purpose and one subscriber.

itsdangerous signs `subscriber_id` with a salt per purpose, so a token made to confirm an
address cannot unsubscribe anyone, and a token for one subscriber does nothing for another.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from enum import Enum
from functools import lru_cache

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes
from itsdangerous.signer import HMACAlgorithm

from .settings import Settings


class Purpose(str, Enum):
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    CONFIRM = "confirm"
    FEEDBACK = "feedback"  # the paper links of a digest: clicks, "more / less like this"


# None: never expires. An unsubscribe link in a year-old email must still work.
MAX_AGE_SECONDS: dict[Purpose, int | None] = {
    Purpose.UNSUBSCRIBE: None,
    Purpose.PREFERENCES: 90 * 86400,
    Purpose.CONFIRM: 2 * 86400,
    Purpose.FEEDBACK: 365 * 86400,  # an older link still leads to the paper, unrecorded
}


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


def make_token(settings: Settings, purpose: Purpose, subscriber_id: int) -> str:
    return make_tokens(settings, subscriber_id, (purpose,))[purpose]


def make_tokens(
    settings: Settings, subscriber_id: int, purposes: Sequence[Purpose]
) -> dict[Purpose, str]:
    """One subscriber's tokens for several purposes, exactly as `serializer.dumps` makes them.

    Every email carries three (preferences, unsubscribe, feedback): the payload is the same
    for each, so it is encoded once and only signed per purpose.
    """
    key = settings.signing_key()
    if type(subscriber_id) is int and 0 <= subscriber_id < 10**9:
        # What dump_payload makes of a small int: its compact JSON, base64 without padding
        # (zlib never shortens 9 bytes or fewer, so itsdangerous never compresses them).
        payload = base64_encode(str(subscriber_id).encode())
    else:
        payload = _serializer_for(key, purposes[0]).dump_payload(subscriber_id)
    signer = _signer_for(key, purposes[0])
    # TimestampSigner.sign's own steps, with each purpose's derived key and HMAC state
    # prepared once: itsdangerous derives the key again for every signature.
    signed = payload + signer.sep + base64_encode(int_to_bytes(signer.get_timestamp()))
    tokens = {}
    for purpose in purposes:
        mac = _mac_for(key, purpose).copy()
        mac.update(signed)
        tokens[purpose] = (signed + signer.sep + base64_encode(mac.digest())).decode("utf-8")
    return tokens


@lru_cache(maxsize=32)
def _mac_for(key: str, purpose: Purpose) -> hmac.HMAC:
    signer = _signer_for(key, purpose)
    if not isinstance(signer.algorithm, HMACAlgorithm):
        raise TypeError("tokens are HMAC-signed")
    return hmac.new(signer.derive_key(), digestmod=signer.algorithm.digest_method)


def read_token(settings: Settings, purpose: Purpose, token: str) -> int:
    """The subscriber id a valid token names; InvalidToken otherwise."""
    try:
        value = _serializer(settings, purpose).loads(token, max_age=MAX_AGE_SECONDS[purpose])
    except SignatureExpired as exc:
        raise ExpiredToken("This link has expired.") from exc
    except BadSignature as exc:
        raise InvalidToken("This link is not valid.") from exc
    if not isinstance(value, int):
        raise InvalidToken("This link is not valid.")
    return value


def link(settings: Settings, purpose: Purpose, subscriber_id: int) -> str:
    """The absolute URL a subscriber follows for `purpose`."""
    return links(settings, subscriber_id, (purpose,))[purpose]


def links(
    settings: Settings, subscriber_id: int, purposes: Sequence[Purpose]
) -> dict[Purpose, str]:
    """The absolute URLs a subscriber follows, one per purpose."""
    base = settings.public_base_url.rstrip("/")
    return {
        purpose: f"{base}/{purpose.value}/{token}"
        for purpose, token in make_tokens(settings, subscriber_id, purposes).items()
    }
