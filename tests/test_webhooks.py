"""Provider webhooks through the Flask test client, on SQLite and PostgreSQL: each provider's
real format and signature scheme, signed with keys made here. A hard bounce or complaint
suppresses; unsigned, badly signed, stale or replayed requests change nothing; the same event
twice is harmless; malformed and oversized bodies are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient
from sqlalchemy import select

from digest import db
from digest.models import Subscriber, SubscriberStatus, Suppression, WebhookEvent
from digest.settings import Settings, SettingsError
from digest.subscribers import find_subscriber
from digest.web import create_app
from digest.webhooks import Generic, configured_providers

from .factories import make_subscriber

SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(SENDGRID_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
MAILGUN_KEY = "key-" + "3" * 32
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "s3cret-pass"
GENERIC_SECRET = "generic-shared-secret"


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes


# Each provider's own format for one event, and its own way of signing the request.
# kind: bounce | soft_bounce | complaint | unsubscribe | delivered


def sendgrid(events: list[tuple[str, str, str]], stamp: int | None = None,
             key: ec.EllipticCurvePrivateKey = SENDGRID_KEY) -> Request:
    names = {"bounce": ("bounce", {"type": "bounce"}),
             "soft_bounce": ("bounce", {"type": "blocked"}), "complaint": ("spamreport", {}),
             "unsubscribe": ("unsubscribe", {}),
             "delivered": ("delivered", {})}
    payload = [
        {"email": address, "timestamp": 1700000000, "event": names[kind][0],
         "sg_event_id": event_id, "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001",
         "reason": "550 5.1.1 The email account that you tried to reach does not exist",
         **names[kind][1]}
        for kind, address, event_id in events
    ]
    body = json.dumps(payload).encode()
    ts = str(int(time.time()) if stamp is None else stamp)
    signature = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return Request({"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                    "X-Twilio-Email-Event-Webhook-Timestamp": ts}, body)


def mailgun(events: list[tuple[str, str, str]], stamp: int | None = None,
            key: str = MAILGUN_KEY) -> Request:
    [(kind, address, event_id)] = events  # Mailgun posts one event per request
    data: dict[str, Any] = {"id": event_id, "recipient": address, "timestamp": 1700000000.1}
    data.update({
        "bounce": {"event": "failed", "severity": "permanent", "reason": "bounce",
                   "delivery-status": {"code": 550, "description": "No such mailbox"}},
        "soft_bounce": {"event": "failed", "severity": "temporary"},
        "complaint": {"event": "complained"},
        "unsubscribe": {"event": "unsubscribed"},
        "delivered": {"event": "delivered"},
    }[kind])
    ts = str(int(time.time()) if stamp is None else stamp)
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    body = json.dumps({"signature": {"timestamp": ts, "token": token, "signature": signature},
                       "event-data": data}).encode()
    return Request({"Content-Type": "application/json"}, body)


def postmark(events: list[tuple[str, str, str]], stamp: int | None = None,
             password: str = POSTMARK_PASSWORD) -> Request:
    [(kind, address, event_id)] = events
    number = int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16)
    payload: dict[str, Any] = {
        "bounce": {"RecordType": "Bounce", "ID": number, "Type": "HardBounce", "TypeCode": 1,
                   "Email": address, "Description": "The server was unable to deliver"},
        "soft_bounce": {"RecordType": "Bounce", "ID": number, "Type": "SoftBounce",
                        "TypeCode": 4096, "Email": address},
        "complaint": {"RecordType": "SpamComplaint", "ID": number, "Type": "SpamComplaint",
                      "Email": address},
        "unsubscribe": {"RecordType": "SubscriptionChange", "Recipient": address,
                        "SuppressSending": True, "SuppressionReason": "ManualSuppression",
                        "ChangedAt": f"2026-11-23T10:00:{number % 60:02d}Z",
                        "MessageStream": "broadcast"},
        "delivered": {"RecordType": "Delivery", "MessageID": event_id, "Recipient": address},
    }[kind]
    auth = base64.b64encode(f"{POSTMARK_USER}:{password}".encode()).decode()
    return Request({"Authorization": f"Basic {auth}"}, json.dumps(payload).encode())


def generic(events: list[tuple[str, str, str]], stamp: int | None = None,
            secret: str = GENERIC_SECRET) -> Request:
    types = {"bounce": ("bounce", True), "soft_bounce": ("bounce", False),
             "complaint": ("complaint", True), "unsubscribe": ("unsubscribe", True),
             "delivered": ("delivered", True)}
    body = json.dumps({"events": [
        {"id": event_id, "type": types[kind][0], "email": address, "permanent": types[kind][1]}
        for kind, address, event_id in events]}).encode()
    ts = int(time.time()) if stamp is None else stamp
    return Request({"X-Digest-Timestamp": str(ts),
                    "X-Digest-Signature": Generic.sign(secret, ts, body)}, body)


PROVIDERS: dict[str, Callable[..., Request]] = {
    "sendgrid": sendgrid, "mailgun": mailgun, "postmark": postmark, "generic": generic,
}


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return replace(settings, sendgrid_webhook_public_key=SENDGRID_PUBLIC,
                   mailgun_webhook_signing_key=MAILGUN_KEY,
                   postmark_webhook_username=POSTMARK_USER,
                   postmark_webhook_password=POSTMARK_PASSWORD, webhook_secret=GENERIC_SECRET)


@pytest.fixture
def client(hook_settings: Settings) -> Iterator[FlaskClient]:
    with create_app(hook_settings).test_client(use_cookies=False) as c:
        yield c


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def post(client: FlaskClient, provider: str, req: Request) -> Any:
    return client.post(f"/webhooks/{provider}", data=req.body, headers=req.headers,
                       content_type="application/json")


def add(settings: Settings, email: str) -> None:
    with db.session_scope(settings) as s:
        make_subscriber(s, email=email)


def status_of(settings: Settings, email: str) -> SubscriberStatus:
    with db.session_scope(settings) as s:
        return find_subscriber(s, email).status  # type: ignore[union-attr]


def suppressed(settings: Settings) -> dict[str, str]:
    with db.session_scope(settings) as s:
        return {r.address: r.reason.value for r in s.scalars(select(Suppression))}


def snapshot(settings: Settings) -> tuple[object, ...]:
    with db.session_scope(settings) as s:
        return (
            sorted((x.email, x.status.value) for x in s.scalars(select(Subscriber))),
            sorted(suppressed(settings).items()),
            len(s.scalars(select(WebhookEvent)).all()),
        )


# --- what events do ---------------------------------------------------------------------


def test_a_hard_bounce_suppresses_the_address(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "Gone@Example.org")
    response = post(client, provider, PROVIDERS[provider]([("bounce", "gone@example.org", "e1")]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["applied"] == 1
    assert status_of(hook_settings, "gone@example.org") is SubscriberStatus.BOUNCED
    assert suppressed(hook_settings) == {"gone@example.org": "bounced"}


def test_a_complaint_suppresses_the_address(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "angry@example.org")
    req = PROVIDERS[provider]([("complaint", "angry@example.org", "c1")])
    assert post(client, provider, req).status_code == 200
    assert status_of(hook_settings, "angry@example.org") is SubscriberStatus.COMPLAINED
    assert suppressed(hook_settings) == {"angry@example.org": "complained"}


def test_an_unsubscribe_event_unsubscribes(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "leaving@example.org")
    req = PROVIDERS[provider]([("unsubscribe", "leaving@example.org", "u1")])
    assert post(client, provider, req).status_code == 200
    assert status_of(hook_settings, "leaving@example.org") is SubscriberStatus.UNSUBSCRIBED
    assert suppressed(hook_settings) == {}  # they may come back with the double opt-in
    with db.session_scope(hook_settings) as s:
        from digest.subscribers import subscriber_history

        history = subscriber_history(s, find_subscriber(s, "leaving@example.org"))  # type: ignore[arg-type]
        assert [(h.what, h.source) for h in history] == [("unsubscribed", f"webhook:{provider}")]


@pytest.mark.parametrize("kind", ["soft_bounce", "delivered"])
def test_soft_bounces_and_other_events_change_nothing(
    client: FlaskClient, hook_settings: Settings, provider: str, kind: str
) -> None:
    add(hook_settings, "fine@example.org")
    response = post(client, provider, PROVIDERS[provider]([(kind, "fine@example.org", "s1")]))
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "applied": 0, "duplicates": 0, "ignored": 1}
    assert status_of(hook_settings, "fine@example.org") is SubscriberStatus.ACTIVE
    assert suppressed(hook_settings) == {}


def test_a_bounce_for_an_unknown_address_still_protects_it(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    post(client, provider, PROVIDERS[provider]([("bounce", "stranger@example.org", "b9")]))
    assert suppressed(hook_settings) == {"stranger@example.org": "bounced"}


def test_the_same_event_twice_is_harmless(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "gone@example.org")
    build = PROVIDERS[provider]
    now = int(time.time())
    first = post(client, provider, build([("bounce", "gone@example.org", "same-id")], stamp=now))
    # The provider retries later: a new request (timestamp, token, signature), the same event.
    # (Its own timestamp, fixed: one taken from the clock again could equal the first's.)
    again = build([("bounce", "gone@example.org", "same-id")], stamp=now - 1)
    if provider == "postmark":  # signs nothing: only a different body is a different request
        again = Request(again.headers, again.body.replace(b"{", b'{"Tag": "retry", ', 1))
    second = post(client, provider, again)
    assert first.status_code == second.status_code == 200
    assert second.get_json()["duplicates"] == 1 and second.get_json()["applied"] == 0, (
        first.get_json(), second.get_json())
    with db.session_scope(hook_settings) as s:
        gone = find_subscriber(s, "gone@example.org")
        from digest.subscribers import subscriber_history

        assert [h.what for h in subscriber_history(s, gone)] == ["bounced"]  # type: ignore[arg-type]


def test_a_batch_applies_each_event(client: FlaskClient, hook_settings: Settings) -> None:
    for email in ("a@example.org", "b@example.org", "c@example.org"):
        add(hook_settings, email)
    req = sendgrid([("bounce", "a@example.org", "1"), ("complaint", "b@example.org", "2"),
                    ("delivered", "c@example.org", "3"), ("unsubscribe", "c@example.org", "4")])
    assert post(client, "sendgrid", req).get_json() == {
        "status": "ok", "applied": 3, "duplicates": 0, "ignored": 1}
    assert [status_of(hook_settings, e) for e in ("a@example.org", "b@example.org",
                                                  "c@example.org")] == [
        SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED, SubscriberStatus.UNSUBSCRIBED]


# --- requests that prove nothing --------------------------------------------------------


def test_an_unsigned_request_gets_401_and_changes_nothing(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "ada@example.org")
    before = snapshot(hook_settings)
    req = PROVIDERS[provider]([("bounce", "ada@example.org", "x1")])
    body = req.body
    if provider == "mailgun":
        payload = json.loads(body)
        del payload["signature"]
        body = json.dumps(payload).encode()
    response = client.post(f"/webhooks/{provider}", data=body, content_type="application/json")
    assert response.status_code == 401
    if provider == "postmark":
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert snapshot(hook_settings) == before


def test_a_badly_signed_request_gets_403_and_changes_nothing(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "ada@example.org")
    before = snapshot(hook_settings)
    wrong = {"sendgrid": {"key": ec.generate_private_key(ec.SECP256R1())},
             "mailgun": {"key": "key-wrong"}, "postmark": {"password": "guess"},
             "generic": {"secret": "wrong"}}[provider]
    req = PROVIDERS[provider]([("bounce", "ada@example.org", "x2")], **wrong)
    assert post(client, provider, req).status_code == 403
    # A good signature over a body changed afterwards does not verify either.
    good = PROVIDERS[provider]([("bounce", "grace@example.org", "x3")])
    tampered = Request(good.headers, good.body.replace(b"grace@", b"ada@x"))
    # Postmark's basic auth and Mailgun's token signature do not cover the body (see below).
    if provider in ("sendgrid", "generic"):
        assert post(client, provider, tampered).status_code == 403
    assert snapshot(hook_settings) == before


def test_a_mailgun_token_cannot_be_reused_for_other_events(
    client: FlaskClient, hook_settings: Settings
) -> None:
    """Mailgun signs timestamp + token only, so a captured signature must not carry a second,
    forged event: each token is accepted once."""
    add(hook_settings, "ada@example.org")
    add(hook_settings, "grace@example.org")
    good = mailgun([("delivered", "grace@example.org", "m1")])
    assert post(client, "mailgun", good).status_code == 200
    forged = Request(good.headers, good.body.replace(b'"delivered"', b'"complained"')
                     .replace(b"grace@", b"ada@").replace(b'"m1"', b'"m2"'))
    assert post(client, "mailgun", forged).status_code == 403
    assert status_of(hook_settings, "ada@example.org") is SubscriberStatus.ACTIVE


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "generic"])
def test_a_replayed_request_gets_403_and_changes_nothing(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "ada@example.org")
    req = PROVIDERS[provider]([("unsubscribe", "ada@example.org", "r1")])
    assert post(client, provider, req).status_code == 200
    before = snapshot(hook_settings)
    replay = post(client, provider, req)
    assert replay.status_code == 403 and "replay" in replay.get_json()["error"]
    assert snapshot(hook_settings) == before


def test_postmark_retrying_the_same_body_gets_200_and_changes_nothing(
    client: FlaskClient, hook_settings: Settings
) -> None:
    """Postmark signs nothing, so a repeated body is its retry of a delivery whose answer it
    missed: answered 200 (or it retries for hours), with every event a duplicate."""
    add(hook_settings, "ada@example.org")
    req = PROVIDERS["postmark"]([("unsubscribe", "ada@example.org", "r1")])
    assert post(client, "postmark", req).status_code == 200
    before = snapshot(hook_settings)
    retry = post(client, "postmark", req)
    assert retry.status_code == 200, retry.get_json()
    assert retry.get_json()["duplicates"] == 1 and retry.get_json()["applied"] == 0
    assert snapshot(hook_settings) == before


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "generic"])
@pytest.mark.parametrize("age", [3600, -3600])
def test_a_stale_or_future_timestamp_gets_403(
    client: FlaskClient, hook_settings: Settings, provider: str, age: int
) -> None:
    add(hook_settings, "ada@example.org")
    before = snapshot(hook_settings)
    req = PROVIDERS[provider]([("bounce", "ada@example.org", "t1")], stamp=int(time.time()) - age)
    assert post(client, provider, req).status_code == 403
    assert snapshot(hook_settings) == before


# --- malformed, oversized, unconfigured ---------------------------------------------------


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[" * 100_000, b'{"a": 1}', b"[1, 2]"])
def test_a_signed_but_malformed_body_gets_400(
    client: FlaskClient, hook_settings: Settings, body: bytes
) -> None:
    before = snapshot(hook_settings)
    ts = int(time.time())
    signature = SENDGRID_KEY.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))
    response = client.post("/webhooks/sendgrid", data=body, headers={
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(ts)})
    assert response.status_code == 400
    generic_response = client.post("/webhooks/generic", data=body, headers={
        "X-Digest-Timestamp": str(ts), "X-Digest-Signature": Generic.sign(GENERIC_SECRET, ts,
                                                                          body)})
    assert generic_response.status_code == 400
    assert snapshot(hook_settings) == before


def test_an_oversized_body_gets_413(client: FlaskClient, hook_settings: Settings,
                                    provider: str) -> None:
    before = snapshot(hook_settings)
    response = client.post(f"/webhooks/{provider}", data=b"[" + b" " * (2 * 1024 * 1024) + b"]",
                           content_type="application/json")
    assert response.status_code == 413
    assert snapshot(hook_settings) == before


def test_a_provider_without_its_secret_is_off(settings: Settings) -> None:
    with create_app(settings).test_client() as c:
        for name in (*PROVIDERS, "unknown"):
            req = PROVIDERS.get(name, generic)([("bounce", "a@example.org", "1")])
            response = c.post(f"/webhooks/{name}", data=req.body, headers=req.headers)
            assert response.status_code == 404, name
    assert configured_providers(settings) == {}


def test_a_sendgrid_key_that_is_not_one_fails_at_start(settings: Settings) -> None:
    with pytest.raises(SettingsError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        create_app(replace(settings, sendgrid_webhook_public_key="not a key"))
    pem = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert "sendgrid" in configured_providers(replace(settings, sendgrid_webhook_public_key=pem))


# --- one request, one event: whatever the spelling ----------------------------------------


def _malleated(signature_b64: str) -> str:
    """ECDSA's other valid signature of the same message: (r, n - s) for (r, s)."""
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's n
    r, s = decode_dss_signature(base64.b64decode(signature_b64))
    return base64.b64encode(encode_dss_signature(r, order - s)).decode()


