"""Rendering emails: what a subscriber sees in the HTML and plain-text parts and the subject."""

from __future__ import annotations

from datetime import date, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from digest import notices
from digest.render import plain
from digest.render.content import DigestContext, DigestItem, PaperCard
from digest.render.filters import author_line, one_line, printable, safe_url, shorten
from digest.render.plain import (
    RenderedEmail,
    email_template_names,
    render_digest,
    render_email,
)

DAY = date(2026, 11, 23)
ABSTRACT = (
    "Low-rank adaptation (LoRA) matches full fine-tuning on many tasks while training a small "
    "fraction of the parameters. We study why, and propose a sparsity-aware variant that cuts "
    "activation memory by forty percent without any loss in accuracy across eleven benchmarks, "
    "including long-context retrieval and code generation, and we release the code."
)


# --- Factories -------------------------------------------------------------------------------


def make_card(paper_id: int = 1, **overrides: Any) -> PaperCard:
    fields: dict[str, Any] = dict(
        paper_id=paper_id,
        title=f"Paper number {paper_id}",
        authors=("Ada Lovelace", "Alan Turing"),
        abstract=ABSTRACT,
        url=f"https://huggingface.co/papers/2611.{paper_id:05d}",
        pdf_url=f"https://arxiv.org/pdf/2611.{paper_id:05d}",
        published_at=datetime(2026, 11, 21, 9, 30),
        upvotes=212,
        comments=14,
        source="hf",
    )
    fields.update(overrides)
    return PaperCard(**fields)


def make_item(card: PaperCard | None = None, **card_overrides: Any) -> DigestItem:
    return DigestItem(
        card=card or make_card(**card_overrides),
        reasons=("matches: lora, low-rank adaptation", "trending: 212 upvotes"),
        score=0.9,
    )


def make_context(items: tuple[DigestItem, ...] | None = None, **overrides: Any) -> DigestContext:
    fields: dict[str, Any] = dict(
        day=DAY,
        recipient="ada@example.org",
        topics="LoRA, activation sparsity",
        items=items if items is not None else tuple(make_item(paper_id=i) for i in range(1, 11)),
        preferences_url="https://digest.test/preferences/tok123",
        unsubscribe_url="https://digest.test/unsubscribe/tok123",
        site_url="https://digest.test/",
        trending_fallback=False,
    )
    fields.update(overrides)
    return DigestContext(**fields)


def sample_context(name: str) -> dict[str, Any]:
    """A template context for each email type; a new folder needs an entry here."""
    contexts = {
        "digest": plain.digest_template_context(make_context()),
        "confirm": notices.confirm_template_context(
            "ada@example.org", "LoRA, activation sparsity", "https://digest.test/confirm/tok1",
            "https://digest.test/unsubscribe/tok2", "https://digest.test/", 48,
        ),
        "already_subscribed": notices.already_subscribed_template_context(
            "ada@example.org", "LoRA, activation sparsity",
            "https://digest.test/preferences/tok3", "https://digest.test/unsubscribe/tok2",
            "https://digest.test/",
        ),
    }
    return contexts[name]


# --- Reading the HTML like a mail client -----------------------------------------------------


BLOCK_TAGS = {"div", "p", "br", "td", "tr", "table", "li", "h1", "h2", "h3"}


