"""Issue 19 the way a reader meets it, in a real browser (Debian's chromium, driven by
Playwright), with the real web app, the real pipeline and a real SMTP server on loopback.

A weekly reader signs up on the subscribe page (weekly on today's weekday, a word to exclude,
trending papers when nothing matches), confirms from the email, asks for today's digest at
once, then gets the week's digest from the beat's ticks a week later, on her weekday only.
She reads it in the email and on its "View in browser" page, finds it among her past digests,
turns click tracking on and off again (the next digest's paper links are direct), downloads
her data and deletes herself; her old links then do nothing. A daily reader beside her shows
what a daily and a weekly digest of the same day look like.

Screenshots go to $SCREENSHOT_DIR, or test-artifacts/reader-journey/ (kept out of git), to be
looked at: the test prints where.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock_time
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import db
from digest.first_digest import wait_for_first_digests
from digest.mail import open_sender
from digest.models import Delivery, DeliveryStatus, PaperFeedback, Subscriber
from digest.pipeline import plan_due_batches, process_batch
from digest.prepare import prepared_day
from digest.settings import PROJECT_DIR, Settings
from digest.subscribers import WEEKDAYS

from .factories import make_paper
from .smtp_server import SMTPServer
from .test_web_browser import browser as chromium
from .test_web_browser import html_part, link_after, text_part
from .test_web_browser import site as web_site

# The fixtures: Debian's chromium through Playwright, and the web app served on loopback.
browser, site = chromium, web_site

SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR") or PROJECT_DIR / "test-artifacts" / "reader-journey"
)
ZONE = ZoneInfo("Europe/Paris")
WEEKLY, DAILY = "ada@example.org", "grace@example.org"
TOPICS = "speculative decoding, LoRA, mixture of experts"
# The selects too narrow for the choice they show ("Once a w"): its text, in the select's own
# font, and the select's padding (the arrow's room) against its inner width.
CUT_SELECTS = """() => {
  const measure = document.createElement('canvas').getContext('2d');
  return [...document.querySelectorAll('select')].filter(select => {
    const style = getComputedStyle(select);
    measure.font = style.font;
    const text = measure.measureText(select.selectedOptions[0].text).width;
    const room = select.clientWidth - parseFloat(style.paddingLeft)
                 - parseFloat(style.paddingRight);
    return text > room;
  }).map(select => select.id);
}"""
# A paper link that records a click: /feedback/<token>/<paper>/open (or /pdf).
TRACKED = re.compile(r"/feedback/[^\"'\s]+/\d+/(open|pdf)")

# The week's new papers, a few a day; "medical" is a word the weekly reader excludes.
PAPERS = [
    (
        "Speculative Decoding with Self-Drafting Heads",
        "We draft tokens with lightweight heads on the target model itself, so speculative "
        "decoding needs no separate draft model and doubles throughput.",
        312,
    ),
    (
        "LoRA Without Forgetting: Orthogonal Low-Rank Updates",
        "Low-rank adaptation (LoRA) updates constrained to be orthogonal to the pretrained "
        "weights keep what the model knew while learning the new task.",
        145,
    ),
    (
        "Sparse Mixture of Experts at the Edge",
        "A mixture of experts routed per token runs on a phone by keeping only the active "
        "experts in memory.",
        88,
    ),
    (
        "Medical Report Generation with LoRA Adapters",
        "LoRA adapters fine-tune a vision-language model on medical reports.",
        260,
    ),
    (
        "Tree-Based Speculative Decoding for Long Outputs",
        "Verifying a tree of drafted continuations at once makes speculative decoding pay off "
        "for long generations.",
        97,
    ),
    (
        "Expert Choice Routing Revisited",
        "We revisit expert choice routing for mixture of experts language models and find "
        "load balancing without auxiliary losses.",
        54,
    ),
    (
        "QLoRA at Scale: Fine-Tuning 400B Models on One Node",
        "Quantized LoRA fine-tunes very large models on a single node with paged optimizers.",
        410,
    ),
    (
        "Lookahead Decoding Without a Draft Model",
        "Jacobi iterations generate n-grams in parallel, a speculative decoding method that "
        "needs no draft model.",
        73,
    ),
    (
        "DoRA: Weight-Decomposed Low-Rank Adaptation",
        "Decomposing weights into magnitude and direction improves LoRA at no inference cost.",
        188,
    ),
    (
        "Upcycling Dense Checkpoints into Mixture of Experts",
        "Sparse upcycling turns a dense checkpoint into a mixture of experts model for a "
        "fraction of the pretraining cost.",
        66,
    ),
    (
        "Speculative Decoding for Speech Recognition",
        "Drafting transcripts with a small model and verifying with a large one speeds up "
        "speech recognition by a factor of three.",
        41,
    ),
    (
        "Federated LoRA for Medical Imaging",
        "Hospitals fine-tune LoRA adapters on medical images without sharing data.",
        120,
    ),
    (
        "How Many Experts Does a Mixture of Experts Need?",
        "Scaling laws for the number of experts in mixture of experts language models.",
        230,
    ),
    (
        "Rank-Adaptive LoRA Through Singular Value Pruning",
        "LoRA ranks chosen per layer by pruning small singular values during training.",
        35,
    ),
]
# The week after: a few more, for the next digest.
NEXT_PAPERS = [
    (
        "Speculative Decoding Meets Mixture of Experts",
        "Drafting with a single expert of a mixture of experts model makes speculative "
        "decoding cheap.",
        150,
    ),
    (
        "LoRA Soups: Merging Low-Rank Adapters",
        "Merging LoRA adapters trained on different skills, without retraining.",
        80,
    ),
    (
        "Expert Parallelism Without All-to-All",
        "A mixture of experts layer that needs no all-to-all communication.",
        45,
    ),
]


def local(day: date, hour: int) -> datetime:
    """`hour` o'clock on `day` in the readers' zone, in UTC."""
    return datetime.combine(day, clock_time(hour), ZONE).astimezone(timezone.utc)


def add_papers(settings: Settings, first_day: date, papers: list[tuple[str, str, int]]) -> None:
    """Papers first seen at 03:00 on successive days from `first_day`, two a day."""
    with db.session_scope(settings) as session:
        for n, (title, abstract, upvotes) in enumerate(papers):
            seen = local(first_day + timedelta(days=n // 2), 3)
            make_paper(
                session,
                title=title,
                abstract=abstract,
                upvotes=upvotes,
                first_seen_at=seen,
                published_at=seen,
            )


def beat(settings: Settings, start: datetime, hours: int) -> list[tuple[datetime, str, date]]:
    """The beat's tick every hour from `start`: plan who is due, send what was planned
    (through the SMTP server); (tick, address, digest date) for each digest sent."""
    sent = []
    for moment in (start + timedelta(hours=h) for h in range(hours)):
        for day, ids in list(plan_due_batches(settings, moment)):
            with db.session_scope(settings) as session, open_sender(settings) as sender:
                report = process_batch(
                    session, settings, prepared_day(session, settings, day), ids, sender
                )
            sent += [(moment, address, day) for address in report.sent]
    return sent


def mail_to(server: SMTPServer, address: str, count: int, timeout: float = 15.0) -> EmailMessage:
    """The `count`-th email to `address`, once it has arrived."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [m for m in server.messages if m["To"] == address]
        if len(mine) >= count:
            return mine[count - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} emails to {address}, got {len(mine)}")
        time.sleep(0.05)