def _respelled(provider: str, req: Request) -> list[Request]:
    """The same signed request with its signature (or timestamp) spelled another way."""
    headers = dict(req.headers)
    if provider == "sendgrid":
        name = "X-Twilio-Email-Event-Webhook-Signature"
        return [Request({**headers, name: _malleated(headers[name])}, req.body)]
    if provider == "generic":
        scheme, _, mac = headers["X-Digest-Signature"].partition("=")
        stamp = headers["X-Digest-Timestamp"]
        return [Request({**headers, "X-Digest-Signature": f"{scheme}={mac.upper()}"}, req.body),
                Request({**headers, "X-Digest-Signature": f"SHA256={mac}"}, req.body),
                Request({**headers, "X-Digest-Timestamp": f"0{stamp}"}, req.body)]
    payload = json.loads(req.body)  # mailgun
    payload["signature"]["signature"] = payload["signature"]["signature"].upper()
    return [Request(headers, json.dumps(payload).encode())]


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "generic"])
def test_a_replay_with_its_signature_spelled_another_way_is_still_a_replay(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    add(hook_settings, "ada@example.org")
    req = PROVIDERS[provider]([("delivered", "ada@example.org", "v1")])
    assert post(client, provider, req).status_code == 200
    before = snapshot(hook_settings)
    for variant in _respelled(provider, req):
        replay = post(client, provider, variant)
        assert replay.status_code == 403, (variant.headers, replay.get_json())
        assert "replay" in replay.get_json()["error"]
    assert snapshot(hook_settings) == before


def test_a_signature_that_is_not_hex_is_refused(
    client: FlaskClient, hook_settings: Settings
) -> None:
    before = snapshot(hook_settings)
    req = generic([("bounce", "ada@example.org", "h1")])
    mac = req.headers["X-Digest-Signature"].partition("=")[2]
    for bad in (f"sha256={mac[:-1]}z", f"sha256={mac[:-1]}", f"md5={mac}", mac):
        response = post(client, "generic", Request({**req.headers, "X-Digest-Signature": bad},
                                                   req.body))
        assert response.status_code == 403, bad
    assert snapshot(hook_settings) == before


def _postmark_request(payload: dict[str, Any]) -> Request:
    auth = base64.b64encode(f"{POSTMARK_USER}:{POSTMARK_PASSWORD}".encode()).decode()
    return Request({"Authorization": f"Basic {auth}"}, json.dumps(payload).encode())


@pytest.mark.parametrize("record", ["Bounce", "SpamComplaint"])
def test_two_postmark_events_without_an_id_are_two_events(
    client: FlaskClient, hook_settings: Settings, record: str
) -> None:
    for email in ("ada@example.org", "grace@example.org"):
        add(hook_settings, email)
        event = {"RecordType": record, "Type": "HardBounce" if record == "Bounce"
                 else "SpamComplaint", "Email": email, "BouncedAt": "2026-11-23T10:00:00Z"}
        response = post(client, "postmark", _postmark_request(event))
        assert response.get_json() == {"status": "ok", "applied": 1, "duplicates": 0,
                                       "ignored": 0}, email
    expected = "bounced" if record == "Bounce" else "complained"
    assert suppressed(hook_settings) == {"ada@example.org": expected,
                                         "grace@example.org": expected}
    # The same id-less event again, in a request of its own (key order and spacing changed),
    # is known by its content: acknowledged, not applied twice.
    again = {"BouncedAt": "2026-11-23T10:00:00Z", "Email": "grace@example.org",
             "RecordType": record, "Type": "HardBounce" if record == "Bounce"
             else "SpamComplaint", "Tag": None}
    del again["Tag"]
    retry = _postmark_request(again)
    retry = Request(retry.headers, json.dumps(again, indent=1).encode())
    assert post(client, "postmark", retry).get_json()["duplicates"] == 1


def test_postmark_events_of_one_message_are_not_one_event(
    client: FlaskClient, hook_settings: Settings
) -> None:
    """A MessageID names a message, which has a delivery, opens and clicks of its own."""
    add(hook_settings, "ada@example.org")
    for record in ("Delivery", "Open", "Click"):
        response = post(client, "postmark", _postmark_request(
            {"RecordType": record, "MessageID": "m-1", "Recipient": "ada@example.org"}))
        assert response.get_json()["duplicates"] == 0, record


def test_a_postmark_subscription_change_without_a_time_is_known_by_its_content(
    client: FlaskClient, hook_settings: Settings
) -> None:
    for email in ("ada@example.org", "grace@example.org"):
        add(hook_settings, email)
        response = post(client, "postmark", _postmark_request(
            {"RecordType": "SubscriptionChange", "Recipient": email, "SuppressSending": True,
             "SuppressionReason": "HardBounce"}))
        assert response.get_json()["applied"] == 1, email
    assert set(suppressed(hook_settings)) == {"ada@example.org", "grace@example.org"}


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_events_without_an_id_from_other_providers_stay_apart(
    client: FlaskClient, hook_settings: Settings, provider: str
) -> None:
    for email in ("ada@example.org", "grace@example.org"):
        add(hook_settings, email)
        req = PROVIDERS[provider]([("bounce", email, "")])  # no id at all
        assert post(client, provider, req).get_json()["applied"] == 1, email
    assert set(suppressed(hook_settings)) == {"ada@example.org", "grace@example.org"}


@pytest.mark.parametrize("address", ["not an address", "a@b", "", "x" * 400 + "@example.org"])
def test_an_event_for_what_is_not_an_address_is_ignored(
    client: FlaskClient, hook_settings: Settings, provider: str, address: str
) -> None:
    response = post(client, provider, PROVIDERS[provider]([("bounce", address, "bad-1")]))
    assert response.status_code == 200
    assert response.get_json()["ignored"] == 1
    assert suppressed(hook_settings) == {}