class ParsedHTML(HTMLParser):
    """Tags, links and visible text (whitespace collapsed, as a browser shows it) of a page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.links: list[tuple[str, str]] = []  # (href, link text)
        self.title = ""
        self._text: list[str] = []
        self._open_link: tuple[str, list[str]] | None = None
        self._skip = 0  # inside <style>/<title>
        self._in_title = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in BLOCK_TAGS:
            self._text.append(" ")
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "title":
            self._in_title = True
        if tag == "a":
            self._open_link = (dict(attrs).get("href") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCK_TAGS:
            self._text.append(" ")
        if tag in ("style", "script"):
            self._skip -= 1
        if tag == "title":
            self._in_title = False
        if tag == "a" and self._open_link is not None:
            href, parts = self._open_link
            self.links.append((href, " ".join("".join(parts).split())))
            self._open_link = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._text.append(data)
            if self._open_link is not None:
                self._open_link[1].append(data)

    @property
    def text(self) -> str:
        return " ".join("".join(self._text).split())

    def hrefs_for(self, link_text: str) -> list[str]:
        return [href for href, text in self.links if text == link_text]

    def tag_names(self) -> set[str]:
        return {tag for tag, _ in self.tags}


@pytest.fixture
def digest_email() -> RenderedEmail:
    return render_digest(make_context())


# --- Every template renders ------------------------------------------------------------------


def test_template_names_list_every_email_folder() -> None:
    names = email_template_names()
    assert "digest" in names
    assert not any(name.startswith("_") for name in names)


@pytest.mark.parametrize("name", email_template_names())
def test_every_email_template_renders(name: str) -> None:
    email = render_email(name, sample_context(name))
    assert email.subject.strip() and "\n" not in email.subject
    assert email.text.strip()
    page = ParsedHTML(email.html)
    assert page.text and "html" in page.tag_names()


@pytest.mark.parametrize("name", email_template_names())
def test_opening_an_email_asks_no_outside_server_for_anything(name: str) -> None:
    """No web font, stylesheet or image from elsewhere: loading one would tell that server
    when (and that) the email was opened. The fonts are the readers' own (a system stack)."""
    import re

    html = render_email(name, sample_context(name)).html
    fetched = re.findall(r'(?:@import\s+url\(|<link[^>]+href=|src=)["\']?([^"\')\s>]+)', html)
    assert fetched == [], fetched
    assert "googleapis" not in html and "@font-face" not in html


def test_missing_variable_fails_loudly() -> None:
    context = sample_context("digest")
    del context["unsubscribe_url"]
    with pytest.raises(Exception, match="unsubscribe_url"):
        render_email("digest", context)


@pytest.mark.parametrize("name", ["../digest", "_base", "Digest", ""])
def test_render_email_refuses_names_that_are_not_email_folders(name: str) -> None:
    with pytest.raises(ValueError):
        render_email(name, {})


def test_environment_is_built_once() -> None:
    assert plain.email_environment() is plain.email_environment()


# --- The digest as a subscriber sees it ------------------------------------------------------


def test_subject_has_date_count_and_topics(digest_email: RenderedEmail) -> None:
    assert digest_email.subject == (
        "Paper Digest, 23 Nov: 10 new papers on LoRA, activation sparsity"
    )


def test_subject_trims_long_topics_and_counts_one_paper() -> None:
    email = render_digest(
        make_context(
            items=(make_item(),),
            topics="LoRA, activation sparsity, mixture of experts, speculative decoding, RLHF",
        )
    )
    assert email.subject == "Paper Digest, 23 Nov: 1 new paper on LoRA, activation sparsity…"


LONG_TOPICS = ("large language model agents, tool use, reasoning, planning, retrieval-augmented "
               "generation, mixture of experts")


@pytest.mark.parametrize("weekly", [False, True])
@pytest.mark.parametrize("trending", [False, True])
@pytest.mark.parametrize("count", [0, 1, 50])
def test_every_subject_stays_within_seventy_characters_whatever_the_topics(
    weekly: bool, trending: bool, count: int
) -> None:
    """Mail clients show about 70 characters of a subject: long topics are cut to fit, at a
    word, and the day's count is never what gets cut."""
    for topics in (LONG_TOPICS, "x" * 300, "LoRA, " * 100, "a\x07b " * 50):
        ctx = make_context(items=(make_item(),) * count, topics=topics,
                           trending_fallback=trending, weekly=weekly)
        subject = render_digest(ctx).subject
        assert len(subject) <= plain.SUBJECT_CHARS, subject
        assert subject.startswith("Your week in papers: " if weekly else "Paper Digest, 23 Nov: ")
        if count:
            assert f"{count} {'trending' if trending else 'new'} paper" in subject
            assert subject.endswith("…)" if trending else "…")


def test_a_weekly_digest_says_so_in_its_subject_and_preview() -> None:
    email = render_digest(make_context(weekly=True, topics="LoRA, activation sparsity"))
    assert email.subject == "Your week in papers: 10 new papers on LoRA, activation sparsity"
    empty = render_digest(make_context(items=(), weekly=True))
    assert empty.subject == "Your week in papers: no new papers this week"
    assert "No new papers on LoRA, activation sparsity this week" in empty.html


