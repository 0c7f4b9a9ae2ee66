"""The subscriber's whole journey in a real browser (Debian's chromium, driven by Playwright):
subscribe, confirm from the email, receive a digest, change preferences from its link,
receive the next digest with the new topics, unsubscribe with the button.

The app runs in a thread on loopback; mail goes to a real SMTP server on loopback. Each page
is saved under test-artifacts/screenshots/ to be looked at.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from digest import db
from digest.ingest import load_sample_papers
from digest.models import FeedbackKind, PaperFeedback, SubscriberStatus
from digest.pipeline import run_day
from digest.settings import PROJECT_DIR, Settings
from digest.subscribers import find_subscriber
from digest.web import create_app

from .conftest import lexical_only
from .factories import make_paper
from .smtp_server import SMTPServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = PROJECT_DIR / "test-artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(
    sqlite_settings: Settings, smtp_server: SMTPServer, redis_url: str
) -> Iterator[tuple[str, Settings]]:
    """The web app served on loopback by werkzeug in a thread, mailing the SMTP server."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = replace(
        lexical_only(sqlite_settings), mail_backend="smtp", smtp_host="127.0.0.1",
        smtp_port=smtp_server.port, smtp_retry_attempts=1, public_base_url=base,
        redis_url=redis_url, min_relevance=0.05,
    )
    with db.session_scope(settings) as session:
        load_sample_papers(session)
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base, settings
    server.shutdown()
    thread.join(5)


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium. "
                    "Run `apt-get install chromium` (bash .ci/run does).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def wait_for_mail(server: SMTPServer, count: int, timeout: float = 10.0) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while len(server.received) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} emails, got {len(server.received)}")
        time.sleep(0.05)
    return server.messages[count - 1]


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def link_after(label: str, text: str) -> str:
    match = re.search(rf"{re.escape(label)}\s*(https?://\S+)", text)
    assert match, f"no link after {label!r} in:\n{text}"
    return match.group(1)


