"""The per-day fast path renders exactly what the plain Jinja → MJML → HTML path renders."""

from __future__ import annotations

import itertools
import random
import shutil
from collections.abc import Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from jinja2 import Environment, FileSystemLoader

from digest.render import day, plain
from digest.render.content import DigestContext, DigestItem, PaperCard
from digest.render.day import DayRenderer
from digest.render.plain import SUBJECT_CHARS, TEMPLATES_DIR, render_digest
from digest.render.slots import UnfilledVariableError, body_variables, check_body_variables

DAY = date(2026, 11, 23)
SITE = "https://digest.test"
HOSTILE = [
    '<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "Tom & Jerry's <b>bold</b>",
    "line\r\nBcc: victim@example.com", "β-OPSD: Σ-Mem für Jörg — “quotes”", "{{ 7*7 }} {% raw %}",
    "pdslotwhyq7 and \x01\x02 control", "a" * 300,
]


def card(i: int, rng: random.Random) -> PaperCard:
    hostile = rng.random() < 0.3
    title = rng.choice(HOSTILE) if hostile else f"Paper {i}: low-rank adaptation at scale"
    return PaperCard(
        paper_id=i,
        title=title,
        authors=tuple(rng.choice([*HOSTILE, "Ada Lovelace", "Alan Turing"])
                      for _ in range(rng.randint(0, 5))),
        abstract=rng.choice(["", "We study LoRA. " * rng.randint(1, 40), rng.choice(HOSTILE)]),
        url=rng.choice([f"https://arxiv.org/abs/2611.{i:05d}", None, "javascript:alert(1)",
                        'https://x.test/?a=1&b="2"']),
        pdf_url=rng.choice([f"https://arxiv.org/pdf/2611.{i:05d}", None]),
        published_at=rng.choice([None, datetime(2026, 11, 22, tzinfo=timezone.utc)]),
        upvotes=rng.choice([None, 0, 212]),
        comments=rng.choice([None, 3]),
        # The daily-papers extras, compiled into each card once a day like the rest (drawn
        # apart, so that the digests drawn after the cards stay what they were).
        **extras(random.Random(f"extras {i}")),
    )


def extras(rng: random.Random) -> dict[str, object]:
    return dict(
        ai_summary=rng.choice([None, None, "LoRA in one line.", rng.choice(HOSTILE)]),
        github_repo=rng.choice([None, "https://github.com/ada/lora", "javascript:alert(1)"]),
        stars=rng.choice([None, 0, 7, 1234]),
        organization=rng.choice([None, "MIT", rng.choice(HOSTILE)]),
        older_than_window=rng.random() < 0.2,
    )


def context(rng: random.Random, cards: list[PaperCard]) -> DigestContext:
    count = rng.choice([0, 1, 2, 5, 10, 12])
    return DigestContext(
        day=DAY,
        recipient=rng.choice(["ada@example.org", "jörg@bücher.example", HOSTILE[1]]),
        topics=rng.choice(["", "LoRA, activation sparsity", rng.choice(HOSTILE)]),
        items=tuple(
            DigestItem(card=c, reasons=tuple(rng.sample(
                ["matches: LoRA", "trending: 212 upvotes", rng.choice(HOSTILE)],
                rng.randint(0, 2))), score=1.0)
            for c in rng.sample(cards, count)
        ),
        preferences_url=f"{SITE}/preferences/tok-{rng.randrange(10**6)}",
        unsubscribe_url=f"{SITE}/unsubscribe/tok&<{rng.randrange(10**6)}>",
        site_url=SITE,
        trending_fallback=rng.random() < 0.25,
        feedback_url=rng.choice(["", f"{SITE}/feedback/tok&<{rng.randrange(10**6)}>"]),
        click_tracking=rng.random() < 0.5,
        archive_url=rng.choice(["", f"{SITE}/archive/tok&<{rng.randrange(10**6)}>"]),
        weekly=rng.random() < 0.3,  # "this week", not "today": a skeleton of its own
    )


def test_fast_path_is_identical_to_the_plain_render_for_many_digests() -> None:
    rng = random.Random(20261123)
    cards = [card(i, rng) for i in range(40)]
    renderer = DayRenderer(DAY, SITE)
    for _ in range(150):
        ctx = context(rng, cards)
        fast, plain = renderer.render(ctx), render_digest(ctx)
        assert fast.subject == plain.subject
        assert fast.text == plain.text
        assert fast.html == plain.html
    assert renderer.fallbacks == 0  # every card fit the skeleton: the shortcut was used


