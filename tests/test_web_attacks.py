"""The web side under attack and faults, on SQLite and PostgreSQL: old links and new people,
strangers' choices and words, timing, Redis down, numbers out of range, open redirects.

Each test is the regression test of one class of problem from the issue "Trustworthy under
attack and faults"; tests/test_web.py has the ordinary journeys.
"""

from __future__ import annotations

import re
import socket
import statistics
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from digest import db, notices, tokens
from digest.ingest import load_sample_papers
from digest.models import (
    DeliveryItem,
    PaperFeedback,
    SignupRequest,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
    TopicProfile,
)
from digest.notices import LinkRef
from digest.pipeline import run_day
from digest.settings import Settings
from digest.subscribers import add_subscriber, find_subscriber, remove_subscriber
from digest.suppressions import suppress_address
from digest.tokens import Purpose
from digest.web import create_app

from .conftest import lexical_only
from .factories import make_delivery, make_paper, make_subscriber
from .smtp_server import SMTPServer
from .test_web import FORM, csrf, main_text

TODAY = datetime.now(timezone.utc).date()


@pytest.fixture
def web_settings(settings: Settings, smtp_server: SMTPServer, redis_url: str) -> Settings:
    return replace(lexical_only(settings), mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, smtp_retry_attempts=1, redis_url=redis_url,
                   min_relevance=0.05)


# The app on the module's `web_settings`, and no email still on its way after a test
# (conftest.py).
pytestmark = pytest.mark.usefixtures("background_sends_done")


def post_form(client: FlaskClient, remote: str = "127.0.0.1", **fields: str) -> int:
    response = client.post("/subscribe", data={"csrf_token": csrf(client), **FORM, **fields},
                           environ_base={"REMOTE_ADDR": remote})
    return response.status_code


def sent(server: SMTPServer) -> list[EmailMessage]:
    assert notices.wait_for_background_sends(), "the background sender is stuck"
    return server.messages


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def path_in(message: EmailMessage, purpose: str) -> str:
    match = re.search(rf"https://digest\.test(/{purpose}/[^\s\"<>]+)", text_of(message))
    assert match, f"no /{purpose}/ link in the email"
    return match.group(1)


def one_click(settings: Settings, path: str) -> int:
    with create_app(settings).test_client(use_cookies=False) as provider:
        return provider.post(path, data={"List-Unsubscribe": "One-Click"}).status_code


def row(settings: Settings, email: str) -> Subscriber:
    with db.session_scope(settings) as s:
        subscriber = find_subscriber(s, email)
        assert subscriber is not None
        _ = subscriber.profile
        return subscriber


# --- 1. an old link never acts on a new person ---------------------------------------------


def test_a_removed_subscribers_links_do_nothing_for_the_next_one(
    web_settings: Settings, smtp_server: SMTPServer, client: FlaskClient
) -> None:
    """The issue's repro: two subscribers, a day sent, the newest removed, another added."""
    with db.session_scope(web_settings) as s:
        load_sample_papers(s)
        make_subscriber(s, email="ada@example.org", topics="LoRA, low-rank adaptation")
        old_reader = make_subscriber(s, email="old@example.org",
                                     topics="LoRA, low-rank adaptation")
        old_reader.click_tracking = True  # so that their paper links are the counting ones
    assert len(run_day(web_settings, TODAY).sent) == 2
    [old_digest] = smtp_server.by_recipient()["old@example.org"]
    old = {p: path_in(old_digest, p) for p in ("unsubscribe", "preferences")}
    old_paper = re.search(r'href="https://digest\.test(/feedback/[^"]+/open)"',
                          html_of(old_digest)).group(1)  # type: ignore[union-attr]
    old_archive = re.search(r'href="https://digest\.test(/archive/[^"]+)"',
                            html_of(old_digest)).group(1)  # type: ignore[union-attr]
    assert client.get(old_archive).status_code == 200
    with db.session_scope(web_settings) as s:
        remove_subscriber(s, "old@example.org")
        add_subscriber(s, "new@example.org", "secret topic of the newcomer")
    # Whatever id the newcomer got, the old links are not theirs.
    assert one_click(web_settings, old["unsubscribe"]) == 404
    page = client.get(old["preferences"])
    assert page.status_code == 404
    assert "new@example.org" not in page.get_data(as_text=True)
    assert "secret topic" not in page.get_data(as_text=True)
    assert client.get(old_paper).status_code in (200, 302)
    assert client.get(old_archive).status_code == 404  # the old digest, nobody's now
    assert row(web_settings, "new@example.org").status is SubscriberStatus.ACTIVE
    with db.session_scope(web_settings) as s:
        assert s.scalar(select(func.count()).select_from(PaperFeedback)) == 0