def test_subscribe_confirm_preferences_digest_unsubscribe_in_a_browser(
    site: tuple[str, Settings], smtp_server: SMTPServer, browser: object
) -> None:
    base, settings = site
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    SCREENSHOTS.mkdir(parents=True)
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 1200, "height": 900}, timezone_id="Europe/Paris", locale="en-GB"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def shot(name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    # 1. The subscribe page: the browser's time zone is preselected; typing shows a preview.
    page.goto(base + "/")
    assert page.title() == "Subscribe · Paper Digest"
    assert page.input_value("#time_zone") == "Europe/Paris"
    page.fill("#email", "Ada.Lovelace@Example.org")
    page.fill("#topics", "LoRA, low-rank adaptation")
    page.wait_for_selector("#preview-list li .title")
    preview = page.locator("#preview-list li .title").all_inner_texts()
    assert any("Low-rank" in t or "LoRA" in t for t in preview), preview
    page.select_option("#send_hour", "8")
    page.select_option("#papers_per_digest", "5")
    shot("01-subscribe")

    # 2. Submitting says "check your inbox" and mails a confirmation, nothing else.
    page.click("button[type=submit]")
    page.wait_for_selector("text=Check your inbox")
    assert "Ada.Lovelace@example.org" in page.inner_text("main")
    shot("02-check-inbox")
    confirmation = wait_for_mail(smtp_server, 1)
    assert confirmation["To"] == "Ada.Lovelace@example.org"
    assert confirmation["Subject"] == "Confirm your Paper Digest subscription"
    confirm_url = link_after("(the link works for 48 hours):", text_part(confirmation))
    inbox = context.new_page()  # emails open in a page of their own, outside our CSP
    inbox.set_content(html_part(confirmation))
    inbox.screenshot(path=str(SCREENSHOTS / "02b-confirmation-email.png"), full_page=True)
    assert confirm_url.startswith(f"{base}/confirm/")
    assert run_day(settings, datetime.now(timezone.utc).date()).sent == []  # pending: nothing

    # 3. The link opens a page with one button; pressing it confirms.
    page.goto(confirm_url)
    page.wait_for_selector("text=Confirm your subscription")
    shot("03-confirm")
    page.click("button:has-text('Confirm my subscription')")
    page.wait_for_selector("text=You're subscribed")
    assert "08:00" in page.inner_text("main")
    shot("04-confirmed")

    # 4. The first digest arrives; its preferences link opens the preferences page.
    today = datetime.now(timezone.utc).date()
    assert run_day(settings, today).sent == ["Ada.Lovelace@example.org"]
    first = wait_for_mail(smtp_server, 2)
    assert "LoRA" in first["Subject"]
    inbox.set_content(html_part(first))
    inbox.screenshot(path=str(SCREENSHOTS / "05-first-digest.png"), full_page=True)
    # 4b. "More like this" on the first paper: a page with one button; pressing it records it.
    first_title = inbox.locator(".paper-title a").first.inner_text()
    page.goto(inbox.locator("a:has-text('More like this')").first.get_attribute("href"))
    page.wait_for_selector("text=More papers like this?")
    assert first_title in page.inner_text("main")
    shot("05b-more-like-this")
    with db.session_scope(settings) as session:  # the GET changed nothing
        assert session.scalar(select(func.count()).select_from(PaperFeedback)) == 0
    page.click("button:has-text('More like this')")
    page.wait_for_selector("text=Thanks: more papers like this")
    shot("05c-more-like-this-saved")
    with db.session_scope(settings) as session:
        assert session.scalars(select(PaperFeedback.kind)).all() == [FeedbackKind.MORE]
    page.goto(link_after("Change preferences:", text_part(first)))
    page.wait_for_selector("text=Your digest")
    assert page.input_value("#topics") == "LoRA, low-rank adaptation"
    page.fill("#topics", "diffusion models, text-to-image")
    page.select_option("#send_hour", "6")
    page.select_option("#time_zone", "America/New_York")
    shot("06-preferences")
    page.click("button:has-text('Save preferences')")
    page.wait_for_selector("text=Saved.")
    assert page.input_value("#topics") == "diffusion models, text-to-image"
    assert page.input_value("#send_hour") == "6"
    shot("07-preferences-saved")

    # 5. The next digest follows the new topics.
    with db.session_scope(settings) as session:
        fresh = datetime.now(timezone.utc) + timedelta(seconds=1)
        make_paper(session, title="Consistency Distillation for Fast Text-to-Image Diffusion",
                   abstract="We distil text-to-image diffusion models into four-step samplers.",
                   first_seen_at=fresh, published_at=fresh, upvotes=80)
        make_paper(session, title="A Survey of Low-Rank Adapters",
                   abstract="LoRA and low-rank adaptation methods compared.",
                   first_seen_at=fresh, published_at=fresh)
    assert run_day(settings, today + timedelta(days=1)).sent == ["Ada.Lovelace@example.org"]
    second = wait_for_mail(smtp_server, 3)
    assert "diffusion models, text-to-image" in second["Subject"]
    assert "Consistency Distillation for Fast Text-to-Image Diffusion" in text_part(second)
    assert "Low-Rank Adapters" not in text_part(second)

    # 6. The digest's unsubscribe link opens a page with one button; pressing it unsubscribes.
    inbox.set_content(html_part(second))
    inbox.click("a:has-text('Unsubscribe')")
    page.close()
    page = inbox
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.wait_for_selector("text=Unsubscribe from Paper Digest?")
    shot("08-unsubscribe")
    with db.session_scope(settings) as session:  # the GET changed nothing
        assert find_subscriber(session, "ada.lovelace@example.org").status is (  # type: ignore[union-attr]
            SubscriberStatus.ACTIVE
        )
    page.click("button:has-text('Unsubscribe')")
    page.wait_for_selector("text=You're unsubscribed")
    assert page.locator("button:has-text('Resubscribe')").is_visible()
    shot("09-unsubscribed")
    with db.session_scope(settings) as session:
        assert find_subscriber(session, "ada.lovelace@example.org").status is (  # type: ignore[union-attr]
            SubscriberStatus.UNSUBSCRIBED
        )
    assert errors == [], errors  # no script error, no CSP violation on any page
    context.close()

    # The same form on a phone: one column, nothing cut off.
    phone = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    mobile = phone.new_page()
    mobile.goto(base + "/")
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
    mobile.screenshot(path=str(SCREENSHOTS / "10-subscribe-phone.png"), full_page=True)
    phone.close()


def test_the_html_part_as_sent_in_7_bits_looks_exactly_like_the_page(
    browser: Any, tmp_path: Path
) -> None:
    """mail.mime._html_part breaks lines between tags and writes non-ASCII as references instead
    of quoting the page: a browser must draw the two identically, on a phone and a desktop."""
    from email import message_from_bytes, policy

    from digest.mail import OutgoingEmail, message_bytes
    from digest.render.plain import render_digest, render_email

    from .conftest import make_settings
    from .test_render import make_card, make_context, make_item, sample_context

    settings = make_settings(tmp_path)
    hostile = make_item(make_card(11, title="Jörg’s “β-OPSD” — <b>bold</b> & Σ-Mem…"))
    pages = [
        render_digest(make_context(items=(*make_context().items[:4], hostile),
                                   feedback_url="https://digest.test/feedback/tok")).html,
        render_email("confirm", sample_context("confirm")).html,
    ]
    for n, page in enumerate(pages):
        data = message_bytes(settings, OutgoingEmail(
            to="ada@example.org", subject="s", text="t", html=page,
            message_id=f"<{n}@digest.test>", unsubscribe_url="https://digest.test/u/1",
            date=datetime(2026, 11, 23, tzinfo=timezone.utc)))
        part = message_from_bytes(data, policy=policy.default).get_body(("html",))
        assert part is not None and part["Content-Transfer-Encoding"] == "7bit"
        sent = part.get_content()
        assert sent != page and sent.isascii()
        for width in (375, 700):
            shots = []
            for html in (page, sent):
                view = browser.new_page(viewport={"width": width, "height": 800})
                view.set_content(html)
                shots.append(view.screenshot(full_page=True))
                view.close()
            assert shots[0] == shots[1], f"page {n} at {width}px differs"
