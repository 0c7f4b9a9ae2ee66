"""Reading on the web, through the real app on SQLite and PostgreSQL with a real SMTP server:
a digest's "View in browser" page (built from the ledger, for its reader only), the
preferences page's list of past digests, click tracking as the reader's choice, and the
first digest sent right after confirming, once a day whatever the schedule does next."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage
from html import unescape

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from digest import db, first_digest, notices, pipeline, tokens
from digest.models import Cadence, Delivery, DeliveryItem, DeliveryStatus, Paper, Subscriber
from digest.notices import LinkRef
from digest.pipeline import run_day
from digest.render.filters import long_date
from digest.settings import Settings
from digest.tokens import Purpose
from digest.web import create_app

from .conftest import lexical_only
from .factories import make_paper, make_subscriber
from .smtp_server import SMTPServer

SITE = "https://digest.test"
LORA = "We study low-rank adaptation (LoRA) for fine-tuning large language models."


@pytest.fixture
def web_settings(settings: Settings, smtp_server: SMTPServer, redis_url: str) -> Settings:
    return replace(
        lexical_only(settings),
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_retry_attempts=1,
        redis_url=redis_url,
        min_relevance=0.05,
    )


@pytest.fixture
def client(web_settings: Settings) -> Iterator[FlaskClient]:
    with create_app(web_settings).test_client() as c:
        yield c


@pytest.fixture(autouse=True)
def sends_done() -> Iterator[None]:
    """No email of this test may still be on its way when the next test's database starts."""
    yield
    assert first_digest.wait_for_first_digests(60), "the first-digest sender is stuck"
    assert notices.wait_for_background_sends(30), "the sign-up sender is stuck"


def reader(settings: Settings, email: str, tracking: bool = False, papers: int = 5) -> LinkRef:
    with db.session_scope(settings) as s:
        subscriber = make_subscriber(
            s, email=email, topics="LoRA, low-rank adaptation", papers_per_digest=papers
        )
        subscriber.click_tracking = tracking
        return LinkRef(subscriber.id, subscriber.link_key)


def lora_papers(settings: Settings, count: int) -> list[str]:
    """New papers on the readers' topics; their titles."""
    with db.session_scope(settings) as s:
        return [
            make_paper(s, title=f"LoRA adapters, part {time.monotonic_ns()}", abstract=LORA).title
            for _ in range(count)
        ]


def today() -> date:
    return datetime.now(timezone.utc).date()


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def hrefs(html: str, label: str) -> list[str]:
    """The targets of the links whose visible text is `label`."""
    found = re.findall(r'<a href="([^"]+)"[^>]*>(.*?)</a>', html, flags=re.S)
    return [
        unescape(href)
        for href, text in found
        if " ".join(unescape(re.sub(r"<[^>]+>", "", text)).split()) == label
    ]


def main_text(html: str) -> str:
    main = html.split("<main", 1)[1].split("</main>", 1)[0]
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", main)).split())


def local(url: str) -> str:
    assert url.startswith(SITE), url
    return url.removeprefix(SITE)


def digest_to(smtp_server: SMTPServer, email: str) -> EmailMessage:
    [message] = [
        m for m in smtp_server.by_recipient().get(email, []) if m["X-Digest-Kind"] == "digest"
    ]
    return message


def ledger_titles(settings: Settings, subscriber_id: int, day: date) -> list[str]:
    with db.session_scope(settings) as s:
        return list(
            s.scalars(
                select(Paper.title)
                .join(DeliveryItem, DeliveryItem.paper_id == Paper.id)
                .join(Delivery, Delivery.id == DeliveryItem.delivery_id)
                .where(Delivery.subscriber_id == subscriber_id, Delivery.digest_date == day)
                .order_by(DeliveryItem.rank)
            )
        )


# --- "View in browser" ------------------------------------------------------------------