def test_cards_compiled_together_are_the_cards_compiled_one_by_one() -> None:
    # A digest's new cards go through MJML in one compile and are cut apart at each card's
    # opening tags: every hostile card, with and without a why line, in every variant, must
    # come out as it does compiled alone.
    class Counting(DayRenderer):
        compiles = 0

        def _compile(self, context: Mapping[str, Any]) -> str:
            self.compiles += 1
            return super()._compile(context)

    rng = random.Random(20261207)
    cards = [card(i, rng) for i in range(24)]
    together, alone = Counting(DAY, SITE), DayRenderer(DAY, SITE)
    for variant in itertools.islice(itertools.product([False, True], repeat=7), 0, None, 9):
        variant = day.Variant(*variant)
        items = tuple(DigestItem(card=c, reasons=("matches: LoRA",) if i % 3 else (), score=1.0)
                      for i, c in enumerate(cards))
        together._skeleton(variant)
        before = together.compiles
        together._compile_cards(items, variant)
        assert together.compiles == before + 1  # all of them in one compile, none again alone
        for item in items:
            key = (item.card.paper_id, bool(item.why), variant)
            assert together._cards[key] == alone._card(item.card, bool(item.why), variant)
    assert together.fallbacks == alone.fallbacks == 0


# What quoted-printable treats specially: "=", a lone ".", spaces and tabs at a line's end,
# lines past 76 characters, bytes beyond ASCII at the soft-break column.
QP_HOSTILE = ["1 = 2 =3D", ".", "trailing space ", "tab\tend\t", "é" * 90, "x" * 75 + "é",
              "y" * 76 + " =", "=" * 100, "\u2028 line separator \x85 next line"]


def test_the_text_parts_quoted_printable_is_the_whole_text_encoded_at_once() -> None:
    """The renderer encodes each card's own lines once a day and joins them per reader with
    the reader's lines: byte for byte what encoding the whole text gives, in the message.
    (Also the text itself, with a reader's values that hold control characters.)"""
    from dataclasses import replace

    from digest.mail.message import OutgoingEmail
    from digest.mail.mime import fast_message_bytes, quoted_printable

    from .conftest import make_settings

    rng = random.Random(20261207)
    cards = [card(i, rng) for i in range(40)]
    cards += [replace(card(40 + i, rng), title=rng.choice(QP_HOSTILE), abstract=" ".join(
        rng.choice(QP_HOSTILE) for _ in range(rng.randint(1, 9))))
        for i in range(20)]
    renderer = DayRenderer(DAY, SITE)
    settings = make_settings(Path("."))
    encoded = 0
    for n in range(300):
        ctx = context(rng, cards)
        if rng.random() < 0.3:
            ctx = replace(ctx, topics=rng.choice(QP_HOSTILE), feedback_url=f"{SITE}/f/{'=' * n}")
        rendered = renderer.render(ctx)
        assert rendered.text == render_digest(ctx).text
        if rendered.text_quoted is None:
            # Only a digest without cards, or one whose reader's values held control characters
            # (which every door removes, and which is tidied whole), is left for MIME to encode.
            assert not (ctx.items and ctx.topics.isprintable() and ctx.recipient.isprintable())
            continue
        encoded += 1
        assert rendered.text_quoted == quoted_printable(rendered.text)
        email = OutgoingEmail(to="ada@example.org", subject="s", html="<p>x</p>",
                              text=rendered.text, message_id="<1@digest.test>",
                              unsubscribe_url=f"{SITE}/u", date=datetime(2026, 11, 23),
                              text_quoted=rendered.text_quoted)
        assert fast_message_bytes(settings, email) == fast_message_bytes(
            settings, replace(email, text_quoted=None))
    assert encoded > 200


def test_fast_path_refuses_a_digest_without_a_working_unsubscribe_link() -> None:
    rng = random.Random(1)
    ctx = context(rng, [card(i, rng) for i in range(20)])
    bad = DigestContext(**{**ctx.__dict__, "unsubscribe_url": "javascript:alert(1)"})
    with pytest.raises(ValueError, match="unsubscribe_url"):
        DayRenderer(DAY, SITE).render(bad)


def test_wrap_is_textwraps_fill_without_breaking_words() -> None:
    import textwrap

    from digest.render.filters import one_line, wrap

    rng = random.Random(3)
    vocabulary = ["a", "LoRA", "low-rank", "https://arxiv.org/abs/2611.00001v2", "β-OPSD",
                  "x" * 90, "word", "—", "“quoted”", "tab\there", "new\nline", ""]
    for _ in range(2000):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 40)))
        # Also lines narrower than their indent or their first word (each word alone then).
        width, indent = rng.choice([2, 6, 20, 40, 72]), rng.choice([0, 3, 4, 8])
        first = rng.choice([None, "1. ", "10. ", "100. "])
        pad = " " * indent
        expected = textwrap.fill(one_line(text), width=width, initial_indent=
                                 pad if first is None else first, subsequent_indent=pad,
                                 break_long_words=False, break_on_hyphens=False)
        assert wrap(text, width, indent, first) == expected, (text, width, indent, first)