def test_html_header_and_preheader(digest_email: RenderedEmail) -> None:
    page = ParsedHTML(digest_email.html)
    assert page.title == "Paper Digest for 23 Nov 2026"
    assert "Paper Digest" in page.text
    assert "Monday, 23 November 2026" in page.text
    assert "10 new papers for your topics: LoRA, activation sparsity" in page.text
    # The hidden preview text comes first in the body.
    assert page.text.startswith(
        "10 new papers on LoRA, activation sparsity — first: Paper number 1"
    )


def test_html_cards_link_titles_and_show_authors_why_and_pdf(digest_email: RenderedEmail) -> None:
    page = ParsedHTML(digest_email.html)
    for i in range(1, 11):
        title = f"Paper number {i}"
        assert page.hrefs_for(title) == [f"https://huggingface.co/papers/2611.{i:05d}"]
    assert page.hrefs_for("PDF →") == [f"https://arxiv.org/pdf/2611.{i:05d}" for i in range(1, 11)]
    assert len(page.hrefs_for("Paper page →")) == 10
    assert "Ada Lovelace and Alan Turing" in page.text
    assert "Why: matches: lora, low-rank adaptation · trending: 212 upvotes" in page.text
    assert "212 upvotes · 14 comments · 21 Nov 2026" in page.text
    # Cards appear in rank order.
    positions = [page.text.index(f"Paper number {i} ") for i in range(1, 11)]
    assert positions == sorted(positions)


def test_footer_says_why_and_links_preferences_and_unsubscribe(
    digest_email: RenderedEmail,
) -> None:
    page = ParsedHTML(digest_email.html)
    assert (
        "You receive this because you subscribed to Paper Digest at ada@example.org "
        "with the topics “LoRA, activation sparsity”." in page.text
    )
    assert page.hrefs_for("Change preferences") == ["https://digest.test/preferences/tok123"]
    assert page.hrefs_for("Unsubscribe") == ["https://digest.test/unsubscribe/tok123"]
    assert "https://digest.test/" in dict(page.links)


FEEDBACK = "https://digest.test/feedback/tok9"
ARCHIVE = "https://digest.test/archive/tok7"


@pytest.mark.parametrize("tracking", [False, True])
def test_paper_links_are_direct_unless_the_reader_chose_click_tracking(tracking: bool) -> None:
    email = render_digest(make_context(feedback_url=FEEDBACK, click_tracking=tracking))
    page = ParsedHTML(email.html)
    direct, tracked = "https://huggingface.co/papers/2611.00001", f"{FEEDBACK}/1/open"
    assert page.hrefs_for("Paper number 1") == [tracked if tracking else direct]
    assert page.hrefs_for("PDF →")[0] == (
        f"{FEEDBACK}/1/pdf" if tracking else "https://arxiv.org/pdf/2611.00001")
    assert f"Paper page: {tracked if tracking else direct}\n" in email.text
    # "More / less like this" work either way: a vote is the reader's own act.
    assert page.hrefs_for("More like this")[0] == f"{FEEDBACK}/1/more"
    assert f"Less like this: {FEEDBACK}/1/less\n" in email.text
    assert ("/open" in email.html + email.text) is tracking
    # The footer says what is recorded, and where to change it.
    said = "notes the papers you open" if tracking else "we note nothing when you open one"
    assert said in page.text
    assert said in " ".join(email.text.split())
    privacy = "Turn click tracking off" if tracking else "Your privacy choices"
    assert page.hrefs_for(privacy) == ["https://digest.test/preferences/tok123"]


def test_view_in_browser_link_near_the_top_and_in_the_text_footer() -> None:
    email = render_digest(make_context(archive_url=ARCHIVE))
    page = ParsedHTML(email.html)
    assert page.hrefs_for("View in browser") == [ARCHIVE]
    assert page.text.index("View in browser") < page.text.index("Why:")  # in the header
    assert f"View in browser: {ARCHIVE}\n" in email.text
    without = render_digest(make_context())
    assert "View in browser" not in without.html + without.text


