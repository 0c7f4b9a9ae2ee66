"""Provider webhooks: bounces, complaints and unsubscribes, each in its provider's own format
and checked with its provider's own signature scheme; one small class per provider.

- sendgrid, POST /webhooks/sendgrid: an ECDSA P-256 / SHA-256 signature of timestamp + raw
  body, base64 DER in X-Twilio-Email-Event-Webhook-Signature, the timestamp in
  X-Twilio-Email-Event-Webhook-Timestamp (SendGrid's Signed Event Webhook).
- mailgun, POST /webhooks/mailgun: HMAC-SHA256(signing key, timestamp + token) in hex, in
  the body's "signature" object next to "event-data". The signature does not cover the
  event, so each token is accepted once: a captured signature cannot carry another event.
- postmark, POST /webhooks/postmark: HTTP basic auth (Postmark signs nothing; the credentials
  are in the webhook URL and travel over TLS).
- generic, POST /webhooks/generic: HMAC-SHA256(WEBHOOK_SECRET, timestamp + "." + raw body) in
  X-Digest-Signature: sha256=<hex>, the timestamp in X-Digest-Timestamp.

Replays: a signed timestamp must be within WEBHOOK_MAX_AGE_SECONDS of now, and each request's
nonce is recorded in `webhook_events`: the same request again is refused (403) and changes
nothing. The nonce is what the signature proves, never how it is spelled: the digest of the
signed bytes (SendGrid, generic), Mailgun's token, Postmark's body. A signature in upper-case
hex, another base64 spelling or ECDSA's other valid (r, n - s) form is the same request.
Signatures are compared as bytes, decoded from their hex or base64. Each event's id is
recorded too, so the same event in a new request (a provider's retry) is acknowledged and
applied once; an event without an id of its own is known by the digest of its canonical
JSON. A hard bounce or a complaint suppresses the address; an unsubscribe unsubscribes its
subscriber; soft bounces, deliveries, opens and the rest are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, ClassVar, Protocol

from sqlalchemy.orm import Session

from . import db, metrics
from .models import SuppressionReason, WebhookEvent
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 1000


class EventType(str, Enum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    OTHER = "other"  # deliveries, opens, soft bounces...: recorded, not acted on


@dataclass(frozen=True)
class MailEvent:
    """One provider event, in our terms."""

    event_id: str
    type: EventType
    address: str
    permanent: bool = True  # for bounces: a hard bounce (the address does not exist)
    detail: str = ""


@dataclass(frozen=True)
class Verified:
    """A request whose origin was proven: its nonce and its events."""

    nonce: str
    events: list[MailEvent]
    # The nonce is the body itself (Postmark signs nothing): a repeat is the provider retrying
    # a delivery whose answer it did not get, answered 200 with every event a duplicate.
    repeat_is_retry: bool = False


class WebhookError(Exception):
    """A request we refuse; `status` is the HTTP answer."""

    status = 400


class Unauthorized(WebhookError):
    """No credentials or signature at all."""

    status = 401


class Forbidden(WebhookError):
    """Credentials or signature that do not verify, a stale timestamp, or a replay."""

    status = 403


class BadPayload(WebhookError):
    status = 400


class Provider(Protocol):
    name: str

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        """Prove the request's origin and parse it; raises a WebhookError otherwise."""
        ...


# --- helpers shared by the providers --------------------------------------------------------


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadPayload(f"the body is not JSON: {str(exc)[:100]}") from exc


def _check_timestamp(raw: object, now: float, max_age: int) -> int:
    """The signed timestamp as a number, if it is within `max_age` seconds of now.

    Only ASCII digits: int() would also take "+17...", "1_7..." and other scripts' digits,
    other spellings of one signed value.
    """
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise Forbidden("the signed timestamp is not a number")
    stamp = int(text)
    if abs(now - stamp) > max_age:
        raise Forbidden("the signed timestamp is too old or in the future: a replay?")
    return stamp