def test_a_link_made_for_a_row_does_nothing_for_another_row_with_its_id(
    web_settings: Settings, client: FlaskClient
) -> None:
    """What SQLite did before AUTOINCREMENT (and what restoring a backup can do): the next
    row takes the deleted one's id. Every purpose of the old row's links must fail."""
    with db.session_scope(web_settings) as s:
        old = make_subscriber(s, email="old@example.org")
        old_ref = LinkRef(old.id, old.link_key)
        paper = make_paper(s)
    links = {p: f"/{p.value}/{tokens.make_token(web_settings, p, old_ref)}"
             for p in (Purpose.UNSUBSCRIBE, Purpose.PREFERENCES, Purpose.FEEDBACK)}
    with db.session_scope(web_settings) as s:
        s.delete(s.get(Subscriber, old_ref.id))
    with db.session_scope(web_settings) as s:
        newcomer = Subscriber(id=old_ref.id, email="new@example.org",  # the reused id
                              status=SubscriberStatus.ACTIVE, time_zone="UTC", send_hour=7,
                              papers_per_digest=5)
        newcomer.profile = TopicProfile(topics="the newcomer's topics")
        s.add(newcomer)
    with db.session_scope(web_settings) as s:
        assert s.get(Subscriber, old_ref.id).email == "new@example.org"  # type: ignore[union-attr]
    assert one_click(web_settings, links[Purpose.UNSUBSCRIBE]) == 404
    for purpose in (Purpose.UNSUBSCRIBE, Purpose.PREFERENCES):
        page = client.get(links[purpose])
        assert page.status_code == 404 and "new@example.org" not in page.get_data(as_text=True)
    assert client.get(f"{links[Purpose.FEEDBACK]}/{paper.id}/more").status_code == 404
    assert row(web_settings, "new@example.org").status is SubscriberStatus.ACTIVE


def legacy_token(settings: Settings, purpose: Purpose, subscriber_id: int, at: float,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    """A link as made before link keys: the bare id, signed at `at`."""
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: at)
        return URLSafeTimedSerializer(settings.signing_key(),
                                      salt=f"paper-digest:{purpose.value}").dumps(subscriber_id)