def test_view_in_browser_shows_that_readers_digest_built_from_the_ledger(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    ada, bob = reader(web_settings, "ada@example.org"), reader(web_settings, "bob@example.org")
    lora_papers(web_settings, 3)
    assert sorted(run_day(web_settings, today()).sent) == ["ada@example.org", "bob@example.org"]
    message = digest_to(smtp_server, "ada@example.org")
    [url] = hrefs(html_of(message), "View in browser")
    assert f"View in browser: {url}\n" in text_of(message)  # the same link in the text part
    page = client.get(local(url))
    assert page.status_code == 200
    text = main_text(page.get_data(as_text=True))
    titles = ledger_titles(web_settings, ada.id, today())
    assert len(titles) == 3
    assert [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    assert f"Your digest · {long_date(today())}" in text and "3 papers for your topics" in text
    assert "Why: matches" in text
    html = page.get_data(as_text=True)
    assert 'href="https://arxiv.org/abs/' in html  # ada chose no tracking: direct links
    assert not re.search(r"/\d+/(open|pdf)\"", html) and "/more" in html and "/less" in html
    assert "Content-Security-Policy" in page.headers
    # Bob's link shows Bob's digest, signed for him; nothing in Ada's link names Bob's.
    bob_url = hrefs(html_of(digest_to(smtp_server, "bob@example.org")), "View in browser")[0]
    assert bob_url != url
    bob_page = main_text(client.get(local(bob_url)).get_data(as_text=True))
    assert all(t in bob_page for t in ledger_titles(web_settings, bob.id, today()))


def test_a_weekly_digests_page_speaks_of_the_week(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    with db.session_scope(web_settings) as s:
        for email, topics in (("ada@example.org", "LoRA"), ("cy@example.org", "protein folding")):
            sub = make_subscriber(s, email=email, topics=topics, trending_fallback=True)
            sub.cadence, sub.send_weekday = Cadence.WEEKLY, today().weekday()
    lora_papers(web_settings, 2)
    assert sorted(run_day(web_settings, today()).sent) == ["ada@example.org", "cy@example.org"]
    week_to = f"the week to {long_date(today())}"

    pages = {}
    for email in ("ada@example.org", "cy@example.org"):
        [url] = hrefs(html_of(digest_to(smtp_server, email)), "View in browser")
        html = client.get(local(url)).get_data(as_text=True)
        pages[email] = main_text(html)
        assert f"<title>Your weekly digest, {week_to}" in html
        assert "that day" not in pages[email] and "the day's" not in pages[email]

    assert f"Your weekly digest · {week_to}" in pages["ada@example.org"]
    assert "2 papers for your topics" in pages["ada@example.org"]
    # Nothing matched Cy's topics all week: the week's trending papers, as Cy asked.
    assert "2 papers trending that week" in pages["cy@example.org"]
    # The preferences page lists it as that week's digest.
    with db.session_scope(web_settings) as s:
        ada = s.scalars(select(Subscriber).where(Subscriber.email == "ada@example.org")).one()
        path = "/preferences/" + tokens.make_token(web_settings, Purpose.PREFERENCES, ada)
    listed = main_text(client.get(path).get_data(as_text=True))
    assert f"The week to {long_date(today())} · 2 papers" in listed
    assert ("No new paper matched your topics that week (protein folding), so these were the "
            "week's trending papers, as you asked.") in pages["cy@example.org"]


def test_a_forged_altered_or_foreign_archive_link_shows_nothing(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    ada = reader(web_settings, "ada@example.org")
    lora_papers(web_settings, 2)
    run_day(web_settings, today())
    token = local(tokens.archive_link(web_settings, ada, today())).removeprefix("/archive/")
    assert client.get(f"/archive/{token}").status_code == 200
    _, stamp, mac = token.split(".")
    other_day = tokens.make_archive_token(web_settings, ada, today() - timedelta(days=1))
    refused = {
        "forged": token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "another date's signature": f"{other_day.split('.')[0]}.{stamp}.{mac}",
        "another purpose": tokens.make_token(web_settings, Purpose.PREFERENCES, ada),
        "garbage": "not-a-token",
    }
    for label, bad in refused.items():
        response = client.get(f"/archive/{bad}")
        assert response.status_code == 400, label
        assert "not valid" in main_text(response.get_data(as_text=True))
    # Genuine, but no digest that day; a reader who is gone (another link key): 404.
    assert client.get(f"/archive/{other_day}").status_code == 404
    stranger = tokens.make_archive_token(web_settings, LinkRef(ada.id, "x" * 22), today())
    assert client.get(f"/archive/{stranger}").status_code == 404
    # Older than ARCHIVE_LINK_DAYS: the date, or the link itself.
    old_day = today() - timedelta(days=web_settings.archive_link_days + 1)
    old = tokens.make_archive_token(web_settings, ada, old_day)
    assert client.get(f"/archive/{old}").status_code == 410
    signed_long_ago = time.time() - (web_settings.archive_link_days + 2) * 86400
    with pytest.MonkeyPatch.context() as m:
        m.setattr(time, "time", lambda: signed_long_ago)
        expired = tokens.make_archive_token(web_settings, ada, today())
    response = client.get(f"/archive/{expired}")
    assert response.status_code == 410
    assert f"{web_settings.archive_link_days} days" in main_text(response.get_data(as_text=True))


def test_the_preferences_page_lists_past_digests_with_their_links(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    ada = reader(web_settings, "ada@example.org")
    path = "/preferences/" + tokens.make_token(web_settings, Purpose.PREFERENCES, ada)
    assert "None in the last 60 days yet" in main_text(client.get(path).get_data(as_text=True))
    lora_papers(web_settings, 2)
    run_day(web_settings, today())
    html = client.get(path).get_data(as_text=True)
    assert f"{long_date(today())} · 2 papers" in main_text(html)
    [url] = hrefs(html, long_date(today()))
    page = client.get(local(url))
    assert page.status_code == 200
    for title in ledger_titles(web_settings, ada.id, today()):
        assert title in main_text(page.get_data(as_text=True))


# --- click tracking, the reader's choice -------------------------------------------------


def test_turning_click_tracking_off_makes_the_next_digests_links_direct(
    client: FlaskClient, web_settings: Settings, smtp_server: SMTPServer
) -> None:
    ada = reader(web_settings, "ada@example.org", tracking=True)
    lora_papers(web_settings, 2)
    run_day(web_settings, today())
    first = digest_to(smtp_server, "ada@example.org")
    tracked = [href for href in hrefs(html_of(first), "Paper page →")]
    assert len(tracked) == 2 and all(re.search(r"/feedback/[^/]+/\d+/open$", h) for h in tracked)
    assert "notes the papers you open" in " ".join(text_of(first).split())
    assert client.get(local(tracked[0])).status_code == 302  # the click is recorded, then on
    with db.session_scope(web_settings) as s:  # the preferences page's checkbox, unticked
        subscriber = s.get(Subscriber, ada.id)
        assert subscriber is not None
        subscriber.click_tracking = False
    smtp_server.received.clear()
    lora_papers(web_settings, 2)
    assert run_day(web_settings, today() + timedelta(days=1)).sent == ["ada@example.org"]
    second = digest_to(smtp_server, "ada@example.org")
    html, text = html_of(second), text_of(second)
    direct = hrefs(html, "Paper page →")
    assert len(direct) == 2 and all(h.startswith("https://arxiv.org/abs/") for h in direct)
    assert not re.search(r"/feedback/[^/\s\"]+/\d+/(open|pdf)", html + text)
    assert all(f"Paper page: {h}\n" in text for h in direct)
    assert "we note nothing when you open one" in " ".join(text.split())
    assert hrefs(html, "Your privacy choices")[0].startswith(f"{SITE}/preferences/")
    # "More like this" still works: the page, then the vote.
    more = local(hrefs(html, "More like this")[0])
    assert client.get(more).status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(more).get_data(as_text=True))
    assert token is not None
    assert client.post(more, data={"csrf_token": token.group(1)}).status_code == 200


# --- a first digest right away ----------------------------------------------------------


def confirm_by_mail(client: FlaskClient, smtp_server: SMTPServer) -> str:
    """Subscribe through the form, follow the emailed link, press Confirm; the answer page."""
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    client.post(
        "/subscribe",
        data={
            "csrf_token": csrf.group(1),
            "email": "ada@example.org",
            "topics": "LoRA, low-rank adaptation",
            "time_zone": "UTC",
            "send_hour": "23",
            "papers_per_digest": "5",
        },
    )
    assert notices.wait_for_background_sends()
    [confirmation] = smtp_server.messages
    path = local(re.search(rf"{SITE}/confirm/\S+", text_of(confirmation)).group(0))  # type: ignore[union-attr]
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert token is not None
    return client.post(path, data={"csrf_token": token.group(1)}).get_data(as_text=True)


def digests_sent(settings: Settings) -> list[tuple[str, date, DeliveryStatus]]:
    with db.session_scope(settings) as s:
        return [
            (email, day, status)
            for email, day, status in s.execute(
                select(Subscriber.email, Delivery.digest_date, Delivery.status).join(
                    Subscriber, Subscriber.id == Delivery.subscriber_id
                )
            )
        ]


def test_first_digest_send_mails_todays_digest_at_once_and_the_schedule_adds_none(
    web_settings: Settings, smtp_server: SMTPServer
) -> None:
    settings = replace(web_settings, first_digest="send")
    lora_papers(settings, 3)
    with create_app(settings).test_client() as client:
        page = confirm_by_mail(client, smtp_server)
    assert "Today's digest is on its way" in main_text(page)
    assert first_digest.wait_for_first_digests(60)
    digest = digest_to(smtp_server, "ada@example.org")
    assert "3 new papers" in digest["Subject"]
    assert digests_sent(settings) == [("ada@example.org", today(), DeliveryStatus.SENT)]
    # The scheduled run that day (her hour, 23:00, or a manual run) sends no second one.
    later = datetime.now(timezone.utc).replace(hour=23, minute=30)
    assert list(pipeline.plan_due_batches(settings, later)) == []
    assert run_day(settings, today()).sent == []
    assert len([m for m in smtp_server.messages if m["X-Digest-Kind"] == "digest"]) == 1


def test_first_digest_offer_is_a_button_that_sends_once(
    web_settings: Settings, smtp_server: SMTPServer
) -> None:
    lora_papers(web_settings, 2)
    with create_app(web_settings).test_client() as client:  # FIRST_DIGEST=offer, the default
        page = confirm_by_mail(client, smtp_server)
        assert "Send me today's digest now" in main_text(page)
        assert digests_sent(web_settings) == []  # offered, not sent
        action = re.search(r'<form method="post" action="(/first-digest/[^"]+)"', page)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert action is not None and token is not None
        assert client.post(action.group(1), data={}).status_code == 400  # CSRF
        sent = client.post(action.group(1), data={"csrf_token": token.group(1)})
        assert "Today's digest is on its way" in main_text(sent.get_data(as_text=True))
        again = client.post(action.group(1), data={"csrf_token": token.group(1)})
        assert "already yours" in main_text(again.get_data(as_text=True))
    assert first_digest.wait_for_first_digests(60)
    assert digest_to(smtp_server, "ada@example.org")["X-Digest-Kind"] == "digest"
    assert digests_sent(web_settings) == [("ada@example.org", today(), DeliveryStatus.SENT)]


def test_first_digest_off_offers_nothing(web_settings: Settings, smtp_server: SMTPServer) -> None:
    settings = replace(web_settings, first_digest="off")
    with create_app(settings).test_client() as client:
        page = confirm_by_mail(client, smtp_server)
    assert "You're subscribed" in main_text(page)
    assert "today's digest" not in main_text(page).lower()
    assert digests_sent(settings) == []