def _hex_bytes(text: str) -> bytes:
    """A hex signature as bytes, whatever its case; Forbidden when it is not hex."""
    try:
        return binascii.unhexlify(text.strip())
    except (binascii.Error, ValueError) as exc:
        raise Forbidden("the signature is not hex") from exc


def _event_id(provider: str, raw: object, event: Mapping[str, Any], kind: str = "") -> str:
    """The provider's id for an event (as `kind:id` when ids are per kind), or the digest of
    the event's canonical JSON when it has no usable id: two events without ids stay two."""
    has_id = isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).strip()
    text = f"{kind}:{raw}" if has_id and kind else str(raw) if has_id else ""
    if not text or len(text) > 200:
        text = "sha256:" + _digest(f"{provider}:{_canonical_json(event)}")
    return text


def _canonical_json(value: object) -> str:
    """One text for one JSON value, whatever its key order and spacing."""
    return json.dumps(value, sort_keys=True, default=str)


def _text(value: object, limit: int = 300) -> str:
    return " ".join(str(value).split())[:limit] if value is not None else ""


def _digest(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


# --- SendGrid -------------------------------------------------------------------------------


class SendGrid:
    """SendGrid's Signed Event Webhook: a JSON array of events, signed with ECDSA P-256."""

    name = "sendgrid"
    SIGNATURE = "x-twilio-email-event-webhook-signature"
    TIMESTAMP = "x-twilio-email-event-webhook-timestamp"

    def __init__(self, public_key: str, max_age: int) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import (
            load_der_public_key,
            load_pem_public_key,
        )

        text = public_key.strip()
        try:
            if text.startswith("-----BEGIN"):
                key = load_pem_public_key(text.encode())
            else:
                key = load_der_public_key(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise SettingsError(
                "SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key: paste the base64 "
                "'Verification Key' from SendGrid's Mail Settings > Signed Event Webhook."
            ) from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SettingsError("SENDGRID_WEBHOOK_PUBLIC_KEY must be an ECDSA (P-256) key.")
        self.key = key
        self.max_age = max_age

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature, stamp = headers.get(self.SIGNATURE), headers.get(self.TIMESTAMP)
        if not signature or not stamp:
            raise Unauthorized("no SendGrid signature")
        _check_timestamp(stamp, now, self.max_age)
        signed = stamp.encode() + body
        try:
            self.key.verify(
                base64.b64decode(signature.strip(), validate=True),
                signed,
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, ValueError, binascii.Error) as exc:
            raise Forbidden("the SendGrid signature does not verify") from exc
        payload = _json(body)
        if not isinstance(payload, list):
            raise BadPayload("a SendGrid event webhook body is a JSON array")
        # ECDSA signs one message many ways (a fresh k each time; (r, s) and (r, n - s)):
        # the request is the message it proves, not the signature's bytes.
        return Verified("signed:" + _digest(signed), [self.event(e) for e in payload])

    def event(self, e: object) -> MailEvent:
        if not isinstance(e, dict):
            raise BadPayload("each SendGrid event is a JSON object")
        kind, address = str(e.get("event", "")), _text(e.get("email"))
        event_id = _event_id(self.name, e.get("sg_event_id"), e)
        reason = _text(e.get("reason") or e.get("response") or e.get("status"))
        if kind == "bounce":
            # "blocked" is SendGrid's soft bounce: the receiver refused this message for now.
            hard = str(e.get("type", "bounce")) != "blocked"
            return MailEvent(event_id, EventType.BOUNCE, address, hard, reason)
        if kind == "dropped":  # dropped because SendGrid's own lists already suppress it
            for words, type_ in (("bounced address", EventType.BOUNCE),
                                 ("spam reporting address", EventType.COMPLAINT),
                                 ("unsubscribed address", EventType.UNSUBSCRIBE)):
                if words in reason.lower():
                    return MailEvent(event_id, type_, address, True, reason)
        if kind == "spamreport":
            return MailEvent(event_id, EventType.COMPLAINT, address, True, "spam report")
        if kind in ("unsubscribe", "group_unsubscribe"):
            return MailEvent(event_id, EventType.UNSUBSCRIBE, address, True, kind)
        return MailEvent(event_id, EventType.OTHER, address, False, kind)


# --- Mailgun --------------------------------------------------------------------------------


class Mailgun:
    """Mailgun's webhooks: {"signature": {timestamp, token, signature}, "event-data": {...}}."""

    name = "mailgun"

    def __init__(self, signing_key: str, max_age: int) -> None:
        self.signing_key = signing_key.encode()
        self.max_age = max_age

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        payload = _json(body)
        signed = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(signed, dict) or not all(
            isinstance(signed.get(k), str | int) for k in ("timestamp", "token", "signature")
        ):
            raise Unauthorized("no Mailgun signature")
        stamp, token = str(signed["timestamp"]), str(signed["token"])
        _check_timestamp(stamp, now, self.max_age)
        expected = hmac.new(self.signing_key, (stamp + token).encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), _hex_bytes(str(signed["signature"]))):
            raise Forbidden("the Mailgun signature does not verify")
        data = payload.get("event-data")
        if not isinstance(data, dict):
            raise BadPayload("a Mailgun webhook carries an 'event-data' object")
        return Verified("token:" + _digest(token), [self.event(data)])

    def event(self, e: dict[str, Any]) -> MailEvent:
        kind, address = str(e.get("event", "")), _text(e.get("recipient"))
        event_id = _event_id(self.name, e.get("id"), e)
        raw_status = e.get("delivery-status")
        status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
        detail = _text(status.get("description") or status.get("message") or e.get("reason"))
        if kind == "failed":
            hard = str(e.get("severity", "")) == "permanent"
            return MailEvent(event_id, EventType.BOUNCE, address, hard, detail)
        if kind == "complained":
            return MailEvent(event_id, EventType.COMPLAINT, address, True, "spam complaint")
        if kind == "unsubscribed":
            return MailEvent(event_id, EventType.UNSUBSCRIBE, address, True, kind)
        return MailEvent(event_id, EventType.OTHER, address, False, kind)


# --- Postmark -------------------------------------------------------------------------------


class Postmark:
    """Postmark's bounce, spam complaint and subscription change webhooks, behind basic auth."""

    name = "postmark"
    HARD_BOUNCES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})

    def __init__(self, username: str, password: str) -> None:
        self.username = username.encode()
        self.password = password.encode()

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        auth = headers.get("authorization", "")
        scheme, _, encoded = auth.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise Unauthorized("no basic-auth credentials")
        try:
            username, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (ValueError, binascii.Error) as exc:
            raise Forbidden("malformed basic-auth credentials") from exc
        # Both compared whatever the first says, so timing tells nothing about either.
        ok_user = hmac.compare_digest(username, self.username)
        ok_password = hmac.compare_digest(password, self.password)
        if not (ok_user and ok_password):
            raise Forbidden("wrong basic-auth credentials")
        payload = _json(body)
        if not isinstance(payload, dict):
            raise BadPayload("a Postmark webhook body is a JSON object")
        # Postmark signs nothing, so the body itself is the nonce: a repeat is a replay.
        return Verified("body:" + _digest(body), [self.event(payload)], repeat_is_retry=True)

    def event(self, e: dict[str, Any]) -> MailEvent:
        record = str(e.get("RecordType", ""))
        if record == "Bounce":
            bounce_type = str(e.get("Type", ""))
            event_id = _event_id(self.name, e.get("ID"), e, "bounce")
            address, detail = _text(e.get("Email")), _text(e.get("Description") or bounce_type)
            if bounce_type == "SpamComplaint":
                return MailEvent(event_id, EventType.COMPLAINT, address, True, detail)
            if bounce_type == "Unsubscribe":
                return MailEvent(event_id, EventType.UNSUBSCRIBE, address, True, detail)
            hard = bounce_type in self.HARD_BOUNCES
            return MailEvent(event_id, EventType.BOUNCE, address, hard, detail)
        if record == "SpamComplaint":
            event_id = _event_id(self.name, e.get("ID"), e, "complaint")
            return MailEvent(event_id, EventType.COMPLAINT, _text(e.get("Email")), True,
                             "spam complaint")
        if record == "SubscriptionChange":
            address = _text(e.get("Recipient"))
            # Postmark gives a change no id: who, when and which way name it.
            changed_at = e.get("ChangedAt")
            raw_id = (f"{address}:{changed_at}:{e.get('SuppressSending')}"
                      if isinstance(changed_at, str) and changed_at.strip() else None)
            event_id = _event_id(self.name, raw_id, e, "subscription")
            reason = str(e.get("SuppressionReason", ""))
            if e.get("SuppressSending") is True:
                type_ = {"HardBounce": EventType.BOUNCE, "SpamComplaint": EventType.COMPLAINT,
                         "ManualSuppression": EventType.UNSUBSCRIBE}.get(reason, EventType.OTHER)
                return MailEvent(event_id, type_, address, True, f"suppressed: {reason}")
            # A reactivation there does not resubscribe anyone here: they opt in again.
            return MailEvent(event_id, EventType.OTHER, address, False, "reactivated")
        # A MessageID names the message, which has many events (delivery, opens, clicks).
        event_id = _event_id(self.name, e.get("ID"), e, record.lower())
        return MailEvent(event_id, EventType.OTHER, _text(e.get("Recipient") or e.get("Email")),
                         False, record)