def subscriber_of(session: Session, address: str) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email == address))


def titles(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def test_a_weekly_reader_from_sign_up_to_deletion_beside_a_daily_reader(
    site: tuple[str, Settings], smtp_server: SMTPServer, browser: Any
) -> None:
    base, settings = site
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    print(f"\nscreenshots: {SCREENSHOTS}")
    today = datetime.now(ZONE).date()  # the readers' local date
    weekday = today.weekday()
    context = browser.new_context(
        viewport={"width": 1200, "height": 900}, timezone_id="Europe/Paris", locale="en-GB"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def shot(view: Any, name: str) -> None:
        view.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def email_shots(
        html: str,
        name: str,
        schemes: tuple[str, ...] = ("light", "dark"),
        widths: tuple[int, ...] = (800, 390),
    ) -> None:
        """The email as a mail client shows it, in each colour scheme and width."""
        for scheme in schemes:
            for width in widths:
                view = browser.new_context(
                    color_scheme=scheme, viewport={"width": width, "height": 900}
                )
                mail = view.new_page()
                mail.set_content(html)
                assert mail.evaluate("document.documentElement.scrollWidth") <= width
                shot(mail, f"{name}-{scheme}-{width}")
                view.close()

    # 1. Sign up, weekly on today's weekday, excluding a word, with the trending fallback.
    page.goto(base + "/")
    page.fill("#email", WEEKLY)
    page.fill("#topics", TOPICS)
    page.fill("#exclude", "medical")
    page.select_option("#cadence", "weekly")
    page.select_option("#send_weekday", str(weekday))
    page.select_option("#time_zone", "Europe/Paris")
    page.select_option("#send_hour", "7")
    page.click("text=Send trending papers when nothing matches")  # the switch's label
    assert page.is_checked("#trending_fallback")
    assert not page.is_checked("#click_tracking")  # privacy by default
    page.wait_for_selector("#preview-list li .title")
    shot(page, "01-subscribe-weekly")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    form = phone.new_page()
    form.goto(base + "/")
    form.select_option("#cadence", "weekly")
    assert form.evaluate("document.documentElement.scrollWidth") <= 390
    assert form.evaluate(CUT_SELECTS) == []  # every select shows its whole choice
    shot(form, "01-subscribe-weekly-390")
    phone.close()
    page.click("button[type=submit]")
    page.wait_for_selector("text=Check your inbox")

    # The daily reader beside her, with the same topics.
    daily_page = context.new_page()
    daily_page.goto(base + "/")
    daily_page.fill("#email", DAILY)
    daily_page.fill("#topics", TOPICS)
    daily_page.select_option("#time_zone", "Europe/Paris")
    daily_page.select_option("#send_hour", "7")
    daily_page.click("button[type=submit]")
    daily_page.wait_for_selector("text=Check your inbox")

    # 2. The confirmation email shows her choices; its link opens a page with one button.
    confirmation = mail_to(smtp_server, WEEKLY, 1)
    assert confirmation["Subject"] == "Confirm your Paper Digest subscription"
    confirm_text = text_part(confirmation)
    assert "speculative decoding" in confirm_text
    assert WEEKDAYS[weekday] in confirm_text, confirm_text
    page.goto(link_after("(the link works for 48 hours):", confirm_text))
    page.wait_for_selector("text=Confirm your subscription")
    shot(page, "02-confirm")
    page.click("button:has-text('Confirm my subscription')")
    page.wait_for_selector("text=You're subscribed")
    assert f"every {WEEKDAYS[weekday]}" in page.inner_text("main")
    shot(page, "03-confirmed")
    daily_page.goto(
        link_after("(the link works for 48 hours):", text_part(mail_to(smtp_server, DAILY, 1)))
    )
    daily_page.click("button:has-text('Confirm my subscription')")
    daily_page.wait_for_selector("text=You're subscribed")
    daily_page.close()

    # 3. FIRST_DIGEST=offer: one button sends this week's digest at once.
    assert "Send me this week's digest now" in page.inner_text("main")
    assert "daily or weekly" in page.inner_text(".site-header")
    page.click("form.first-digest button")
    page.wait_for_selector("text=This week's digest is on its way")
    assert wait_for_first_digests(30)
    first = mail_to(smtp_server, WEEKLY, 2)
    assert "speculative decoding" in first["Subject"].lower() or "trending" in first["Subject"]
    with db.session_scope(settings) as s:
        ada = subscriber_of(s, WEEKLY)
        assert ada is not None and ada.cadence.value == "weekly"
        assert (ada.send_weekday, ada.click_tracking) == (weekday, False)
        assert (ada.profile.exclude, ada.profile.trending_fallback) == ("medical", True)
        ada_id = ada.id
        grace = subscriber_of(s, DAILY)
        assert grace is not None and grace.cadence.value == "daily"
        # The papers field left at its default: a longer digest for the weekly reader.
        assert (ada.papers_per_digest, grace.papers_per_digest) == (
            settings.weekly_papers_per_digest,
            settings.default_papers_per_digest,
        )

    # 4. A week of the beat's hourly ticks: the daily reader gets a digest each morning,
    #    the weekly reader one, on her weekday at her hour, with the week's papers.
    add_papers(settings, today + timedelta(days=1), PAPERS)
    week = beat(settings, local(today + timedelta(days=1), 0), 24 * 7)
    assert [(t, d) for t, to, d in week if to == WEEKLY] == [
        (local(today + timedelta(days=7), 7), today + timedelta(days=7))
    ]
    assert [d for _, to, d in week if to == DAILY] == [
        today + timedelta(days=n) for n in range(1, 8)
    ]
    weekly = mail_to(smtp_server, WEEKLY, 3)
    weekly_text = text_part(weekly)
    assert "Medical" not in weekly_text  # the excluded word
    week_titles = [t for t, _, _ in PAPERS if t in weekly_text]
    assert len(week_titles) >= 6, weekly_text  # papers from the whole week
    assert not TRACKED.search(html_part(weekly))  # tracking off: direct links
    # Side by side: the weekly digest and the daily reader's digest of the same morning.
    same_day = mail_to(smtp_server, DAILY, 8)  # the confirmation, then seven dailies
    assert "week" in weekly["Subject"].lower() and "week" not in same_day["Subject"].lower()
    assert "How Many Experts Does a Mixture of Experts Need?" in text_part(same_day)
    email_shots(html_part(weekly), "04-weekly-digest")
    email_shots(html_part(same_day), "04-daily-digest")

    # 5. The email in a browser; "View in browser" opens the same digest on the site.
    inbox = context.new_page()
    inbox.set_content(html_part(weekly))
    email_titles = titles(inbox, ".paper-title a")
    inbox.click("a:has-text('View in browser')")
    inbox.wait_for_selector(".digest-page")
    assert titles(inbox, ".digest-papers .paper-title") == email_titles
    archive_heading = inbox.inner_text(".digest-page .eyebrow")
    assert "Paper links go straight to the paper" in inbox.inner_text("main")
    archive_url = inbox.url
    inbox.close()
    for scheme in ("light", "dark"):  # the page follows the reader's colour scheme
        view = browser.new_context(color_scheme=scheme, viewport={"width": 1200, "height": 900})
        archive = view.new_page()
        archive.goto(archive_url)
        assert archive.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") is (
            scheme == "dark"
        )
        shot(archive, f"05-archive-weekly-{scheme}")
        view.close()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    archive = phone.new_page()
    archive.goto(archive_url)
    assert archive.evaluate("document.documentElement.scrollWidth") <= 390
    shot(archive, "05-archive-weekly-light-390")
    phone.close()

    # 6. The preferences page (the email's link) lists her past digests: both of them.
    preferences_url = link_after("Change preferences:", weekly_text)
    page.goto(preferences_url)
    page.wait_for_selector("text=Your past digests")
    listed = page.locator(".past-digests li a")
    assert listed.count() == 2
    shot(page, "06-preferences")
    listed.first.click()  # the newest: this week's
    page.wait_for_selector(".digest-page")
    assert page.inner_text(".digest-page .eyebrow") == archive_heading
    assert titles(page, ".digest-papers .paper-title") == email_titles
    page.goto(preferences_url)

    # 7. Click tracking on: the archive page's paper links go through the site. Then off.
    page.click("text=Learn from the papers I open")
    page.click("button:has-text('Save preferences')")
    page.wait_for_selector("text=Saved.")
    assert page.is_checked("#click_tracking")
    page.goto(archive_url)
    assert TRACKED.search(page.inner_html(".digest-papers"))
    assert "Paper links pass through" in page.inner_text("main")
    page.goto(preferences_url)
    page.click("text=Learn from the papers I open")
    page.click("button:has-text('Save preferences')")
    page.wait_for_selector("text=Saved.")
    assert not page.is_checked("#click_tracking")
    assert page.input_value("#exclude") == "medical"  # the other choices kept
    assert page.input_value("#cadence") == "weekly"

    # 8. The next week's digest: direct paper links, "more / less like this" still there.
    add_papers(settings, today + timedelta(days=12), NEXT_PAPERS)
    next_day = today + timedelta(days=14)
    sent = beat(settings, local(next_day, 0), 24)
    assert sorted(to for _, to, _ in sent) == [WEEKLY, DAILY]
    following = mail_to(smtp_server, WEEKLY, 4)
    html = html_part(following)
    assert not TRACKED.search(html), "tracking is off: paper links must be direct"
    assert re.search(r"/feedback/[^\"'\s]+/\d+/more", html)
    assert "https://arxiv.org/abs/" in html
    email_shots(html, "08-next-weekly-digest", ("light",), (800,))

    # 9. Her data, as a JSON file.
    with page.expect_download() as download:
        page.click("text=Download my data (JSON)")
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert data["subscriber"]["email"] == WEEKLY
    assert data["subscriber"]["schedule"] == f"weekly on {WEEKDAYS[weekday]}"
    assert data["subscriber"]["click_tracking"] is False
    assert data["profile"]["topics"] == TOPICS
    assert data["profile"]["exclude"] == "medical"
    assert data["profile"]["trending_fallback"] is True
    assert len(data["deliveries"]) == 3
    assert (
        json.dumps(data["deliveries"]).count("Speculative Decoding with Self-Drafting Heads") == 1
    )

    # 10. Delete: a page that asks, a button that does it.
    page.click("text=Delete me entirely")
    page.wait_for_selector("text=Delete everything about you?")
    shot(page, "10-delete")
    page.click("button:has-text('Delete me entirely')")
    page.wait_for_selector("text=You're deleted")
    shot(page, "10-deleted")
    with db.session_scope(settings) as s:
        assert subscriber_of(s, WEEKLY) is None
        assert (
            s.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.subscriber_id == ada_id)
            )
            == 0
        )

    assert errors == [], errors  # no script error, no CSP violation on any page so far

    # 11. Her old links do nothing: each says so, and nothing is recorded.
    unsubscribe_url = link_after("Unsubscribe:", text_part(following))
    more_url = re.search(r'href="([^"]+/more)"', html).group(1)  # type: ignore[union-attr]
    for url in (archive_url, preferences_url, unsubscribe_url, more_url):
        response = page.goto(url)
        assert response is not None and response.status == 404, (url, response and response.status)
        assert "did not work" in page.inner_text("main") or "cannot be used" in page.inner_text(
            "main"
        )
    shot(page, "11-old-link")
    page.goto(more_url)
    with db.session_scope(settings) as s:
        assert s.scalar(select(func.count()).select_from(PaperFeedback)) == 0
        assert (
            s.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.status == DeliveryStatus.SENT)
            )
            == 8
        )  # the daily reader's, untouched
    context.close()
