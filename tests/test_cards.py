"""Paper rows as cards and candidates, and what a reader sees of the daily-papers extras: the
TL;DR in place of the cut abstract, a "Code · 1.2k ★" link, the organization, and when an
older paper was published; a paper without them reads as before, and hostile values never
reach the email."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from digest.cards import candidate_paper, paper_card
from digest.models import Paper
from digest.render.content import ORGANIZATION_CHARS, bounded_card, code_label
from digest.render.day import DayRenderer
from digest.render.filters import ABSTRACT_CHARS, star_count
from digest.render.plain import RenderedEmail, render_digest

from .test_render import DAY, ParsedHTML, make_card, make_context, make_item

TLDR = "LoRA with a sparsity-aware variant cuts activation memory by forty percent."
REPO = "https://github.com/ada/sparse-lora"
THUMBNAIL = "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2611.00001.png"


def render_one(**card_fields: object) -> RenderedEmail:
    return render_digest(make_context(items=(make_item(make_card(**card_fields)),)))


def row(**fields: object) -> Paper:
    values: dict[str, object] = dict(
        id=7, source="daily-papers", source_id="2611.00007", title_key="k", title="Sparse LoRA",
        abstract="We study LoRA.", authors=["Ada Lovelace"], url="https://arxiv.org/abs/2611.00007",
        pdf_url=None, published_at=datetime(2026, 11, 22, tzinfo=UTC), upvotes=3, comments=1,
        stars=1234, ai_summary=TLDR, ai_keywords=["LoRA", "sparsity"], github_repo=REPO,
        thumbnail=THUMBNAIL, organization="MIT",
        first_seen_at=datetime(2026, 11, 23, 6, tzinfo=UTC),
    )
    values.update(fields)
    return Paper(**values)


# --- what a reader sees ----------------------------------------------------------------------


def test_the_tldr_takes_the_place_of_the_cut_abstract() -> None:
    email = render_one(ai_summary=TLDR)

    page = ParsedHTML(email.html)
    assert f"TL;DR: {TLDR}" in page.text
    assert "Low-rank adaptation (LoRA) matches" not in page.text
    assert f"TL;DR: {TLDR}" in " ".join(email.text.split())
    assert "Low-rank adaptation (LoRA) matches" not in email.text


def test_the_code_link_shows_its_stars() -> None:
    email = render_one(github_repo=REPO, stars=1234)

    page = ParsedHTML(email.html)
    assert page.hrefs_for("Code · 1.2k ★ →") == [REPO]
    assert f"Code · 1.2k ★: {REPO}" in email.text
    unstarred = render_one(github_repo=REPO, stars=None)
    assert ParsedHTML(unstarred.html).hrefs_for("Code →") == [REPO]
    assert f"Code: {REPO}" in unstarred.text


def test_a_code_link_alone_still_reads_as_a_link_line() -> None:
    email = render_one(url=None, pdf_url=None, github_repo=REPO, stars=5)

    assert ParsedHTML(email.html).hrefs_for("Code · 5 ★ →") == [REPO]


def test_the_organization_follows_the_authors() -> None:
    email = render_one(organization="California Institute of Technology")

    assert "Ada Lovelace and Alan Turing · California Institute of Technology" in (
        ParsedHTML(email.html).text)
    assert "Ada Lovelace and Alan Turing · California Institute of Technology" in email.text
    alone = render_one(authors=(), organization="MIT")
    assert "MIT" in ParsedHTML(alone.html).text and "\n   MIT\n" in alone.text


def test_an_older_paper_says_when_it_was_published() -> None:
    email = render_one(published_at=datetime(2019, 3, 3, tzinfo=UTC), older_than_window=True)

    assert "212 upvotes · 14 comments · Published 3 Mar 2019" in ParsedHTML(email.html).text
    assert "212 upvotes · 14 comments · Published 3 Mar 2019" in email.text


def test_a_paper_without_the_extras_reads_as_before() -> None:
    email = render_digest(make_context())

    for absent in ("TL;DR", "Code", "★", "Published"):
        assert absent not in email.html and absent not in email.text
    assert "Ada Lovelace and Alan Turing 212 upvotes" not in ParsedHTML(email.html).text


# --- hostile values -----------------------------------------------------------------------------

HOSTILE = {
    "ai_summary": '<script>alert("tldr")</script>\r\nBcc: victim@example.com',
    "organization": '"><img src=x onerror=alert(1)>\r\nX-Evil: 1',
}


@pytest.mark.parametrize(
    "repo",
    ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "java\nscript:alert(1)",
     "data:text/html,<script>alert(1)</script>", "//evil.example/x", " javascript:alert(1)"],
)
def test_hostile_extras_reach_the_email_only_as_text(repo: str) -> None:
    email = render_one(**HOSTILE, github_repo=repo, stars=10)

    page = ParsedHTML(email.html)
    assert {"script", "img"}.isdisjoint(page.tag_names())
    assert not any(href.strip().lower().startswith(("javascript", "data", "//", "java"))
                   for href, _ in page.links)
    assert page.hrefs_for("Code · 10 ★ →") == [] and "Code" not in email.text
    assert '<script>alert("tldr")</script> Bcc: victim@example.com' in page.text
    assert "\r" not in email.text and not re.search(r"^\s*(Bcc|X-Evil):", email.text, re.M)
    assert "\n" not in email.subject


def test_the_thumbnail_is_stored_but_never_loaded_by_the_email() -> None:
    """An email that loads a remote image tells its server when it was opened."""
    card = paper_card(row())
    email = render_digest(make_context(items=(make_item(card),)))

    assert THUMBNAIL not in email.html and THUMBNAIL not in email.text
    assert re.findall(r'src=["\']?https?:', email.html) == []


# --- rows to cards and candidates ----------------------------------------------------------


def test_a_row_gives_its_extras_to_the_card_and_its_keywords_to_scoring() -> None:
    card = paper_card(row())
    candidate = candidate_paper(row())

    assert (card.ai_summary, card.github_repo, card.stars, card.organization) == (
        TLDR, REPO, 1234, "MIT")
    assert candidate.ai_keywords == ("LoRA", "sparsity")
    listed = datetime(2026, 11, 23, 5, tzinfo=UTC)
    assert candidate_paper(row(listed_at=listed)).listed_at == listed  # trending's recency
    assert candidate.listed_at is None
    assert candidate_paper(row(ai_keywords=None)).ai_keywords == ()
    assert candidate_paper(row(ai_keywords={"a": 1})).ai_keywords == ()
    assert candidate_paper(row(ai_keywords=["LoRA", 3, None, ""])).ai_keywords == ("LoRA",)


def test_a_card_knows_whether_its_paper_was_published_before_the_window() -> None:
    window_start = datetime(2026, 11, 20, tzinfo=UTC)

    assert paper_card(row(published_at=datetime(2019, 3, 3, tzinfo=UTC)),
                      window_start).older_than_window
    assert not paper_card(row(), window_start).older_than_window
    assert not paper_card(row(published_at=None), window_start).older_than_window
    assert not paper_card(row(published_at=datetime(2019, 3, 3, tzinfo=UTC))).older_than_window


def test_a_card_bounds_the_extras_it_carries() -> None:
    card = bounded_card(make_card(ai_summary="word " * 1000, organization="Org " * 100,
                                  github_repo="https://github.com/" + "a" * 3000))

    assert card.ai_summary is not None and len(card.ai_summary) == 4 * ABSTRACT_CHARS
    assert card.organization is not None and len(card.organization) <= ORGANIZATION_CHARS
    assert card.github_repo is None
    plain_card = make_card()
    assert bounded_card(plain_card) is plain_card


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0"), (7, "7"), (999, "999"), (1000, "1k"), (1234, "1.2k"), (12_345, "12.3k"),
     (99_999, "99.9k"), (123_456, "123k"), (999_999, "999k"), (1_000_000, "1M"),
     (2_345_678, "2.3M")],
)
def test_star_counts_read_as_github_shows_them(count: int, shown: str) -> None:
    assert star_count(count) == shown


def test_no_stars_is_just_code() -> None:
    assert code_label(make_card(stars=0)) == "Code"
    assert code_label(make_card(stars=1500)) == "Code · 1.5k ★"


def test_the_fast_path_renders_the_extras_as_the_plain_path_does() -> None:
    cards = [
        make_card(1, ai_summary=TLDR, github_repo=REPO, stars=1234, organization="MIT"),
        make_card(2, published_at=datetime(2019, 3, 3, tzinfo=UTC), older_than_window=True),
        make_card(3, **HOSTILE, github_repo="javascript:alert(1)", stars=3),
        make_card(4, url=None, pdf_url=None, github_repo=REPO),
    ]
    renderer = DayRenderer(DAY, "https://digest.test/")  # make_context's site
    for feedback in ("", "https://digest.test/feedback/tok"):
        ctx = make_context(items=tuple(make_item(c) for c in cards), feedback_url=feedback)
        fast, plain = renderer.render(ctx), render_digest(ctx)
        assert (fast.subject, fast.text, fast.html) == (plain.subject, plain.text, plain.html)
    assert renderer.fallbacks == 0