# --- Generic --------------------------------------------------------------------------------


class Generic:
    """Our own format for any other sender: {"events": [{id, type, email, permanent, detail}]}.

    Sign with: X-Digest-Timestamp: <unix seconds>, X-Digest-Signature: sha256=<hex of
    HMAC-SHA256(WEBHOOK_SECRET, "<timestamp>." + raw body)>.
    """

    name = "generic"
    SIGNATURE = "x-digest-signature"
    TIMESTAMP = "x-digest-timestamp"
    TYPES: ClassVar[Mapping[str, EventType]] = {
        "bounce": EventType.BOUNCE, "complaint": EventType.COMPLAINT,
        "unsubscribe": EventType.UNSUBSCRIBE,
    }

    def __init__(self, secret: str, max_age: int) -> None:
        self.secret = secret.encode()
        self.max_age = max_age

    @staticmethod
    def sign(secret: str, timestamp: int, body: bytes) -> str:
        """The X-Digest-Signature value for `body` (for senders and tests)."""
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        return "sha256=" + mac.hexdigest()

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        signature, stamp = headers.get(self.SIGNATURE, ""), headers.get(self.TIMESTAMP, "")
        if not signature or not stamp:
            raise Unauthorized("no X-Digest-Signature and X-Digest-Timestamp")
        timestamp = _check_timestamp(stamp, now, self.max_age)
        scheme, _, mac = signature.strip().partition("=")
        if scheme.strip().lower() != "sha256":
            raise Forbidden("the signature is not sha256=<hex>")
        signed = f"{timestamp}.".encode() + body
        expected = hmac.new(self.secret, signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _hex_bytes(mac)):
            raise Forbidden("the signature does not verify")
        payload = _json(body)
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list):
            raise BadPayload('the body is {"events": [...]}')
        return Verified("signed:" + _digest(signed), [self.event(e) for e in events])

    def event(self, e: object) -> MailEvent:
        if not isinstance(e, dict) or not isinstance(e.get("id"), str | int):
            raise BadPayload("each event is an object with an id")
        type_ = self.TYPES.get(str(e.get("type", "")), EventType.OTHER)
        return MailEvent(
            _event_id(self.name, e.get("id"), e), type_, _text(e.get("email")),
            e.get("permanent", True) is not False, _text(e.get("detail")),
        )