def test_text_part_has_the_same_papers_links_and_footer(digest_email: RenderedEmail) -> None:
    text = digest_email.text
    assert "Monday, 23 November 2026" in text
    for i in range(1, 11):
        assert f"{i}. Paper number {i}\n" in text
        assert f"Paper page: https://huggingface.co/papers/2611.{i:05d}\n" in text
        assert f"PDF: https://arxiv.org/pdf/2611.{i:05d}\n" in text
    assert "Ada Lovelace and Alan Turing" in text
    assert "Why: matches: lora, low-rank adaptation · trending: 212 upvotes" in text
    assert "Change preferences: https://digest.test/preferences/tok123\n" in text
    assert "Unsubscribe: https://digest.test/unsubscribe/tok123\n" in text
    assert "<" not in text  # plain text, no markup


def test_text_part_wraps_prose_but_never_urls() -> None:
    long_url = "https://example.org/papers/" + "x" * 90
    email = render_digest(make_context(items=(make_item(url=long_url, title="A " * 60),)))
    for line in email.text.splitlines():
        assert len(line) <= 72 or line.strip().endswith(long_url), line
    assert f"Paper page: {long_url}\n" in email.text


def test_trending_fallback_is_said_clearly() -> None:
    email = render_digest(make_context(trending_fallback=True))
    page = ParsedHTML(email.html)
    assert "No new papers matched your topics today (LoRA, activation sparsity)" in page.text
    assert "here are today's 10 trending papers instead" in page.text
    assert "No new papers matched your topics today" in " ".join(email.text.split())
    assert "10 trending papers" in email.subject
    assert "No new papers matched" not in ParsedHTML(render_digest(make_context()).html).text


def test_pdf_link_absent_without_pdf_url() -> None:
    email = render_digest(make_context(items=(make_item(pdf_url=None),)))
    page = ParsedHTML(email.html)
    assert page.hrefs_for("PDF →") == []
    assert page.hrefs_for("Paper page →") == ["https://huggingface.co/papers/2611.00001"]
    assert "PDF:" not in email.text


def test_unknown_upvotes_and_comments_are_left_out() -> None:
    email = render_digest(make_context(items=(make_item(upvotes=None, comments=None),)))
    assert "upvote" not in ParsedHTML(email.html).text.replace("trending: 212 upvotes", "")
    assert "comment" not in email.text


def test_abstract_is_shortened_at_a_word_boundary(digest_email: RenderedEmail) -> None:
    short = shorten(ABSTRACT)
    assert len(short) <= 281 and short.endswith("…")
    assert ABSTRACT.startswith(short[:-1])
    assert ABSTRACT[len(short) - 1] in " ,."  # the cut fell between words
    assert short in ParsedHTML(digest_email.html).text
    assert ABSTRACT not in ParsedHTML(digest_email.html).text
    assert shorten("Short abstract.") == "Short abstract."
    assert shorten("one two three four", 12) == "one two…"


def test_authors_are_cut_after_three() -> None:
    assert author_line(("A", "B", "C", "D")) == "A, B, C et al."
    assert author_line(("A", "B", "C")) == "A, B, C"
    assert author_line(("A",)) == "A"
    assert author_line(()) == ""


def test_unicode_survives_every_part() -> None:
    card = make_card(
        title="β-OPSD and Σ-Mem: naïve baselines",
        authors=("José Álvarez-Núñez", "Zoë Müller", "Søren Kierkegaard", "Łukasz Kaiser"),
    )
    email = render_digest(make_context(items=(make_item(card),), topics="Σ-Mem, β-OPSD"))
    page = ParsedHTML(email.html)
    assert page.hrefs_for("β-OPSD and Σ-Mem: naïve baselines")
    assert "José Álvarez-Núñez, Zoë Müller, Søren Kierkegaard et al." in page.text
    assert "β-OPSD and Σ-Mem: naïve baselines" in email.text
    assert "José Álvarez-Núñez, Zoë Müller, Søren Kierkegaard et al." in email.text
    assert email.subject.endswith("1 new paper on Σ-Mem, β-OPSD")


# --- Hostile input ---------------------------------------------------------------------------

HOSTILE_TITLE = "<script>alert(1)</script>\r\nBcc: victim@example.org"
HOSTILE_AUTHOR = '"><img src=x onerror=alert(2)>'
HOSTILE_TOPICS = "LoRA\r\nBcc: victim@example.org <script>alert(3)</script>"


