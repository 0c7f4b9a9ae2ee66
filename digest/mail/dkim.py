"""DKIM-sign a message's bytes with the deployment's key (DKIM_PRIVATE_KEY_PATH)."""

from __future__ import annotations

import functools
from pathlib import Path

from ..settings import Settings

# Big mailbox providers honour one-click unsubscribe only when these are covered by a
# passing DKIM signature aligned with From. Each one is listed twice ("oversigned") so a relay
# or an attacker cannot add a second copy of it without breaking the signature.
DKIM_SIGNED_HEADERS = (
    "From", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
)
DKIM_ALSO_SIGNED = ("To", "Reply-To", "List-Id", "MIME-Version", "Content-Type")


@functools.cache
def _dkim_private_key(path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read DKIM_PRIVATE_KEY_PATH={path!r}: {exc}. Make a key with "
            "`openssl genrsa -out dkim.pem 2048` and `digest dns-check` prints its DNS record."
        ) from exc


def dkim_sign(settings: Settings, data: bytes) -> bytes:
    """`data` with a DKIM-Signature header in front, when DKIM_PRIVATE_KEY_PATH is set.

    rsa-sha256, relaxed/relaxed canonicalisation (relays may refold headers), d= the
    DKIM_DOMAIN (by default MAIL_FROM's domain, so DMARC aligns), s= DKIM_SELECTOR.
    """
    if not settings.dkim_private_key_path:
        return data
    import dkim

    headers = [*DKIM_SIGNED_HEADERS, *DKIM_SIGNED_HEADERS, *DKIM_ALSO_SIGNED]
    signature = dkim.sign(
        data,
        settings.dkim_selector.encode("ascii"),
        settings.dkim_signing_domain.encode("ascii"),
        _dkim_private_key(settings.dkim_private_key_path),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.encode("ascii") for h in headers],
        linesep=b"\r\n",
    )
    return bytes(signature) + data