# --- Which providers this deployment accepts -----------------------------------------------


def configured_providers(settings: Settings) -> dict[str, Provider]:
    """The providers whose secret is set; SettingsError for a secret that cannot work."""
    providers: dict[str, Provider] = {}
    max_age = settings.webhook_max_age_seconds
    if settings.sendgrid_webhook_public_key:
        providers["sendgrid"] = SendGrid(settings.sendgrid_webhook_public_key, max_age)
    if settings.mailgun_webhook_signing_key:
        providers["mailgun"] = Mailgun(settings.mailgun_webhook_signing_key, max_age)
    if settings.postmark_webhook_username:
        providers["postmark"] = Postmark(settings.postmark_webhook_username,
                                         settings.postmark_webhook_password)
    if settings.webhook_secret:
        providers["generic"] = Generic(settings.webhook_secret, max_age)
    return providers


# --- Handling a request ---------------------------------------------------------------------


@dataclass
class WebhookReport:
    applied: list[str] = field(default_factory=list)  # "bounce a@b.c"
    duplicates: int = 0
    ignored: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"status": "ok", "applied": len(self.applied), "duplicates": self.duplicates,
                "ignored": self.ignored}


def handle_webhook(
    settings: Settings,
    provider: Provider,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
) -> WebhookReport:
    """Verify a provider's request, then apply each of its events once.

    Raises a WebhookError (with its HTTP status) for a request that proves nothing, is
    malformed or is a replay; nothing is changed then.
    """
    now = time.time() if now is None else now
    lower = {k.lower(): v for k, v in headers.items()}
    verified = provider.verify(lower, body, now)
    if len(verified.events) > MAX_EVENTS_PER_REQUEST:
        raise BadPayload(f"more than {MAX_EVENTS_PER_REQUEST} events in one request")
    at = datetime.fromtimestamp(now, timezone.utc)
    report = WebhookReport()
    with db.session_scope(settings) as session:
        if not _first_time(session, provider.name, "request:" + verified.nonce, "request", None,
                           at):
            if not verified.repeat_is_retry:
                raise Forbidden("this request was already received: a replay")
            report.duplicates = len(verified.events)  # its events were recorded the first time
            return report
        for event in verified.events:
            if not _first_time(session, provider.name, event.event_id, event.type.value,
                               event.address[:320] or None, at):
                report.duplicates += 1
            elif apply_event(session, provider.name, event, at):
                report.applied.append(f"{event.type.value} {event.address}")
            else:
                report.ignored += 1
    metrics.count_webhook_events(provider.name, applied=len(report.applied),
                                 duplicate=report.duplicates, ignored=report.ignored)
    for line in report.applied:
        log.info("webhook %s: %s", provider.name, line)
    return report