@pytest.fixture
def hostile_email() -> RenderedEmail:
    cards = (
        make_card(1, title=HOSTILE_TITLE, authors=(HOSTILE_AUTHOR,), url="javascript:alert(4)"),
        make_card(2, url="data:text/html;base64,PHNjcmlwdD4=", pdf_url="JavaScript:alert(5)"),
        make_card(3, url="java\tscript:alert(6)", pdf_url='https://x.test/?a=1&b="><b>'),
        make_card(4, url='https://x.test/a"onmouseover="alert(7)', pdf_url="//x.test/nohttp"),
    )
    return render_digest(
        make_context(
            items=tuple(make_item(c) for c in cards),
            topics=HOSTILE_TOPICS,
            recipient="<b>ada</b>@example.org",
        )
    )


def test_hostile_strings_render_as_text(hostile_email: RenderedEmail) -> None:
    page = ParsedHTML(hostile_email.html)
    assert not {"script", "img", "b"} & page.tag_names()
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs), (
        "an event handler attribute got through"
    )
    assert "<script>alert(1)</script> Bcc: victim@example.org" in page.text
    assert HOSTILE_AUTHOR in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_email.html
    assert "<script" not in hostile_email.html.lower()


def test_hostile_urls_are_dropped_and_titles_shown_unlinked(hostile_email: RenderedEmail) -> None:
    page = ParsedHTML(hostile_email.html)
    hrefs = [href for href, _ in page.links]
    assert hrefs and all(h.startswith(("https://", "http://")) for h in hrefs), hrefs
    for i in (2, 3):
        assert f"Paper number {i}" in page.text
        assert page.hrefs_for(f"Paper number {i}") == []
    # An http(s) URL with quotes stays one attribute value, escaped.
    assert page.hrefs_for("Paper number 4") == ['https://x.test/a"onmouseover="alert(7)']
    assert page.hrefs_for("PDF →") == [
        "https://arxiv.org/pdf/2611.00001",  # card 1 keeps its good PDF link
        'https://x.test/?a=1&b="><b>',
    ]
    assert "javascript:" not in hostile_email.text.lower()
    assert "data:" not in hostile_email.text


def test_hostile_subject_and_topics_stay_on_one_line(hostile_email: RenderedEmail) -> None:
    subject = hostile_email.subject
    assert "\r" not in subject and "\n" not in subject
    assert subject.startswith("Paper Digest, 23 Nov: 4 new papers on LoRA")
    text_lines = hostile_email.text.splitlines()
    assert "1. <script>alert(1)</script> Bcc: victim@example.org" in text_lines
    assert not any(line.startswith("Bcc:") for line in text_lines)


def test_subject_collapses_unicode_line_separators() -> None:
    email = render_digest(make_context(topics="LoRA\u2028Bcc: x@y.z\x85more\tthings"))
    assert email.subject.isprintable()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://arxiv.org/abs/1", "https://arxiv.org/abs/1"),
        ("  http://example.org/x  ", "http://example.org/x"),
        ("HTTPS://EXAMPLE.ORG", "HTTPS://EXAMPLE.ORG"),
        ("javascript:alert(1)", ""),
        (" JaVaScRiPt:alert(1)", ""),
        ("java\nscript:alert(1)", ""),
        ("data:text/html,<script>", ""),
        ("vbscript:msgbox", ""),
        ("//evil.example/x", ""),
        ("/relative/path", ""),
        ("https://", ""),
        ("http://[::1", ""),
        (None, ""),
        ("", ""),
    ],
)
def test_safe_url(url: str | None, expected: str) -> None:
    assert safe_url(url) == expected


def test_digest_refuses_own_links_that_are_not_http() -> None:
    with pytest.raises(ValueError, match="unsubscribe_url"):
        render_digest(make_context(unsubscribe_url="javascript:alert(1)"))


# --- Mobile-friendly -------------------------------------------------------------------------