def test_links_sent_before_link_keys_still_work_for_their_reader_only(
    web_settings: Settings, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unsubscribe link in a year-old email must still work. A legacy token counts only
    if it was signed after the row it names was created: the removed subscriber's link
    was signed before the newcomer who took the id existed."""
    now = datetime.now(timezone.utc)
    with db.session_scope(web_settings) as s:
        reader = make_subscriber(s, email="reader@example.org")
        reader.created_at = now - timedelta(days=400)
        newcomer = make_subscriber(s, email="newcomer@example.org")
        newcomer.created_at = now - timedelta(days=10)
        reader_id, newcomer_id = reader.id, newcomer.id

    def signed(purpose: Purpose, subscriber_id: int, days_ago: float) -> str:
        at = (now - timedelta(days=days_ago)).timestamp()
        return legacy_token(web_settings, purpose, subscriber_id, at, monkeypatch)

    theirs = signed(Purpose.UNSUBSCRIBE, reader_id, 399)
    # The links of the subscriber who had the newcomer's id before them, signed back then.
    removed_ones = signed(Purpose.UNSUBSCRIBE, newcomer_id, 30)
    removed_prefs = signed(Purpose.PREFERENCES, newcomer_id, 20)
    assert one_click(web_settings, f"/unsubscribe/{removed_ones}") == 404
    assert client.get(f"/preferences/{removed_prefs}").status_code == 404
    assert row(web_settings, "newcomer@example.org").status is SubscriberStatus.ACTIVE
    assert one_click(web_settings, f"/unsubscribe/{theirs}") == 200
    assert row(web_settings, "reader@example.org").status is SubscriberStatus.UNSUBSCRIBED
    # An old confirmation link names no sign-up request: it has expired.
    old_confirm = legacy_token(web_settings, Purpose.CONFIRM, newcomer_id, time.time(),
                               monkeypatch)
    assert client.get(f"/confirm/{old_confirm}").status_code == 410


# --- 2. a visitor's choices never rewrite a stored profile -----------------------------------


def test_the_form_rewrites_no_stored_profile_until_its_owner_confirms(
    web_settings: Settings, smtp_server: SMTPServer, client: FlaskClient
) -> None:
    with db.session_scope(web_settings) as s:
        ada = make_subscriber(s, email="ada@example.org", topics="diffusion models",
                              time_zone="Asia/Tokyo", send_hour=6, papers_per_digest=3)
        ada_ref = LinkRef(ada.id, ada.link_key)
        make_subscriber(s, email="pending@example.org", topics="graph networks",
                        status=SubscriberStatus.PENDING)
    unsubscribe = f"/unsubscribe/{tokens.make_token(web_settings, Purpose.UNSUBSCRIBE, ada_ref)}"
    client.post(unsubscribe, data={"csrf_token": csrf(client, unsubscribe)})
    stranger = {"topics": "pills cheap pills", "time_zone": "Pacific/Kiritimati",
                "send_hour": "3", "papers_per_digest": "50"}
    for email in ("ada@example.org", "pending@example.org"):
        assert post_form(client, email=email, **stranger) == 200
    sent(smtp_server)
    mine = ("diffusion models", "Asia/Tokyo", 6, 3)
    ada_now = row(web_settings, "ada@example.org")
    assert (ada_now.profile.topics, ada_now.time_zone, ada_now.send_hour,
            ada_now.papers_per_digest) == mine
    assert row(web_settings, "pending@example.org").profile.topics == "graph networks"
    # "Resubscribe" brings Ada back with her own choices, not the stranger's.
    back = client.post(unsubscribe + "/resubscribe", data={"csrf_token": csrf(client)})
    assert back.status_code == 200
    ada_now = row(web_settings, "ada@example.org")
    assert ada_now.status is SubscriberStatus.ACTIVE
    assert (ada_now.profile.topics, ada_now.time_zone, ada_now.send_hour,
            ada_now.papers_per_digest) == mine
    # The pending address's owner sees the stranger's choices before confirming them.
    [email] = smtp_server.by_recipient()["pending@example.org"]
    text = " ".join(text_of(email).split())
    assert "pills cheap pills" in text and "03:00 (Pacific/Kiritimati)" in text
    assert "up to 50 per digest" in text
    confirm = path_in(email, "confirm")
    page = main_text(client.get(confirm).get_data(as_text=True))
    assert "pills cheap pills" in page and "03:00" in page
    client.post(confirm, data={"csrf_token": csrf(client, confirm)})
    pending = row(web_settings, "pending@example.org")
    assert pending.status is SubscriberStatus.ACTIVE
    assert (pending.profile.topics, pending.send_hour) == ("pills cheap pills", 3)


# --- 3. strangers' words in our emails -------------------------------------------------------


@pytest.mark.parametrize("topics", [
    "Buy cheap pills at https://spam.example", "LoRA, spam.example", "mail me@spam.example",
])
def test_topics_with_addresses_are_refused_at_the_form(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer, topics: str
) -> None:
    response = client.post("/subscribe", data={"csrf_token": csrf(client), **FORM,
                                               "topics": topics})
    assert response.status_code == 400
    error = re.search(r'<p class="field-error" id="topics-error">(.*?)</p>',
                      response.get_data(as_text=True), re.S)
    assert error and "cannot contain web or email addresses" in error.group(1)
    assert sent(smtp_server) == []
    with db.session_scope(web_settings) as s:
        assert s.scalar(select(func.count()).select_from(SignupRequest)) == 0


def test_a_visitors_words_are_shown_plainly_short_and_never_as_a_link(
    client: FlaskClient, smtp_server: SMTPServer
) -> None:
    words = "GPT-4.5 Llama 3.1 " + " ".join(f"word{i}" for i in range(250))
    assert post_form(client, topics=words) == 200
    [message] = sent(smtp_server)
    text, html = text_of(message), html_of(message)
    topics_line = text.split("Topics: ", 1)[1].split("Every day at")[0]
    assert len(" ".join(topics_line.split())) <= 201 and topics_line.strip().endswith("…")
    assert "GPT-4\u20245" in text and "GPT-4.5" not in text  # defanged
    assert "word249" not in html and "<strong>GPT" not in html
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert all(h.startswith("https://digest.test") for h in hrefs), hrefs
    assert "GPT" not in (message["Subject"] or "")


def test_the_address_limit_holds_when_redis_is_down(
    web_settings: Settings, smtp_server: SMTPServer
) -> None:
    down = replace(web_settings, redis_url=f"redis://127.0.0.1:{closed_port()}/0",
                   subscribe_address_limit_per_day=2, confirm_resend_minutes=0)
    with create_app(down).test_client() as c:
        codes = [post_form(c, remote=f"198.51.100.{i}") for i in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    assert len(sent(smtp_server)) == 2


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 4. the answer and its timing tell nothing; SMTP never holds the database ---------------


def test_subscribe_takes_the_same_time_whatever_the_address(
    web_settings: Settings, smtp_server: SMTPServer
) -> None:
    """A slow mail server made a suppressed address answer faster than a new one."""
    smtp_server.data_delay = 0.2
    unlimited = replace(web_settings, subscribe_rate_limit_per_hour=0,
                        subscribe_address_limit_per_day=0, confirm_resend_minutes=0)
    with db.session_scope(unlimited) as s:
        suppress_address(s, "gone@example.org", SuppressionReason.BOUNCED, "test")
        make_subscriber(s, email="active@example.org")
    timings: dict[str, list[float]] = {"new": [], "suppressed": [], "active": []}
    pages: dict[str, set[str]] = {kind: set() for kind in timings}
    with create_app(unlimited).test_client() as c:
        token = csrf(c)
        for i in range(10):
            for kind, email in (("new", f"new{i}@example.org"), ("suppressed", "gone@example.org"),
                                ("active", "active@example.org")):
                started = time.perf_counter()
                response = c.post("/subscribe", data={"csrf_token": token, **FORM,
                                                      "email": email})
                timings[kind].append(time.perf_counter() - started)
                assert response.status_code == 200
                pages[kind].add(main_text(response.get_data(as_text=True)).replace(email, "@"))
    medians = {kind: statistics.median(t) for kind, t in timings.items()}
    assert max(medians.values()) - min(medians.values()) < 0.1, medians
    assert max(medians.values()) < smtp_server.data_delay, medians  # nobody waited on SMTP
    assert len(set().union(*pages.values())) == 1  # the same page for every outcome
    assert notices.wait_for_background_sends(30)
    inbox = smtp_server.by_recipient()
    assert "gone@example.org" not in inbox and len(inbox["new0@example.org"]) == 1
    assert "already subscribed" in inbox["active@example.org"][0]["Subject"]


def test_no_database_connection_is_held_while_the_mail_server_answers(
    web_settings: Settings, smtp_server: SMTPServer, client: FlaskClient
) -> None:
    smtp_server.data_delay = 1.0
    pool = db.engine_for(web_settings.database_url).pool
    started = time.perf_counter()
    assert post_form(client) == 200
    assert time.perf_counter() - started < 0.5  # the request did not wait for the email
    deadline = time.monotonic() + 5
    while smtp_server.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # well inside the server's DATA delay
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    [message] = sent(smtp_server)  # it still arrives, at a real SMTP server
    assert message["To"] == "ada@example.org" and path_in(message, "confirm")
    with db.session_scope(web_settings) as s:
        request = s.scalars(select(SignupRequest)).one()
        assert request.emailed_at is not None and request.email_error is None


def test_a_mail_server_that_refuses_leaves_the_next_request_free_to_send(
    web_settings: Settings, smtp_server: SMTPServer, client: FlaskClient
) -> None:
    smtp_server.fail_next = ["554 5.7.1 not now"]
    assert post_form(client) == 200
    assert sent(smtp_server) == []
    assert post_form(client) == 200
    assert len(sent(smtp_server)) == 1
    with db.session_scope(web_settings) as s:
        errors = [r.email_error for r in s.scalars(select(SignupRequest).order_by(
            SignupRequest.id))]
    assert errors[0] and "554" in errors[0] and errors[1] is None


# --- 5. numbers from the URL, and where paper links may lead --------------------------------


def test_numbers_out_of_range_in_urls_are_4xx_not_500(
    web_settings: Settings, client: FlaskClient
) -> None:
    with db.session_scope(web_settings) as s:
        reader = make_subscriber(s)
        token = tokens.make_token(web_settings, Purpose.FEEDBACK, reader)
        make_paper(s)
    for target in ("open", "pdf", "more", "less"):
        for paper_id in ("9" * 20, "2147483648", "-1", "1e3", "²"):
            assert client.get(f"/feedback/{token}/{paper_id}/{target}").status_code == 404
    assert client.post(f"/feedback/{token}/{'9' * 20}/more").status_code in (404, 405)
    assert client.get(f"/feedback/{token}/2147483647/open").status_code == 404  # no such paper
    for limit in ("²", "٣", "0", "-1", "1.5", "abc", "+3"):
        response = client.get("/preview", query_string={"topics": "LoRA", "limit": limit})
        assert response.status_code == 400, limit
        assert "limit must be a whole number" in response.get_json()["error"]
    for limit in ("99999", "9" * 5000):  # capped, not converted whole
        assert client.get("/preview", query_string={"topics": "LoRA", "limit": limit}
                          ).status_code == 200


def test_paper_links_lead_elsewhere_than_the_sources_hosts_only_for_their_reader(
    web_settings: Settings, client: FlaskClient
) -> None:
    """An Atom <link> can point anywhere; /feedback/<anything>/<id>/open must not become an
    open redirect from our address."""
    with db.session_scope(web_settings) as s:
        reader = make_subscriber(s, email="reader@example.org")
        reader.click_tracking = True  # so that following the link counts (test_web_privacy)
        other = make_subscriber(s, email="other@example.org")
        hostile = make_paper(s, title="A paper with a link to elsewhere")
        hostile.url = "https://evil.example/landing"
        tricky = make_paper(s)
        tricky.url = "https://arxiv.org@evil.example/"
        hf = make_paper(s, source="daily-papers")
        hf.url = "https://huggingface.co/papers/2611.00001"
        ids = (hostile.id, tricky.id, hf.id)
        reader_token = tokens.make_token(web_settings, Purpose.FEEDBACK, reader)
        other_token = tokens.make_token(web_settings, Purpose.FEEDBACK, other)
    with db.session_scope(web_settings) as s:  # the hostile paper was in the reader's digest
        delivery = make_delivery(s, s.get(Subscriber, reader.id), TODAY)  # type: ignore[arg-type]
        s.add(DeliveryItem(delivery_id=delivery.id, subscriber_id=reader.id, paper_id=ids[0],
                           rank=1, score=0.5, why=""))
    for token in ("not-a-token", other_token):
        for paper_id in ids[:2]:
            page = client.get(f"/feedback/{token}/{paper_id}/open")
            html = page.get_data(as_text=True)
            assert page.status_code == 200 and "Location" not in page.headers
            assert "This link leads to another site" in main_text(html)
            assert 'href="https://evil' not in html and "evil.example" in main_text(html)
    assert client.get(f"/feedback/x/{ids[2]}/open").location.startswith(
        "https://huggingface.co/papers/")
    followed = client.get(f"/feedback/{reader_token}/{ids[0]}/open")
    assert followed.status_code == 302 and followed.location == "https://evil.example/landing"
    with db.session_scope(web_settings) as s:
        assert s.scalar(select(func.count()).select_from(PaperFeedback)) == 1  # the reader's


# --- a restart or a backlog loses no sign-up email ----------------------------------------


def test_what_a_stopped_web_process_had_not_sent_is_sent_by_the_sweep(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sign-up requests are the queue: a process that stopped with a backlog (its
    threads never got to three requests; a fourth was claimed by a sender that died, a fifth
    by one still at work) loses nothing, and no email goes twice."""
    from sqlalchemy import update as sql_update

    from digest.models import SignupRequest

    monkeypatch.setattr(notices, "send_in_background", lambda settings, request_id: None)
    for n in range(5):
        assert post_form(client, email=f"reader{n}@example.org") == 200
    assert smtp_server.messages == []
    with db.session_scope(web_settings) as s:
        ids = sorted(s.scalars(select(SignupRequest.id)).all())
        now = datetime.now(timezone.utc)
        s.execute(sql_update(SignupRequest).where(SignupRequest.id == ids[3])
                  .values(claimed_until=now - timedelta(seconds=1)))  # its sender died
        s.execute(sql_update(SignupRequest).where(SignupRequest.id == ids[4])
                  .values(claimed_until=now + timedelta(seconds=60)))  # still at work
    assert notices.send_pending_signup_emails(web_settings) == 4
    assert sorted(str(m["To"]) for m in smtp_server.messages) == [
        f"reader{n}@example.org" for n in range(4)]
    assert notices.send_pending_signup_emails(web_settings) == 0  # nothing twice


def test_two_senders_never_take_the_same_request(
    client: FlaskClient, web_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notices, "send_in_background", lambda settings, request_id: None)
    for n in range(2):
        post_form(client, email=f"reader{n}@example.org")
    first = notices.claim_signup_request(web_settings)
    second = notices.claim_signup_request(web_settings, preferred=first)
    assert first is not None and second is not None and first != second
    assert notices.claim_signup_request(web_settings) is None


def test_the_beat_sends_what_web_processes_left_every_minute() -> None:
    from workers.app import beat_schedule

    entry = beat_schedule(Settings())["send-signup-emails"]
    assert entry["task"] == "workers.tasks.send_signup_emails"
    assert entry["schedule"] == timedelta(minutes=1)
