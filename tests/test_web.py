"""Every page of the web app through Flask's test client, on SQLite and PostgreSQL: double
opt-in, no enumeration, signed links (forged, expired, cross-purpose, cross-subscriber),
CSRF, rate limits, one-click unsubscribe, preferences and pause, escaping, headers.

The confirmation and notice emails go out from a background thread after the request:
`subscribe` waits for it, as a reader waits for their inbox. tests/test_web_attacks.py has
the attacks and faults."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import date, datetime, timezone
from email.message import EmailMessage
from html import unescape

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from digest import db, notices, tokens
from digest.ingest import load_sample_papers
from digest.lifecycle import request_subscription
from digest.models import EventKind, Subscriber, SubscriberEvent, SubscriberStatus
from digest.notices import LinkRef
from digest.pipeline import run_day
from digest.settings import Settings
from digest.subscribers import Preferences, find_subscriber
from digest.tokens import Purpose
from digest.web import create_app

from .conftest import lexical_only
from .factories import make_subscriber
from .smtp_server import SMTPServer

FORM = {"email": "ada@example.org", "topics": "LoRA, low-rank adaptation",
        "time_zone": "Europe/Paris", "send_hour": "8", "papers_per_digest": "5"}


@pytest.fixture
def web_settings(settings: Settings, smtp_server: SMTPServer, redis_url: str) -> Settings:
    return replace(lexical_only(settings), mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, smtp_retry_attempts=1, redis_url=redis_url,
                   min_relevance=0.05)


# The app on the module's `web_settings`, and no email still on its way after a test
# (conftest.py).
pytestmark = pytest.mark.usefixtures("background_sends_done")


def csrf(client: FlaskClient, path: str = "/") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def subscribe(client: FlaskClient, **fields: str) -> tuple[int, str]:
    response = client.post("/subscribe", data={"csrf_token": csrf(client), **FORM, **fields})
    assert notices.wait_for_background_sends(), "the background sender is stuck"
    return response.status_code, response.get_data(as_text=True)


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def main_text(html: str) -> str:
    return visible_text(html.split("<main", 1)[1].split("</main>", 1)[0])


def status_of(settings: Settings, email: str) -> SubscriberStatus:
    with db.session_scope(settings) as s:
        subscriber = find_subscriber(s, email)
        assert subscriber is not None
        return subscriber.status


def events_of(settings: Settings, email: str) -> list[str]:
    with db.session_scope(settings) as s:
        subscriber = find_subscriber(s, email)
        assert subscriber is not None
        return [e.kind.value for e in s.scalars(
            select(SubscriberEvent).where(SubscriberEvent.subscriber_id == subscriber.id)
            .order_by(SubscriberEvent.id))]


def add(settings: Settings, email: str, status: SubscriberStatus = SubscriberStatus.ACTIVE,
        topics: str = "LoRA") -> LinkRef:
    """A subscriber, as signed links name them (id and link key)."""
    with db.session_scope(settings) as s:
        subscriber = make_subscriber(s, email=email, status=status, topics=topics)
        return LinkRef(subscriber.id, subscriber.link_key)


def confirm_path(settings: Settings, email: str, topics: str = "LoRA") -> str:
    """The confirmation link of a new sign-up request for `email`, as the form makes one."""
    from digest.models import SignupRequest

    with db.session_scope(settings) as s:
        signup = request_subscription(s, email, Preferences(topics, "UTC", 7, 5))
        assert signup.request_id is not None
        # The test follows the link itself: as if its email had gone, or a sender would send it.
        s.get(SignupRequest, signup.request_id).emailed_at = datetime.now(timezone.utc)  # type: ignore[union-attr]
        return "/confirm/" + tokens.make_token(settings, Purpose.CONFIRM,
                                               LinkRef(signup.request_id, _key_of(s, signup)))


def _key_of(session: object, signup: object) -> str:
    from digest.models import SignupRequest

    return session.get(SignupRequest, signup.request_id).link_key  # type: ignore[attr-defined]


def link_in(message: EmailMessage, path: str) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(rf"https://digest\.test(/{path}/\S+)", body.get_content())
    assert match, f"no /{path}/ link in the email"
    return match.group(1)


# --- the subscribe page -----------------------------------------------------------------


def test_subscribe_page_has_the_form_and_security_headers(client: FlaskClient) -> None:
    response = client.get("/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    for field in ('name="email"', 'name="topics"', 'name="time_zone"', 'name="send_hour"',
                  'name="papers_per_digest"', 'name="csrf_token"'):
        assert field in html
    assert '<option value="Europe/Paris">' in html
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_subscribing_sends_one_confirmation_and_nothing_else(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    status, html = subscribe(client, email="  Ada@EXAMPLE.org ")
    assert status == 200
    assert "Check your inbox" in main_text(html) and "Ada@example.org" in main_text(html)
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.PENDING
    [message] = smtp_server.messages
    assert message["To"] == "Ada@example.org"
    assert message["Subject"] == "Confirm your Paper Digest subscription"
    assert message["X-Digest-Kind"] == "confirm"
    assert "/unsubscribe/" in message["List-Unsubscribe"]  # "I never asked": one click
    assert link_in(message, "confirm")
    assert events_of(web_settings, "ada@example.org") == ["subscribed", "confirmation_sent"]
    with db.session_scope(web_settings) as s:
        load_sample_papers(s)
    assert run_day(web_settings, datetime.now(timezone.utc).date()).sent == []
    assert len(smtp_server.messages) == 1  # a pending address gets nothing else


def test_confirm_link_shows_a_button_and_only_the_post_confirms(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    subscribe(client)
    path = link_in(smtp_server.messages[0], "confirm")
    page = client.get(path)
    assert page.status_code == 200
    assert "Confirm my subscription" in main_text(page.get_data(as_text=True))
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.PENDING
    done = client.post(path, data={"csrf_token": csrf(client, path)})
    assert done.status_code == 200
    assert "You're subscribed" in main_text(done.get_data(as_text=True))
    assert "08:00" in main_text(done.get_data(as_text=True))
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.ACTIVE
    again = client.post(path, data={"csrf_token": csrf(client)})
    assert again.status_code == 200  # confirming twice is harmless
    assert events_of(web_settings, "ada@example.org").count("confirmed") == 1


def test_a_pending_address_is_sent_a_confirmation_at_most_once_per_window(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    first = subscribe(client)
    second = subscribe(client, topics="RLHF")
    assert first[0] == second[0] == 200
    assert main_text(first[1]) == main_text(second[1])
    assert len(smtp_server.messages) == 1
    with db.session_scope(web_settings) as s:  # a later form rewrites nothing
        assert find_subscriber(s, "ada@example.org").profile.topics == FORM["topics"]  # type: ignore[union-attr]


def test_an_active_address_is_not_revealed_and_its_owner_is_told(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    add(web_settings, "grace@example.org", topics="diffusion models")
    _, new_page = subscribe(client, email="newcomer@example.org")
    status, active_page = subscribe(client, email="grace@example.org", topics="spam spam")
    assert status == 200
    assert main_text(active_page) == main_text(new_page).replace(
        "newcomer@example.org", "grace@example.org")
    notice = smtp_server.by_recipient()["grace@example.org"]
    assert [m["Subject"] for m in notice] == ["You are already subscribed to Paper Digest"]
    assert link_in(notice[0], "preferences")
    with db.session_scope(web_settings) as s:  # nothing about the subscription changed
        grace = find_subscriber(s, "grace@example.org")
        assert grace.status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
        assert grace.profile.topics == "diffusion models"  # type: ignore[union-attr]
    subscribe(client, email="grace@example.org")
    assert len(smtp_server.by_recipient()["grace@example.org"]) == 1  # once per window


@pytest.mark.parametrize("status", [SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED])
def test_a_suppressed_address_gets_nothing_and_the_page_says_the_same(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer,
    status: SubscriberStatus,
) -> None:
    add(web_settings, "gone@example.org", status=status)
    code, html = subscribe(client, email="gone@example.org")
    assert code == 200 and "Check your inbox" in main_text(html)
    assert smtp_server.messages == []
    assert status_of(web_settings, "gone@example.org") is status


def test_an_unsubscribed_address_may_come_back_by_confirming_again(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    sid = add(web_settings, "ada@example.org")
    old_confirm = confirm_path(web_settings, "ada@example.org")
    path = "/unsubscribe/" + tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, sid)
    client.post(path, data={"csrf_token": csrf(client, path)})
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.UNSUBSCRIBED
    # A confirmation link from before they left does not bring them back.
    stale = client.post(old_confirm, data={"csrf_token": csrf(client)})
    assert stale.status_code == 409
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.UNSUBSCRIBED
    subscribe(client)  # still unsubscribed until they confirm the new email
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.UNSUBSCRIBED
    path = link_in(smtp_server.messages[-1], "confirm")
    client.post(path, data={"csrf_token": csrf(client, path)})
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.ACTIVE
    assert events_of(web_settings, "ada@example.org")[-1] == "resubscribed"


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"email": "not-an-address"}, "email", "not a valid email address"),
        ({"email": "ada@example.org\r\nBcc: victim@example.org"}, "email", "not a valid"),
        ({"topics": "   "}, "topics", "Give at least one topic"),
        ({"topics": "x" * 2001}, "topics", "limited to 2000"),
        ({"send_hour": "25"}, "send_hour", "from 0 to 23"),
        ({"send_hour": "seven"}, "send_hour", "from 0 to 23"),
        ({"time_zone": "Mars/Olympus"}, "time_zone", "time zone"),
        ({"papers_per_digest": "500"}, "papers_per_digest", "from 1 to 50"),
    ],
)
def test_bad_input_is_shown_next_to_its_field_and_stores_nothing(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer,
    fields: dict[str, str], field: str, message: str,
) -> None:
    code, html = subscribe(client, **fields)
    assert code == 400
    error = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', html, re.S)
    assert error and message in unescape(error.group(1))
    assert smtp_server.messages == []
    with db.session_scope(web_settings) as s:
        assert s.scalars(select(Subscriber)).all() == []


def test_every_page_escapes_what_users_typed(
    client: FlaskClient, web_settings: Settings
) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    code, html = subscribe(client, email="not valid " + hostile, topics=hostile)
    assert code == 400
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    sid = add(web_settings, "ada@example.org", topics=hostile, status=SubscriberStatus.PENDING)
    paths = [f"/{purpose.value}/{tokens.make_token(web_settings, purpose, sid)}"
             for purpose in (Purpose.PREFERENCES, Purpose.UNSUBSCRIBE)]
    for path in [*paths, confirm_path(web_settings, "ada@example.org", topics=hostile)]:
        page = client.get(path)
        text = page.get_data(as_text=True)
        assert page.status_code == 200
        assert "<script>alert" not in text and "<img src=x" not in text


# --- CSRF and rate limits -----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_forms_without_the_csrf_token_change_nothing(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer, token: str | None
) -> None:
    csrf(client)  # the visitor has a session, but the POST does not carry its token
    data = dict(FORM) if token is None else {**FORM, "csrf_token": token}
    response = client.post("/subscribe", data=data)
    assert response.status_code == 400
    assert "This form has expired" in main_text(response.get_data(as_text=True))
    sid = add(web_settings, "grace@example.org", status=SubscriberStatus.PENDING)
    paths = {f"/{purpose.value}/{tokens.make_token(web_settings, purpose, sid)}": extra
             for purpose, extra in ((Purpose.PREFERENCES, {"topics": "changed"}),
                                    (Purpose.UNSUBSCRIBE, {}))}
    paths[confirm_path(web_settings, "grace@example.org", topics="changed")] = {}
    for path, extra in paths.items():
        assert client.post(path, data={**extra, **({"csrf_token": token} if token else {})}
                           ).status_code == 400
    with db.session_scope(web_settings) as s:
        grace = find_subscriber(s, "grace@example.org")
        assert grace.status is SubscriberStatus.PENDING  # type: ignore[union-attr]
        assert grace.profile.topics == "LoRA"  # type: ignore[union-attr]
        assert find_subscriber(s, "ada@example.org") is None
    assert smtp_server.messages == []


def test_a_client_is_rate_limited_with_a_clear_429(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    limited = replace(web_settings, subscribe_rate_limit_per_hour=3)
    with create_app(limited).test_client() as c:
        codes = [subscribe(c, email=f"reader{i}@example.org")[0] for i in range(4)]
        assert codes == [200, 200, 200, 429]
        response = c.post("/subscribe", data={"csrf_token": csrf(c), **FORM})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert "Too many subscribe requests" in main_text(response.get_data(as_text=True))
        # Another client is not affected.
        other = c.post("/subscribe", data={"csrf_token": csrf(c), **FORM},
                       environ_base={"REMOTE_ADDR": "192.0.2.7"})
        assert other.status_code == 200
    assert notices.wait_for_background_sends()
    assert len(smtp_server.messages) == 4


def test_nobody_can_mail_bomb_an_address(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    no_window = replace(web_settings, confirm_resend_minutes=0, subscribe_address_limit_per_day=2)
    with create_app(no_window).test_client() as c:
        codes = [
            c.post("/subscribe", data={"csrf_token": csrf(c), **FORM},
                   environ_base={"REMOTE_ADDR": f"198.51.100.{i}"}).status_code
            for i in range(5)
        ]
    assert codes == [200, 200, 429, 429, 429]
    assert notices.wait_for_background_sends()
    assert len(smtp_server.messages) == 2


# --- signed links ---------------------------------------------------------------------------


def expired_token(settings: Settings, purpose: Purpose, owner: LinkRef,
                  monkeypatch: pytest.MonkeyPatch) -> str:
    max_age = tokens.MAX_AGE_SECONDS[purpose] or 0
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: 1_700_000_000.0)
        token = tokens.make_token(settings, purpose, owner)
    assert time.time() - 1_700_000_000 > max_age
    return token


def test_forged_expired_and_cross_purpose_links_change_nothing(
    client: FlaskClient, web_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = add(web_settings, "ada@example.org", status=SubscriberStatus.PENDING)
    good_unsubscribe = tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, sid)
    other_key = replace(web_settings, secret_key="another-deployment")
    cases = {
        "forged": (Purpose.CONFIRM, tokens.make_token(other_key, Purpose.CONFIRM, sid), 400),
        "tampered": (Purpose.CONFIRM, good_unsubscribe[:-2] + "xx", 400),
        "garbage": (Purpose.CONFIRM, "not-a-token", 400),
        "expired": (Purpose.CONFIRM, expired_token(web_settings, Purpose.CONFIRM, sid,
                                                   monkeypatch), 410),
        "unsubscribe token to confirm": (Purpose.CONFIRM, good_unsubscribe, 400),
        "confirm token to unsubscribe": (
            Purpose.UNSUBSCRIBE, tokens.make_token(web_settings, Purpose.CONFIRM, sid), 400),
        "preferences token to unsubscribe": (
            Purpose.UNSUBSCRIBE, tokens.make_token(web_settings, Purpose.PREFERENCES, sid), 400),
        "expired preferences": (Purpose.PREFERENCES, expired_token(
            web_settings, Purpose.PREFERENCES, sid, monkeypatch), 410),
    }
    for name, (purpose, token, code) in cases.items():
        path = f"/{purpose.value}/{token}"
        assert client.get(path).status_code == code, name
        response = client.post(path, data={"csrf_token": csrf(client), "topics": "changed",
                                           "List-Unsubscribe": "One-Click"})
        assert response.status_code == code, name
    page = client.get(f"/confirm/{cases['expired'][1]}").get_data(as_text=True)
    assert "expired" in main_text(page) and "Subscribe again" in main_text(page)
    with db.session_scope(web_settings) as s:
        ada = find_subscriber(s, "ada@example.org")
        assert ada.status is SubscriberStatus.PENDING  # type: ignore[union-attr]
        assert ada.profile.topics == "LoRA"  # type: ignore[union-attr]


def test_a_link_acts_on_its_own_subscriber_only(
    client: FlaskClient, web_settings: Settings
) -> None:
    ada = add(web_settings, "ada@example.org")
    add(web_settings, "grace@example.org")
    path = "/unsubscribe/" + tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, ada)
    client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.UNSUBSCRIBED
    assert status_of(web_settings, "grace@example.org") is SubscriberStatus.ACTIVE


def test_a_link_for_a_deleted_subscriber_says_so(
    client: FlaskClient, web_settings: Settings
) -> None:
    sid = add(web_settings, "ada@example.org")
    with db.session_scope(web_settings) as s:
        s.delete(s.get(Subscriber, sid.id))
    response = client.get("/preferences/" + tokens.make_token(web_settings, Purpose.PREFERENCES,
                                                              sid))
    assert response.status_code == 404
    assert "no longer exists" in main_text(response.get_data(as_text=True))
    one_click = client.post("/unsubscribe/" + tokens.make_token(
        web_settings, Purpose.UNSUBSCRIBE, sid), data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 404


# --- unsubscribe ------------------------------------------------------------------------------


def test_unsubscribe_link_shows_one_button_and_the_post_unsubscribes_with_a_way_back(
    client: FlaskClient, web_settings: Settings
) -> None:
    sid = add(web_settings, "ada@example.org")
    path = "/unsubscribe/" + tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, sid)
    page = client.get(path)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and html.count("<button") == 1
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.ACTIVE  # GET: nothing
    done = client.post(path, data={"csrf_token": csrf(client, path)})
    assert "You're unsubscribed" in main_text(done.get_data(as_text=True))
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.UNSUBSCRIBED
    again = client.get(path)  # the link still says where they stand
    assert "You're unsubscribed" in main_text(again.get_data(as_text=True))
    back = client.post(path + "/resubscribe", data={"csrf_token": csrf(client)})
    assert "Welcome back" in main_text(back.get_data(as_text=True))
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.ACTIVE
    assert events_of(web_settings, "ada@example.org") == ["unsubscribed", "resubscribed"]


def test_rfc8058_one_click_post_from_the_digest_header_unsubscribes(
    web_settings: Settings, smtp_server: SMTPServer
) -> None:
    add(web_settings, "ada@example.org")
    with db.session_scope(web_settings) as s:
        load_sample_papers(s)
    run_day(web_settings, datetime.now(timezone.utc).date())
    [digest] = smtp_server.messages
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(https://[^>]+)>", digest["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    path = url.removeprefix("https://digest.test")
    # The mail provider's POST: no cookie, no session, no CSRF token.
    with create_app(web_settings).test_client(use_cookies=False) as provider:
        response = provider.post(path, data="List-Unsubscribe=One-Click",
                                 content_type="application/x-www-form-urlencoded")
        assert response.status_code == 200  # RFC 8058: no redirect
        assert response.mimetype == "text/plain"
        assert provider.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        # Without the one-click body, the same POST is a form that needs its CSRF token.
        assert provider.post(path, data={}).status_code == 400
    assert status_of(web_settings, "ada@example.org") is SubscriberStatus.UNSUBSCRIBED
    assert events_of(web_settings, "ada@example.org") == ["unsubscribed"]


def test_bounced_subscriber_cannot_resubscribe_from_the_page(
    client: FlaskClient, web_settings: Settings
) -> None:
    sid = add(web_settings, "gone@example.org", status=SubscriberStatus.BOUNCED)
    path = "/unsubscribe/" + tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, sid)
    assert "Resubscribe" not in client.get(path).get_data(as_text=True)
    response = client.post(path + "/resubscribe", data={"csrf_token": csrf(client)})
    assert response.status_code == 409
    assert status_of(web_settings, "gone@example.org") is SubscriberStatus.BOUNCED


# --- preferences ------------------------------------------------------------------------------


def test_preferences_are_saved_and_pausing_stops_the_digest(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    sid = add(web_settings, "ada@example.org")
    path = "/preferences/" + tokens.make_token(web_settings, Purpose.PREFERENCES, sid)
    page = client.get(path).get_data(as_text=True)
    assert ">LoRA</textarea>" in page
    response = client.post(path, data={
        "csrf_token": csrf(client, path), "topics": "diffusion models", "time_zone": "Asia/Tokyo",
        "send_hour": "21", "papers_per_digest": "3", "paused": "on"})
    assert response.status_code == 303 and response.headers["Location"].endswith("?saved=1")
    saved = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Saved." in main_text(saved) and "Your digest is paused" in main_text(saved)
    with db.session_scope(web_settings) as s:
        ada = s.get(Subscriber, sid.id)
        assert ada is not None and ada.paused and ada.status is SubscriberStatus.ACTIVE
        assert (ada.profile.topics, ada.time_zone, ada.send_hour, ada.papers_per_digest) == (
            "diffusion models", "Asia/Tokyo", 21, 3)
        load_sample_papers(s)
    assert run_day(web_settings, datetime.now(timezone.utc).date()).due == 0
    assert smtp_server.messages == []
    client.post(path, data={"csrf_token": csrf(client, path), "topics": "diffusion models",
                            "time_zone": "Asia/Tokyo", "send_hour": "21",
                            "papers_per_digest": "3"})
    report = run_day(web_settings, datetime.now(timezone.utc).date())
    assert report.sent == ["ada@example.org"]
    assert "diffusion models" in smtp_server.messages[0]["Subject"]
    assert events_of(web_settings, "ada@example.org") == [
        "preferences_changed", "paused", "resumed"]


def test_bad_preferences_are_refused_and_keep_what_was_typed(
    client: FlaskClient, web_settings: Settings
) -> None:
    sid = add(web_settings, "ada@example.org")
    path = "/preferences/" + tokens.make_token(web_settings, Purpose.PREFERENCES, sid)
    response = client.post(path, data={"csrf_token": csrf(client, path), "topics": "new topic",
                                       "send_hour": "99", "time_zone": "UTC"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert ">new topic</textarea>" in html and "from 0 to 23" in html
    with db.session_scope(web_settings) as s:
        assert s.get(Subscriber, sid.id).profile.topics == "LoRA"  # type: ignore[union-attr]


# --- preview, health, errors ----------------------------------------------------------------


def test_preview_ranks_todays_papers_for_typed_topics(
    client: FlaskClient, web_settings: Settings
) -> None:
    with db.session_scope(web_settings) as s:
        load_sample_papers(s)
    data = client.get("/preview", query_string={"topics": "LoRA, low-rank adaptation",
                                                "limit": "3"}).get_json()
    assert len(data["papers"]) == 3
    first = data["papers"][0]
    assert {"title", "url", "score", "why"} <= set(first)
    assert "matches: " in first["why"] and first["url"].startswith("https://")
    scores = [p["score"] for p in data["papers"]]
    assert scores == sorted(scores, reverse=True)
    assert client.get("/preview?topics=").get_json()["papers"] == []
    assert client.get("/preview", query_string={"topics": "x" * 100_000,
                                                "limit": "99999999999999999999"}).status_code == 200


def test_healthz_answers_for_load_balancers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_unknown_pages_and_methods_get_a_page_not_a_traceback(client: FlaskClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and "Page not found" in main_text(
        missing.get_data(as_text=True))
    assert client.delete("/subscribe").status_code == 405
    assert client.get("/subscribe").status_code == 303


def test_oversized_form_is_refused(client: FlaskClient) -> None:
    response = client.post("/subscribe", data={"csrf_token": csrf(client),
                                               "topics": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 413


def test_history_records_each_step(client: FlaskClient, web_settings: Settings,
                                   smtp_server: SMTPServer) -> None:
    subscribe(client)
    path = link_in(smtp_server.messages[0], "confirm")
    client.post(path, data={"csrf_token": csrf(client, path)})
    with db.session_scope(web_settings) as s:
        kinds = [e.kind for e in s.scalars(select(SubscriberEvent).order_by(SubscriberEvent.id))]
        assert kinds == [EventKind.SUBSCRIBED, EventKind.CONFIRMATION_SENT, EventKind.CONFIRMED]
        assert all(e.source == "web" for e in s.scalars(select(SubscriberEvent)))
    assert date.today()  # the history's times are UTC-aware (checked in test_models)