def test_html_is_mobile_friendly(digest_email: RenderedEmail) -> None:
    page = ParsedHTML(digest_email.html)
    viewport = [a for tag, a in page.tags if tag == "meta" and a.get("name") == "viewport"]
    assert viewport and "width=device-width" in (viewport[0].get("content") or "")
    # MJML's columns are full width below the breakpoint and take their share above it.
    assert "@media only screen and (min-width:480px)" in digest_email.html
    assert ".mj-column-per-100" in digest_email.html
    assert "max-width:600px" in digest_email.html


def test_empty_digest_still_renders() -> None:
    email = render_digest(make_context(items=()))
    assert email.subject == "Paper Digest, 23 Nov: no new papers today"
    assert "No new papers for your topics today" in ParsedHTML(email.html).text


def test_digest_without_topics_reads_naturally() -> None:
    email = render_digest(make_context(topics="  ", trending_fallback=True))
    page = ParsedHTML(email.html)
    assert email.subject == "Paper Digest, 23 Nov: 10 trending papers"
    assert "No new papers matched your topics today. As you asked" in page.text
    assert "subscribed to Paper Digest at ada@example.org." in page.text
    assert "“" not in email.text and "()" not in email.text


def test_safe_url_judges_each_link_whatever_it_judged_before() -> None:
    # Links that share a head are accepted faster once one passed; what follows the head
    # must still be a plain segment, or the whole URL is judged again.
    head = "https://digest.test/unsubscribe"
    assert safe_url(f"{head}/token.ABC-1") == f"{head}/token.ABC-1"
    assert safe_url(f"{head}/token.XYZ_2") == f"{head}/token.XYZ_2"
    assert safe_url(f"{head}/a\nb") == ""
    assert safe_url(f"{head}/a\x00b") == ""
    assert safe_url(f"{head}/ok ") == f"{head}/ok"
    assert safe_url("javascript:alert(1)/token") == ""
    assert safe_url("https:/" + "/host-only") == "https://host-only"
    assert safe_url("https:/" + "/") == ""


def test_one_line_printable_and_clean_subject_keep_their_rules_on_any_text() -> None:
    import random
    import re

    from digest.mail.message import _UNSAFE_IN_HEADER, clean_subject

    alphabet = ["a", "B", "7", " ", "  ", "\t", "\n", "\r", "\x00", "\x1f", "\x7f", "\x85",
                "\x9f", "\u00a0", "\u2028", "\u3000", "é", "·", "…", "<", "&"]
    control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
    rng = random.Random(5)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert one_line(text) == " ".join(text.split()), repr(text)
        assert printable(text) == control.sub("", text), repr(text)
        assert clean_subject(text) == " ".join(_UNSAFE_IN_HEADER.sub(" ", text).split())


@pytest.mark.parametrize("trending", [False, True])
def test_a_weekly_digest_speaks_of_the_week_in_both_parts(trending: bool) -> None:
    """A weekly reader reads "this week", never "today", in the HTML and the text alike."""
    email = render_digest(make_context(weekly=True, trending_fallback=trending))
    page = ParsedHTML(email.html)
    for part in (page.text, " ".join(email.text.split())):
        assert "today" not in part.lower(), part
        assert "You receive this weekly digest because" in part
        if trending:
            assert ("No new papers matched your topics this week (LoRA, activation sparsity). "
                    "As you asked, here are this week's 10 trending papers instead.") in part
        else:
            assert "This week's 10 new papers for your topics: LoRA, activation sparsity" in part
            assert "new since your last digest, none sent to you before" in part
    assert page.title == "Paper Digest, the week to 23 Nov 2026"
    assert "Weekly · Monday, 23 November 2026" in page.text
    assert email.text.startswith("PAPER DIGEST · WEEKLY · Monday, 23 November 2026\n")


def test_an_empty_weekly_digest_says_this_week_and_a_daily_one_today() -> None:
    weekly = render_digest(make_context(items=(), weekly=True))
    daily = render_digest(make_context(items=()))
    expected = "No new papers for your topics {}: LoRA, activation sparsity."
    for email, period in ((weekly, "this week"), (daily, "today")):
        assert expected.format(period) in ParsedHTML(email.html).text
        assert expected.format(period) in " ".join(email.text.split())
    assert "weekly" not in daily.text.lower() and "this week" not in daily.text
    assert "since your last digest" not in daily.text