def test_subject_and_preview_lines_fill_each_readers_topics_into_the_days_frame() -> None:
    rng = random.Random(7)
    cards = [card(i, rng) for i in range(20)]
    renderer = DayRenderer(DAY, SITE)
    base = context(rng, cards)
    items = tuple(DigestItem(card=c, reasons=("matches: LoRA",), score=1.0) for c in cards[:3])
    for topics in ["LoRA", "a \x00 b", "  spaced\t out  ", "x" * 200, "", "\x01", "Σ, β; γ\nδ",
                   "{{ topics }}", renderer.slot["topics_short"][:-1]]:
        for fallback, weekly in itertools.product((False, True), (False, True)):
            ctx = DigestContext(**{**base.__dict__, "topics": topics, "items": items,
                                   "trending_fallback": fallback, "weekly": weekly})
            fast, plain = renderer.render(ctx), render_digest(ctx)
            assert fast.subject == plain.subject, topics
            assert len(fast.subject) <= SUBJECT_CHARS, fast.subject
            assert fast.html == plain.html, topics  # the preview line is in the page
    # subject and preview, topics or not, fallback or not, weekly or not
    assert len(renderer._lines) <= 2 * 2 * 2 * 2


def templates_with(tmp_path: Path, template: str, addition: str) -> Environment:
    """The email environment over a copy of templates/ with `addition` put into `template`."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, copy)
    path = copy / template
    source = path.read_text()
    # Inside the macro of a card template; after everything else in a body.
    marker = "{% endmacro %}" if "{% endmacro %}" in source else None
    path.write_text(source.replace(marker, addition + marker) if marker else source + addition)
    return plain.email_environment().overlay(loader=FileSystemLoader(copy))


def test_the_digest_templates_read_only_variables_the_day_renderer_fills() -> None:
    env = plain.email_environment()
    check_body_variables(env)
    assert set(body_variables(env)) == {
        "email/digest/body.mjml", "email/digest/body.txt", "email/_base.mjml",
        "email/digest/_card.mjml",
    }


@pytest.mark.parametrize("template", [
    "email/digest/body.mjml", "email/digest/body.txt", "email/_base.mjml",
    "email/digest/_card.mjml",
])
def test_a_template_variable_the_day_renderer_cannot_fill_stops_it_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    env = templates_with(tmp_path, template, "{{ reader_name }}")
    with pytest.raises(UnfilledVariableError, match=f"templates/{template} reads reader_name"):
        check_body_variables(env)
    monkeypatch.setattr(day, "email_environment", lambda: env)
    with pytest.raises(UnfilledVariableError, match="reader_name"):
        DayRenderer(DAY, SITE)


def test_a_template_included_by_a_name_chosen_at_render_time_cannot_be_checked(
    tmp_path: Path,
) -> None:
    env = templates_with(tmp_path, "email/digest/body.txt", "{% include extra_part %}")
    with pytest.raises(UnfilledVariableError, match="chosen at render time"):
        check_body_variables(env)


def test_variant_names_what_chooses_a_skeleton() -> None:
    rng = random.Random(5)
    ctx = context(rng, [card(i, rng) for i in range(20)])
    ctx = DigestContext(**{**ctx.__dict__, "items": (), "topics": "LoRA", "feedback_url": ""})
    renderer = DayRenderer(DAY, SITE)
    renderer.render(ctx)
    assert list(renderer._skeletons) == [day.Variant(
        empty=True, trending_fallback=ctx.trending_fallback, has_topics=True, has_feedback=False,
    )]


@pytest.mark.parametrize("misread", ["{{ count }}", "{% if count == 1 %}one{% endif %}",
                                     "{{ count | plural('paper') }}"])
def test_the_body_may_read_count_only_as_zero_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, misread: str
) -> None:
    env = templates_with(tmp_path, "email/digest/body.txt", misread)
    monkeypatch.setattr(day, "email_environment", lambda: env)
    rng = random.Random(9)
    ctx = context(rng, [card(i, rng) for i in range(20)])
    with pytest.raises(UnfilledVariableError, match="count_phrase"):
        DayRenderer(DAY, SITE).render(ctx)