def _first_time(
    session: Session, provider: str, event_id: str, kind: str, address: str | None,
    at: datetime,
) -> bool:
    """Record an event id; False if it was already recorded (by anyone, even concurrently)."""
    insert = db.dialect_insert(session)
    result = session.execute(
        insert(WebhookEvent)
        .values(provider=provider, event_id=event_id[:255], kind=kind, address=address,
                received_at=at)
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(WebhookEvent.id)  # rowcount is not reliable for ON CONFLICT on psycopg
    )
    return result.first() is not None


def apply_event(session: Session, provider: str, event: MailEvent, at: datetime) -> bool:
    """Act on one event; False when it asks for nothing (a soft bounce, an open...) or names
    no valid address: no door lets such an address in, so there is nothing to protect."""
    from .lifecycle import unsubscribe
    from .subscribers import find_subscriber
    from .suppressions import SuppressionError, suppress_address, suppression_key

    try:
        address = suppression_key(event.address)
    except SuppressionError:
        return False
    source = f"webhook:{provider}"
    if event.type is EventType.BOUNCE and event.permanent:
        suppress_address(session, address, SuppressionReason.BOUNCED, source, event.detail, at)
        return True
    if event.type is EventType.COMPLAINT:
        suppress_address(session, address, SuppressionReason.COMPLAINED, source, event.detail,
                         at)
        return True
    if event.type is EventType.UNSUBSCRIBE:
        subscriber = find_subscriber(session, address)
        if subscriber is None:
            return False
        unsubscribe(session, subscriber.id, source, event.detail, at)
        return True
    return False
