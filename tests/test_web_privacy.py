"""Every choice on the web, and the reader's own data, through Flask's test client on SQLite
and PostgreSQL: words to exclude, the trending fallback, cadence and weekday, click tracking
on the subscribe, confirm and preferences pages; what the pages say is recorded; downloading
one's data; deleting oneself, and what old links do afterwards."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from html import unescape
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select

from digest import db, notices, tokens
from digest.models import (
    Cadence,
    Delivery,
    DeliveryItem,
    EventKind,
    FeedbackKind,
    PaperFeedback,
    SignupRequest,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Suppression,
    TopicProfile,
    WebhookEvent,
)
from digest.notices import LinkRef
from digest.settings import Settings
from digest.subscribers import find_subscriber, record_event
from digest.suppressions import is_suppressed
from digest.tokens import Purpose
from digest.web import create_app

from .conftest import lexical_only
from .factories import make_delivery, make_paper, make_subscriber
from .smtp_server import SMTPServer
from .test_web import add, csrf, expired_token, link_in, main_text, subscribe


@pytest.fixture
def web_settings(settings: Settings, smtp_server: SMTPServer, redis_url: str) -> Settings:
    return replace(lexical_only(settings), mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, smtp_retry_attempts=1, redis_url=redis_url)


# The app on the module's `web_settings`, and no email still on its way after a test
# (conftest.py).
pytestmark = pytest.mark.usefixtures("background_sends_done")


CHOICES = {"exclude": "medical, survey", "trending_fallback": "on", "cadence": "weekly",
           "send_weekday": "2", "click_tracking": "on"}


def preferences_path(settings: Settings, owner: LinkRef) -> str:
    return "/preferences/" + tokens.make_token(settings, Purpose.PREFERENCES, owner)


def stored_choices(settings: Settings, email: str) -> tuple[object, ...]:
    with db.session_scope(settings) as s:
        sub = find_subscriber(s, email)
        assert sub is not None
        return (sub.profile.exclude, sub.profile.trending_fallback, sub.cadence,
                sub.send_weekday, sub.click_tracking)


def field_error(html: str, field: str) -> str:
    match = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', html, re.S)
    return unescape(match.group(1)) if match else ""


# --- the choices on the subscribe, confirm and preferences pages ---------------------------


def test_the_subscribe_page_offers_every_choice_with_privacy_by_default(
    client: FlaskClient,
) -> None:
    html = client.get("/").get_data(as_text=True)
    for field in ('name="exclude"', 'name="trending_fallback"', 'name="cadence"',
                  'name="send_weekday"', 'name="click_tracking"'):
        assert field in html
    assert '<option value="daily" selected>' in html  # daily unless chosen
    assert '<option value="0" selected>Monday</option>' in html
    assert 'name="click_tracking" id="click_tracking">' in html  # unticked: off by default
    assert 'name="trending_fallback" id="trending_fallback">' in html


def test_subscribe_choices_reach_the_confirmation_and_only_confirming_saves_them(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    status, _ = subscribe(client, **CHOICES)
    assert status == 200
    # Pending: the new row holds the form's choices, and the confirmation says what they are.
    [message] = smtp_server.messages
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "asked to receive a weekly digest" in text
    assert "Leaving out: medical, survey" in text
    assert "Every Wednesday at: 08:00 (Europe/Paris)" in text
    assert "When nothing matches: the trending papers" in text
    assert "Learn from the papers I open: on" in text
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "Every Wednesday at" in html and "send the trending papers" in html
    path = link_in(message, "confirm")
    page = main_text(client.get(path).get_data(as_text=True))
    assert "starts receiving the weekly digest" in page
    assert "Leaving out medical, survey" in page
    assert "Every Wednesday at 08:00 (Europe/Paris)" in page
    assert "When nothing matches the trending papers" in page
    assert "Learn from the papers I open on: paper links pass through this site" in page
    done = client.post(path, data={"csrf_token": csrf(client, path)})
    assert "every Wednesday at 08:00" in main_text(done.get_data(as_text=True))
    assert status_is(web_settings, "ada@example.org", SubscriberStatus.ACTIVE)
    assert stored_choices(web_settings, "ada@example.org") == (
        "medical, survey", True, Cadence.WEEKLY, 2, True)


def test_a_plain_subscription_is_daily_without_tracking_or_fallback(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    subscribe(client)
    text = smtp_server.messages[0].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Every day at: 08:00" in text and "Leaving out" not in text
    assert "Learn from the papers I open: off (links go straight to the paper)" in text
    path = link_in(smtp_server.messages[0], "confirm")
    client.post(path, data={"csrf_token": csrf(client, path)})
    assert stored_choices(web_settings, "ada@example.org") == ("", False, Cadence.DAILY, 0, False)


def status_is(settings: Settings, email: str, status: SubscriberStatus) -> bool:
    with db.session_scope(settings) as s:
        sub = find_subscriber(s, email)
        return sub is not None and sub.status is status


def test_a_visitor_cannot_change_a_stored_profiles_choices(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    with db.session_scope(web_settings) as s:
        make_subscriber(s, email="grace@example.org", exclude="quantum")
    before = stored_choices(web_settings, "grace@example.org")
    code, _ = subscribe(client, email="grace@example.org", exclude="everything, else",
                        cadence="weekly", send_weekday="6", click_tracking="on",
                        trending_fallback="on")
    assert code == 200
    assert stored_choices(web_settings, "grace@example.org") == before
    # A pending address keeps the first form's choices; a second form changes nothing either.
    subscribe(client, email="ada@example.org")
    subscribe(client, email="ada@example.org", **CHOICES)
    assert stored_choices(web_settings, "ada@example.org") == ("", False, Cadence.DAILY, 0,
                                                               False)
    # Only following a confirmation link (the owner's mailbox) saves a request's choices.
    with db.session_scope(web_settings) as s:
        request = s.scalars(select(SignupRequest).where(SignupRequest.email == "ada@example.org")
                            .order_by(SignupRequest.id.desc())).first()
        assert request is not None and request.cadence is Cadence.WEEKLY
        path = "/confirm/" + tokens.make_token(web_settings, Purpose.CONFIRM, request)
    client.post(path, data={"csrf_token": csrf(client, path)})
    assert stored_choices(web_settings, "ada@example.org") == (
        "medical, survey", True, Cadence.WEEKLY, 2, True)


def test_preferences_round_trip_every_new_choice(
    client: FlaskClient, web_settings: Settings
) -> None:
    sid = add(web_settings, "ada@example.org")
    path = preferences_path(web_settings, sid)
    page = client.get(path).get_data(as_text=True)
    assert 'name="exclude" type="text"' in page and 'value=""' in page
    assert '<option value="daily" selected>' in page
    form = {"csrf_token": csrf(client, path), "topics": "LoRA", "time_zone": "UTC",
            "send_hour": "7", "papers_per_digest": "5", **CHOICES}
    response = client.post(path, data=form)
    assert response.status_code == 303
    assert stored_choices(web_settings, "ada@example.org") == (
        "medical, survey", True, Cadence.WEEKLY, 2, True)
    page = client.get(path).get_data(as_text=True)
    assert 'value="medical, survey"' in page
    assert '<option value="weekly" selected>' in page
    assert '<option value="2" selected>Wednesday</option>' in page
    assert 'id="trending_fallback" checked' in page and 'id="click_tracking" checked' in page
    # Unticked boxes and a daily cadence turn them off again.
    client.post(path, data={**form, "exclude": "", "cadence": "daily", "send_weekday": "2",
                            "trending_fallback": "", "click_tracking": ""})
    assert stored_choices(web_settings, "ada@example.org") == ("", False, Cadence.DAILY, 2,
                                                               False)
    with db.session_scope(web_settings) as s:
        details = [e.detail for e in s.scalars(select(SubscriberEvent).where(
            SubscriberEvent.kind == EventKind.PREFERENCES_CHANGED).order_by(SubscriberEvent.id))]
    assert details == [
        "exclude: medical, survey; trending fallback: on; cadence: weekly on Wednesday; "
        "click tracking: on",
        "exclude: -; trending fallback: off; cadence: daily; click tracking: off",
    ]


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"exclude": "spam.example"}, "exclude", "cannot contain web or email addresses"),
        ({"exclude": "see https://x.test"}, "exclude", "cannot contain web or email"),
        ({"exclude": "me@example.org"}, "exclude", "cannot contain web or email"),
        ({"exclude": "x" * 2001}, "exclude", "Words to exclude are limited to 2000"),
        ({"cadence": "monthly"}, "cadence", "Choose daily or weekly"),
        ({"send_weekday": "7"}, "send_weekday", "day of the week"),
        ({"send_weekday": "Tuesday"}, "send_weekday", "day of the week"),
    ],
)
def test_bad_choices_are_shown_next_to_their_field_on_both_pages(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer,
    fields: dict[str, str], field: str, message: str,
) -> None:
    code, html = subscribe(client, **fields)
    assert code == 400 and message in field_error(html, field)
    assert smtp_server.messages == []
    sid = add(web_settings, "grace@example.org")
    path = preferences_path(web_settings, sid)
    response = client.post(path, data={"csrf_token": csrf(client, path), "topics": "RLHF",
                                       **fields})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in field_error(html, field) and ">RLHF</textarea>" in html
    with db.session_scope(web_settings) as s:
        assert s.scalars(select(Subscriber.email)).all() == ["grace@example.org"]
        assert find_subscriber(s, "grace@example.org").profile.topics == "LoRA"  # type: ignore[union-attr]


# --- what the pages say is recorded ---------------------------------------------------------


def test_both_pages_say_what_is_recorded_and_why(
    client: FlaskClient, web_settings: Settings
) -> None:
    front = main_text(client.get("/").get_data(as_text=True))
    sid = add(web_settings, "ada@example.org")
    prefs = client.get(preferences_path(web_settings, sid)).get_data(as_text=True)
    for text in (front, main_text(prefs)):
        assert "what we record, and why" in text.lower()
        assert "Your IP address is not saved" in text
        assert "only if you turn on “Learn from the papers I open”" in text
        assert "kept 30 days" in text and "their papers kept 60 days" in text
    # The figures are the deployment's own retention settings.
    shorter = create_app(replace(web_settings, retention_feedback_days=90)).test_client()
    assert "learn from them; kept 90 days" in main_text(shorter.get("/").get_data(as_text=True))
    assert 'href="' + preferences_path(web_settings, sid).rsplit("/", 1)[0] in prefs
    assert "Download my data (JSON)" in prefs and "Delete me entirely" in prefs


# --- downloading one's data -------------------------------------------------------------------


def reader_with_history(settings: Settings, email: str, title: str) -> LinkRef:
    """A subscriber with a digest of one paper, a vote, a click and a history event."""
    with db.session_scope(settings) as s:
        sub = make_subscriber(s, email=email, topics=f"{title} topics", exclude="quantum")
        paper = make_paper(s, title=title)
        delivery = make_delivery(s, sub, date(2026, 12, 7))
        delivery.paper_count, delivery.sent_at = 1, datetime(2026, 12, 7, 7, tzinfo=timezone.utc)
        s.add(DeliveryItem(delivery_id=delivery.id, subscriber_id=sub.id, paper_id=paper.id,
                           rank=1, score=0.42, why=f"matches: {title}"))
        now = datetime.now(timezone.utc)
        s.add(PaperFeedback(subscriber_id=sub.id, paper_id=paper.id, kind=FeedbackKind.MORE,
                            created_at=now))
        other = make_paper(s, title=f"{title} clicked")
        s.add(PaperFeedback(subscriber_id=sub.id, paper_id=other.id, kind=FeedbackKind.CLICK,
                            created_at=now + timedelta(seconds=1)))
        record_event(s, sub.id, EventKind.CONFIRMED, "web", "confirmed by email")
        s.add(SignupRequest(email=email, address=email.lower(), topics="typed by a visitor",
                            time_zone="UTC", send_hour=7, papers_per_digest=5,
                            source="web", cadence=Cadence.WEEKLY))
        s.flush()
        return LinkRef(sub.id, sub.link_key)


def test_a_reader_downloads_everything_about_them_and_nothing_about_anyone_else(
    client: FlaskClient, web_settings: Settings
) -> None:
    ada = reader_with_history(web_settings, "ada@example.org", "Ada's paper")
    reader_with_history(web_settings, "grace@example.org", "Grace's paper")
    response = client.get(preferences_path(web_settings, ada) + "/data")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_data(as_text=True)
    assert "grace" not in body.lower()  # nothing of the other reader's
    data = json.loads(body)
    assert data["subscriber"]["email"] == "ada@example.org"
    assert data["subscriber"]["schedule"] == "daily"
    assert data["subscriber"]["click_tracking"] is False
    assert "link_key" not in body and ada.link_key not in body
    assert data["profile"]["topics"] == "Ada's paper topics"
    assert data["profile"]["exclude"] == "quantum"
    [request] = data["signup_requests"]
    assert request["topics"] == "typed by a visitor" and request["cadence"] == "weekly"
    assert [e["event"] for e in data["history"]] == ["confirmed"]
    [delivery] = data["deliveries"]
    assert delivery["digest_date"] == "2026-12-07" and delivery["status"] == "sent"
    assert [(p["rank"], p["title"], p["why"]) for p in delivery["papers"]] == [
        (1, "Ada's paper", "matches: Ada's paper")]
    assert [(f["kind"], f["title"]) for f in data["feedback"]] == [
        ("more", "Ada's paper"), ("click", "Ada's paper clicked")]
    assert data["suppression"] is None
    # Reading changes nothing, and a second download says the same.
    again = json.loads(client.get(preferences_path(web_settings, ada) + "/data").get_data())
    assert {k: v for k, v in again.items() if k != "exported_at"} == {
        k: v for k, v in data.items() if k != "exported_at"}


def test_data_and_delete_refuse_forged_foreign_and_expired_links(
    client: FlaskClient, web_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = add(web_settings, "ada@example.org")
    other_deployment = replace(web_settings, secret_key="another-deployment")
    cases = {
        "forged": (tokens.make_token(other_deployment, Purpose.PREFERENCES, ada), 400),
        "unsubscribe token": (tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, ada), 400),
        "feedback token": (tokens.make_token(web_settings, Purpose.FEEDBACK, ada), 400),
        "another key": (tokens.make_token(web_settings, Purpose.PREFERENCES,
                                          LinkRef(ada.id, "x" * 22)), 404),
        "expired": (expired_token(web_settings, Purpose.PREFERENCES, ada, monkeypatch), 410),
        "garbage": ("not-a-token", 400),
    }
    for name, (token, code) in cases.items():
        assert client.get(f"/preferences/{token}/data").status_code == code, name
        assert client.get(f"/preferences/{token}/delete").status_code == code, name
        assert client.post(f"/preferences/{token}/delete",
                           data={"csrf_token": csrf(client)}).status_code == code, name
    assert status_is(web_settings, "ada@example.org", SubscriberStatus.ACTIVE)


# --- deleting oneself -------------------------------------------------------------------------


def rows_about(settings: Settings, subscriber_id: int, email: str) -> dict[str, int]:
    with db.session_scope(settings) as s:
        def count(model: type, *where: Any) -> int:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        return {
            "subscribers": count(Subscriber, Subscriber.id == subscriber_id),
            "profiles": count(TopicProfile, TopicProfile.subscriber_id == subscriber_id),
            "deliveries": count(Delivery, Delivery.subscriber_id == subscriber_id),
            "items": count(DeliveryItem, DeliveryItem.subscriber_id == subscriber_id),
            "feedback": count(PaperFeedback, PaperFeedback.subscriber_id == subscriber_id),
            "events": count(SubscriberEvent, SubscriberEvent.subscriber_id == subscriber_id),
            "requests": count(SignupRequest, SignupRequest.address == email),
        }


def test_deleting_oneself_asks_first_then_removes_every_row(
    client: FlaskClient, web_settings: Settings
) -> None:
    ada = reader_with_history(web_settings, "ada@example.org", "Ada's paper")
    grace = reader_with_history(web_settings, "grace@example.org", "Grace's paper")
    grace_before = rows_about(web_settings, grace.id, "grace@example.org")
    path = preferences_path(web_settings, ada) + "/delete"
    page = client.get(path)
    assert page.status_code == 200 and page.get_data(as_text=True).count("<button") == 1
    text = main_text(page.get_data(as_text=True))
    assert "Delete everything about you?" in text and "may subscribe again later" in text
    assert rows_about(web_settings, ada.id, "ada@example.org")["subscribers"] == 1  # GET: nothing
    for token in (None, "forged"):  # the POST needs the form's CSRF token
        data = {"csrf_token": token} if token else {}
        assert client.post(path, data=data).status_code == 400
    assert rows_about(web_settings, ada.id, "ada@example.org")["subscribers"] == 1
    done = client.post(path, data={"csrf_token": csrf(client, path)})
    assert done.status_code == 200
    assert "You're deleted" in main_text(done.get_data(as_text=True))
    assert set(rows_about(web_settings, ada.id, "ada@example.org").values()) == {0}
    assert rows_about(web_settings, grace.id, "grace@example.org") == grace_before
    with db.session_scope(web_settings) as s:
        assert s.scalars(select(Suppression)).all() == []  # nothing keeps the address
    again = client.post(path, data={"csrf_token": csrf(client)})
    assert again.status_code == 404  # the link names nobody now


def test_after_deleting_old_links_do_nothing_and_the_address_may_come_back(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    ada = reader_with_history(web_settings, "ada@example.org", "Ada's paper")
    with db.session_scope(web_settings) as s:
        paper_id = s.scalars(select(DeliveryItem.paper_id)).first()
    old = {purpose: tokens.make_token(web_settings, purpose, ada)
           for purpose in (Purpose.PREFERENCES, Purpose.UNSUBSCRIBE, Purpose.FEEDBACK)}
    path = preferences_path(web_settings, ada) + "/delete"
    client.post(path, data={"csrf_token": csrf(client, path)})
    # The same address subscribes again: a new row, which no old link may touch.
    subscribe(client, email="ada@example.org", topics="diffusion models")
    [confirmation] = smtp_server.messages
    assert confirmation["To"] == "ada@example.org"
    with db.session_scope(web_settings) as s:
        newcomer = find_subscriber(s, "ada@example.org")
        assert newcomer is not None and newcomer.status is SubscriberStatus.PENDING
        new_id = newcomer.id
    assert client.get(f"/preferences/{old[Purpose.PREFERENCES]}").status_code == 404
    assert client.get(f"/preferences/{old[Purpose.PREFERENCES]}/data").status_code == 404
    assert client.post(f"/preferences/{old[Purpose.PREFERENCES]}", data={
        "csrf_token": csrf(client), "topics": "changed"}).status_code == 404
    assert client.post(f"/unsubscribe/{old[Purpose.UNSUBSCRIBE]}",
                       data={"List-Unsubscribe": "One-Click"}).status_code == 404
    vote = f"/feedback/{old[Purpose.FEEDBACK]}/{paper_id}/more"
    assert client.post(vote, data={"csrf_token": csrf(client)}).status_code == 404
    opened = client.get(f"/feedback/{old[Purpose.FEEDBACK]}/{paper_id}/open")
    assert opened.status_code == 302  # to the paper itself, on its source's host
    with db.session_scope(web_settings) as s:
        newcomer = s.get(Subscriber, new_id)
        assert newcomer is not None and newcomer.status is SubscriberStatus.PENDING
        assert newcomer.profile.topics == "diffusion models"
        assert s.scalars(select(PaperFeedback)).all() == []  # the old click counted nothing


def test_a_bounced_reader_who_deletes_stays_unmailable(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    gone = add(web_settings, "gone@example.org", status=SubscriberStatus.BOUNCED)
    with db.session_scope(web_settings) as s:
        s.add(WebhookEvent(provider="generic", event_id="e1", kind="bounce",
                           address="Gone@example.org"))
    path = preferences_path(web_settings, gone) + "/delete"
    done = client.post(path, data={"csrf_token": csrf(client, path)})
    assert "stays on our do-not-mail list" in main_text(done.get_data(as_text=True))
    with db.session_scope(web_settings) as s:
        assert find_subscriber(s, "gone@example.org") is None
        assert is_suppressed(s, "gone@example.org")
        [event] = s.scalars(select(WebhookEvent)).all()
        assert event.address is None  # the replay ledger stays, without the address
    subscribe(client, email="gone@example.org")
    assert notices.wait_for_background_sends()
    assert smtp_server.messages == []


def test_a_reader_who_did_not_choose_click_tracking_is_never_counted(
    client: FlaskClient, web_settings: Settings
) -> None:
    ada = reader_with_history(web_settings, "ada@example.org", "Ada's paper")
    with db.session_scope(web_settings) as s:
        paper_id = s.scalars(select(DeliveryItem.paper_id)).one()
        s.execute(delete(PaperFeedback))

    def clicks() -> int:
        with db.session_scope(web_settings) as s:
            return len(s.scalars(select(PaperFeedback)).all())

    # A counting link from a digest sent before they chose: still leads to the paper.
    link = f"/feedback/{tokens.make_token(web_settings, Purpose.FEEDBACK, ada)}/{paper_id}/open"
    assert client.get(link).status_code == 302 and clicks() == 0
    path = preferences_path(web_settings, ada)
    client.post(path, data={"csrf_token": csrf(client, path), "topics": "LoRA",
                            "click_tracking": "on"})
    assert client.get(link).status_code == 302 and clicks() == 1


def test_words_to_exclude_and_the_fallback_do_not_restart_the_learning(
    client: FlaskClient, web_settings: Settings
) -> None:
    """Feedback counts from the last change of topics (feedback.py, retention.py): other
    choices of the profile must not move that date."""
    ada = add(web_settings, "ada@example.org")

    def topics_changed_at() -> datetime:
        with db.session_scope(web_settings) as s:
            return s.get(TopicProfile, ada.id).updated_at  # type: ignore[union-attr]

    started = topics_changed_at()
    path = preferences_path(web_settings, ada)
    form = {"csrf_token": csrf(client, path), "topics": "LoRA", "exclude": "medical",
            "trending_fallback": "on"}
    assert client.post(path, data=form).status_code == 303
    assert stored_choices(web_settings, "ada@example.org")[:2] == ("medical", True)
    assert topics_changed_at() == started
    client.post(path, data={**form, "topics": "diffusion models"})
    assert topics_changed_at() > started


def test_a_length_left_to_the_default_follows_the_cadence(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    """The subscribe form's papers default is "10, or 20 weekly" (DEFAULT_PAPERS_PER_DIGEST,
    WEEKLY_PAPERS_PER_DIGEST) until the visitor picks a number: no script needed."""
    html = client.get("/").get_data(as_text=True)
    assert '<option value="" selected>10, or 20 weekly</option>' in html
    readers = {"weekly@example.org": ("weekly", ""), "daily@example.org": ("daily", ""),
               "chosen@example.org": ("weekly", "5")}
    for email, (cadence, papers) in readers.items():
        subscribe(client, email=email, cadence=cadence, papers_per_digest=papers)
    for message in smtp_server.messages:
        path = link_in(message, "confirm")
        client.post(path, data={"csrf_token": csrf(client, path)})
    with db.session_scope(web_settings) as s:
        lengths = {email: find_subscriber(s, email).papers_per_digest  # type: ignore[union-attr]
                   for email in readers}
    assert lengths == {"weekly@example.org": 20, "daily@example.org": 10,
                       "chosen@example.org": 5}
    # A stored length is shown as it is on the preferences page: no default option there.
    with db.session_scope(web_settings) as s:
        weekly = find_subscriber(s, "weekly@example.org")
        assert weekly is not None
        owner = LinkRef(weekly.id, weekly.link_key)
    page = client.get(preferences_path(web_settings, owner)).get_data(as_text=True)
    assert '<option value="20" selected>20</option>' in page and "or 20 weekly" not in page
