"""Render many digests of one day fast: the skeleton compiled once per day, filled per subscriber.

`DayRenderer` gives byte for byte what `plain.render_digest` gives (tests/test_render_fast.py
proves it on many random and hostile digests); `slots` says which template variable each
placeholder stands for, and the renderer refuses to start when a template reads one it does not
know.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any, NamedTuple

from jinja2 import meta
from markupsafe import escape
from mjml import mjml2html

from ..mail.mime import quoted_printable
from .content import DigestContext, DigestItem, PaperCard
from .filters import TEXT_WIDTH, one_line, printable, wrap
from .plain import (
    RenderedEmail,
    ascii_body,
    ascii_references,
    check_own_links,
    digest_template_context,
    email_environment,
    fit_line,
    render_digest,
    render_line,
    tidy_text,
    why_block,
)
from .slots import (
    PER_SUBSCRIBER,
    SLOT_NAMES,
    UnfilledVariableError,
    check_body_variables,
    fill,
    segments,
)

# The per-subscriber values, in the order the renderer fills them.
_SUBSCRIBER_VALUES = tuple(sorted(PER_SUBSCRIBER))


class Variant(NamedTuple):
    """What decides which compiled skeleton a digest uses: one of each per day at most."""

    empty: bool  # no papers
    trending_fallback: bool
    has_topics: bool
    has_feedback: bool
    tracking: bool = False  # paper links through the feedback redirect (only with feedback)
    has_archive: bool = False  # a "View in browser" link
    weekly: bool = False  # a weekly reader's digest: "this week", not "today"


# Text of the plain-text part as runs of whole lines. A run that holds nothing of a reader is
# (its text, its quoted-printable body, True), encoded once a day; one that holds a reader's
# values is (its segments, None, shared), filled and encoded per reader, or, `shared` (values
# that recur across readers: a card's number, its why lines), encoded once per filled text.
# Quoted-printable starts afresh at each line end, so the runs' bodies joined are the whole
# text's (`mail.mime.quoted_printable`; tests/test_render_fast.py checks it).
_Runs = tuple[tuple[Any, bytes | None, bool], ...]


def _line_runs(
    text: str, slots: Mapping[str, str], prefix: str, personal: frozenset[str]
) -> _Runs:
    """`text` (whole lines: it ends with a line end) cut into runs of lines with and without a
    slot (markers start with `prefix`); a run holding a slot among `personal` is not shared."""
    if not text.endswith("\n"):
        raise ValueError("runs of lines are cut from text that ends with a line end")
    runs: list[tuple[Any, bytes | None, bool]] = []
    for slotted, lines in itertools.groupby(text.split("\n")[:-1], lambda line: prefix in line):
        joined = "".join(line + "\n" for line in lines)
        if slotted:
            parts = segments(joined, slots)
            runs.append((parts, None, personal.isdisjoint(parts[1::2])))
        else:
            runs.append((joined, quoted_printable(joined), True))
    return tuple(runs)


@dataclass(frozen=True)
class _TextFrame:
    """The plain-text part around the cards, compiled with slots. Its wrapped paragraphs that
    hold a subscriber's values (topics, address) are kept unwrapped, as slotted text with the
    `wrap` arguments, and wrapped per subscriber once filled."""

    segments: tuple[str, ...]  # literal, slot, literal, ... (slots: values, "cards", paragraphs)
    paragraphs: dict[str, tuple[tuple[str, ...], tuple[int, int, str | None]]]
    # The same text before and after the cards as runs of lines (`_line_runs`); None when
    # the cards are not a line of their own (then MIME encodes each digest's text whole).
    runs: tuple[_Runs, _Runs] | None = None
    values: tuple[str, ...] = field(init=False)  # the subscriber's values the segments show
    wrapped: tuple[str, ...] = field(init=False)  # the subscriber's values the paragraphs hold

    def __post_init__(self) -> None:
        in_paragraphs = tuple(name for parts, _ in self.paragraphs.values() for name in parts[1::2])
        object.__setattr__(self, "values", _slot_names(self.segments[1::2], _SUBSCRIBER_VALUES))
        object.__setattr__(self, "wrapped", _slot_names(in_paragraphs, _SUBSCRIBER_VALUES))


@dataclass(frozen=True)
class _Skeleton:
    """A compiled digest without cards, split where cards go, with slots to fill."""

    head: tuple[str, ...]  # literal, slot, literal, slot, ... (even: literal, odd: slot name)
    tail: tuple[str, ...]
    offset: int  # where cards start in the compiled HTML
    bare: str  # the compiled skeleton with its slots, no cards
    # How a compiled card starts (its first tags, up to the first text or slot): where cards
    # compiled together are cut apart. "" if it cannot tell.
    card_opening: str = ""
    values: tuple[str, ...] = field(init=False)  # the subscriber's values head and tail show

    def __post_init__(self) -> None:
        slots = self.head[1::2] + self.tail[1::2]
        object.__setattr__(self, "values", _slot_names(slots, _SUBSCRIBER_VALUES))


# Why lines kept at most per cache (a 10,000-reader synthetic day has about 4,000, some 300
# bytes each: at most ~15 MB a cache); when full, a cache starts again.
_WHY_CACHE = 50_000


def _slot_names(slots: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of `names` are among `slots` (a part's slot names): only those are filled."""
    return tuple(name for name in names if name in slots)


class _PaperCount:
    """`count` while a skeleton compiles: the body may only ask whether it is zero (the count a
    reader sees is `count_phrase`, a slot). Any other use would compile one subscriber's count
    into every digest, so it fails the compile instead."""

    def __init__(self, zero: bool) -> None:
        self._zero = zero

    def __eq__(self, other: object) -> bool:
        if other != 0:
            raise _count_misread()
        return self._zero

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __bool__(self) -> bool:
        return not self._zero

    def __str__(self) -> str:
        raise _count_misread()

    def __format__(self, spec: str) -> str:
        raise _count_misread()

    __hash__ = None  # type: ignore[assignment]


def _count_misread() -> UnfilledVariableError:
    return UnfilledVariableError(
        "the digest body reads `count` other than as zero or not, which the day renderer "
        "cannot fill per subscriber: print `count_phrase`, or compare `count == 0`"
    )


def _html(value: str) -> str:
    """A value as Jinja's autoescape prints it (finalize, then escape), in the body's ASCII
    (`ascii_body`)."""
    text = printable(value)
    # Most values (links, counts, most addresses) have nothing to escape: skip markupsafe's
    # Python-level wrapper for them. Only a plain str: escape leaves a Markup as it is.
    if type(text) is not str or ("&" in text or "<" in text or ">" in text or '"' in text
                                 or "'" in text):
        text = str(escape(text))
    return ascii_references(text)


def _opening_tags(unit: str) -> str:
    """The run of tags a compiled card starts with, to its first text (`tr><td ...><div ...>`:
    a unit starts inside its first tag, since the skeleton's head and the first card share
    its "<"). Card text is escaped, so this run of tags never occurs inside a card."""
    end = unit.find(">") + 1
    while end and unit.startswith("<", end):
        end = unit.find(">", end) + 1
    return unit[:end]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on equal prefixes: C-speed comparisons, not a char loop
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class DayRenderer:
    """Render many digests of one day fast, identical to `render_digest`.

    Per day (lazily, once each): the MJML skeleton of each digest variant is compiled with
    placeholders for the subscriber's values, and each paper's card is compiled once and cut
    out of a one-card digest. Per subscriber only the placeholders are filled (escaped exactly
    as Jinja's autoescape does) and the cards are joined. If a compiled card does not fit the
    skeleton as expected, that digest falls back to `render_digest`, so correctness never
    depends on the shortcut. A template variable the renderer cannot fill per subscriber
    stops it at construction (`slots.check_body_variables`).
    """

    def __init__(self, day: date, site_url: str) -> None:
        check_body_variables(email_environment())
        self.day = day
        self.site_url = site_url
        # Random per renderer, so no title or address from outside can contain a marker.
        self._marker_prefix = f"pd{secrets.token_hex(6)}"
        self.slot = {name: self._marker_prefix + name for name in SLOT_NAMES}
        self._skeletons: dict[Variant, _Skeleton] = {}
        self._cards: dict[tuple[int, bool, Variant], tuple[str, ...] | None] = {}
        self._text_frames: dict[Variant, _TextFrame] = {}
        self._html_why: dict[str, str] = {}
        # A card's text as runs of lines, those of the card alone encoded (`_Runs`).
        self._text_cards: dict[tuple[int, int, bool, bool, bool], _Runs] = {}
        self._why: dict[tuple[str, int], str] = {}  # (why line, digits of its number)
        self._quoted: dict[str, bytes] = {}  # a card's numbered or why lines, encoded
        self._lines: dict[tuple[object, ...], tuple[str, ...]] = {}
        self.fallbacks = 0

    def render(self, ctx: DigestContext) -> RenderedEmail:
        """`render_digest(ctx)`, from the day's compiled parts."""
        check_own_links(ctx)
        context = digest_template_context(ctx, with_cards=False, line=self.line)
        html = self.html(ctx, context)
        if html is None:
            self.fallbacks += 1
            return render_digest(ctx)
        text, quoted = self.text_and_quoted(ctx, context)
        return RenderedEmail(subject=self.line("subject", context), html=html, text=text,
                             text_quoted=quoted)

    def line(self, name: str, context: Mapping[str, Any]) -> str:
        """`render_line`, from a frame rendered once per day for each value of the variables
        the template reads, but for the subscriber's own topics: a slot, filled here."""
        has_topics = bool(context["topics_short"])
        try:
            key = (name, has_topics, *(context.get(v) for v in _line_variables(name)))
            frame = self._lines.get(key)
        except TypeError:  # a variable that cannot be a key: no shortcut
            return render_line(name, context)
        if frame is None:
            marker = self.slot["topics_short"]
            text = render_line(name, {**context, "topics_short": marker if has_topics else ""},
                               fitted=False)
            frame = self._lines[key] = segments(text, {"topics_short": marker})
        if len(frame) == 1:
            return frame[0]

        def filled(topics: str) -> str:
            # As the template prints it (finalize), then collapsed as `render_line` does.
            return one_line(fill(frame, {"topics_short": str(printable(topics))}))

        topics = context["topics_short"]
        return fit_line(name, filled(topics), topics, filled)

    def html(self, ctx: DigestContext, context: dict[str, Any]) -> str | None:
        """The HTML part from the day's compiled skeleton and cards; None if a card won't fit.
        (A card's why line recurs across readers: it is escaped once.)"""
        variant = self._variant(ctx, context)
        skeleton = self._skeleton(variant)
        values = {}
        for name in skeleton.values:
            values[name] = _html(context[name])
        feedback = _html(context["feedback_href"])
        cards = self._cards
        whys = self._html_why
        if len(whys) > _WHY_CACHE:  # a day's why lines are many, but not without bound
            whys.clear()
        # One list for the whole part, joined once: each card's literals and slots go in as
        # compiled, then its slots (the odd places) are replaced by the reader's values.
        parts = [fill(skeleton.head, values)]
        slots = {"feedback_href": feedback}
        for item in ctx.items:
            if (item.card.paper_id, bool(item.why), variant) not in cards:
                self._compile_cards(ctx.items, variant)
                break
        for rank, item in enumerate(ctx.items, start=1):
            why = item.why
            key = (item.card.paper_id, bool(why), variant)
            unit = cards[key] if key in cards else self._card(item.card, bool(why), variant)
            if unit is None:
                return None
            html_why = whys.get(why)
            if html_why is None:
                html_why = whys[why] = _html(why)
            slots["rank"] = str(rank)
            slots["why"] = html_why
            start = len(parts)
            parts += unit
            for i in range(start + 1, len(parts), 2):
                parts[i] = slots[parts[i]]
        parts.append(fill(skeleton.tail, values))
        return "".join(parts)

    def compiled(
        self, ctx: DigestContext, context: dict[str, Any]
    ) -> tuple[_Skeleton, list[tuple[str, ...]]] | None:
        """The day's compiled skeleton for this digest's variant and each of its cards (with
        their slots), compiling what is not yet; None if a card does not fit the skeleton."""
        variant = self._variant(ctx, context)
        skeleton = self._skeleton(variant)
        units = []
        for item in ctx.items:
            unit = self._card(item.card, bool(item.why), variant)
            if unit is None:
                return None
            units.append(unit)
        return skeleton, units

    def text_and_quoted(
        self, ctx: DigestContext, context: dict[str, Any]
    ) -> tuple[str, bytes | None]:
        """The plain-text part, and its quoted-printable body as `mail.mime` would encode it
        (None when the frame does not give the cards lines of their own: MIME encodes it).

        The frame and each paper's text were rendered, wrapped and tidied once per day; per
        subscriber the frame's values and wrapped paragraphs are filled in and the cards
        joined, with the reader's feedback links put in last. The lines that hold nothing of
        a reader were encoded once a day too (`_Runs`); only the reader's own are encoded
        here."""
        frame = self._text_frame(self._variant(ctx, context))
        raw = {}
        for name in frame.wrapped:
            raw[name] = context[name]
        values = {}
        for name in frame.values:
            values[name] = str(printable(context[name]))
        untidy = False
        for name, (parts, (width, indent, first)) in frame.paragraphs.items():
            # As in the template: the text is joined raw, wrapped, then printed.
            wrapped = wrap(fill(parts, raw), width, indent, first)
            values[name] = str(printable(wrapped))
            # A control character printing removed may leave a space at a line's end, which
            # the plain path's tidying takes away: tidy this digest's text whole (rare: every
            # door removes control characters from what readers type).
            untidy = untidy or len(values[name]) != len(wrapped)
        text: list[str] = []
        quoted: list[bytes] = []
        if frame.runs is None or untidy:
            self._cards_text(ctx, text, quoted)
            values["cards"] = "".join(text)
            whole = fill(frame.segments, values)
            return (tidy_text(whole) if untidy else whole), None
        head, tail = frame.runs
        self._fill_runs(head, values, text, quoted)
        self._cards_text(ctx, text, quoted)
        self._fill_runs(tail, values, text, quoted)
        return "".join(text), b"".join(quoted)

    def _fill_runs(
        self, runs: _Runs, values: Mapping[str, str], text: list[str], quoted: list[bytes]
    ) -> None:
        """Append the runs' text, filled with `values`, and its quoted-printable body."""
        encoded = self._quoted
        for part, part_quoted, shared in runs:
            if part_quoted is not None:  # lines of no reader's, encoded once a day
                text.append(part)
                quoted.append(part_quoted)
                continue
            filled = fill(part, values)
            text.append(filled)
            if shared:
                part_quoted = encoded.get(filled)
                if part_quoted is None:
                    part_quoted = encoded[filled] = quoted_printable(filled)
            else:
                part_quoted = quoted_printable(filled)
            quoted.append(part_quoted)

    @staticmethod
    def _variant(ctx: DigestContext, context: Mapping[str, Any]) -> Variant:
        # Built as its tuple: this runs twice a digest, and NamedTuple's keyword constructor
        # is a Python function that costs more than the tuple.
        has_feedback = bool(context["feedback_href"])
        return tuple.__new__(Variant, (not ctx.items, ctx.trending_fallback,
                                       bool(context["topics"]), has_feedback,
                                       ctx.click_tracking and has_feedback,
                                       bool(context["archive_href"]), ctx.weekly))

    # -- per day, once each ------------------------------------------------------------------

    def _slot_context(self, variant: Variant) -> dict[str, Any]:
        """The body templates' context for a variant: every variable `slots` accounts for,
        the per-subscriber ones as their slots; nothing of any one subscriber."""
        slot = self.slot
        return {
            **{name: slot[name] for name in _SUBSCRIBER_VALUES},
            "topics": slot["topics"] if variant.has_topics else "",
            "feedback_href": slot["feedback_href"] if variant.has_feedback else "",
            "archive_href": slot["archive_href"] if variant.has_archive else "",
            "archive_url": slot["archive_url"] if variant.has_archive else "",
            "count": _PaperCount(variant.empty),
            "trending_fallback": variant.trending_fallback,
            "click_tracking": variant.tracking,
            "weekly": variant.weekly,
            "day": self.day,
            "site_url": self.site_url,
            "items": (),
            "rank_slot": slot["rank"],
            "cards_text": "" if variant.empty else slot["cards"],
        }

    def _text_frame(self, variant: Variant) -> _TextFrame:
        """body.txt rendered with slots; `wrap` on text holding a slot is deferred (recorded,
        a paragraph slot left in its place), since where its lines break depends on the values."""
        frame = self._text_frames.get(variant)
        if frame is not None:
            return frame
        paragraphs: dict[str, tuple[tuple[str, ...], tuple[int, int, str | None]]] = {}
        slots = dict(self.slot)
        markers = tuple(self.slot.values())

        def deferred_wrap(text: object, width: int = TEXT_WIDTH, indent: int = 0,
                          first: str | None = None) -> str:
            text = str(text)
            if not any(marker in text for marker in markers):
                return wrap(text, width, indent, first)
            name = f"paragraph{len(paragraphs)}"
            slots[name] = self._marker_prefix + name
            paragraphs[name] = (segments(text, self.slot), (width, indent, first))
            return slots[name]

        env = email_environment().overlay()
        env.filters["wrap"] = deferred_wrap
        body = env.get_template("email/digest/body.txt").render(self._slot_context(variant))
        tidied = tidy_text(body)
        frame = _TextFrame(segments(tidied, slots), paragraphs,
                           self._frame_runs(tidied, slots))
        self._text_frames[variant] = frame
        return frame

    def _frame_runs(self, tidied: str, slots: Mapping[str, str]) -> tuple[_Runs, _Runs] | None:
        """The frame before and after the cards as runs of lines, if the cards are lines of
        their own; every slot of the frame is the reader's own."""
        head, *tail = tidied.split(self.slot["cards"])
        if len(tail) != 1 or not head.endswith("\n") or not tail[0].startswith("\n") \
                or not tail[0].endswith("\n"):
            return None
        personal = frozenset(slots)
        return (_line_runs(head, slots, self._marker_prefix, personal),
                _line_runs(tail[0], slots, self._marker_prefix, personal))

    def _compile(self, context: Mapping[str, Any]) -> str:
        mjml = email_environment().get_template("email/digest/body.mjml").render(context)
        return ascii_body(str(mjml2html(mjml, disable_comments=True)))

    def _skeleton(self, variant: Variant) -> _Skeleton:
        if variant not in self._skeletons:
            slots = self._slot_context(variant)
            bare = self._compile(slots)
            probe = PaperCard(0, "probe", ("A",), "probe", "https://probe.invalid", None, None)
            one = self._compile({**slots, "items": (_SlotItem(probe, self.slot["why"]),)})
            offset = _common_prefix(bare, one)
            probe_unit = one[offset : len(one) - (len(bare) - offset)]
            self._skeletons[variant] = _Skeleton(
                head=segments(bare[:offset], self.slot),
                tail=segments(bare[offset:], self.slot),
                offset=offset,
                bare=bare,
                card_opening=_opening_tags(probe_unit),
            )
        return self._skeletons[variant]

    def _card(self, card: PaperCard, has_why: bool, variant: Variant) -> tuple[str, ...] | None:
        key = (card.paper_id, has_why, variant)
        if key not in self._cards:
            self._cards[key] = self._compiled_cards([(card, has_why)], variant)[0]
        return self._cards[key]

    def _compile_cards(self, items: Sequence[DigestItem], variant: Variant) -> None:
        """Compile the cards of `items` not compiled yet, all in one MJML compile: most of a
        compile is the skeleton around the cards, so a digest's new cards cost about one card
        together (the first readers of a day bring ten new cards each)."""
        wanted: dict[tuple[int, bool, Variant], tuple[PaperCard, bool]] = {}
        for item in items:
            key = (item.card.paper_id, bool(item.why), variant)
            if key not in self._cards:
                wanted.setdefault(key, (item.card, bool(item.why)))
        if wanted:
            units = self._compiled_cards(list(wanted.values()), variant)
            self._cards.update(zip(wanted, units, strict=True))

    def _compiled_cards(
        self, cards: Sequence[tuple[PaperCard, bool]], variant: Variant
    ) -> list[tuple[str, ...] | None]:
        """Each (card, with a why line) compiled into the variant's skeleton, cut out, as
        segments with slots; a card that does not fit the skeleton is None.

        Compiled together, the cards come out one after the other, each starting with the
        skeleton's own card opening (the probe's, up to its first tag's end): the output is
        cut there. Should the cut not give one unit per card (a card whose compiled HTML
        differs in shape), each is compiled alone instead."""
        skeleton = self._skeleton(variant)
        items = tuple(_SlotItem(card, self.slot["why"] if has_why else "")
                      for card, has_why in cards)
        out = self._compile({**self._slot_context(variant), "items": items})
        head, tail = skeleton.bare[: skeleton.offset], skeleton.bare[skeleton.offset :]
        fits = out.startswith(head) and out.endswith(tail) and len(out) > len(skeleton.bare)
        middle = out[len(head) : len(out) - len(tail)] if fits else ""
        if len(cards) == 1:
            return [segments(middle, self.slot) if fits else None]
        pieces = middle.split(skeleton.card_opening) if skeleton.card_opening else []
        if len(pieces) != len(cards) + 1 or pieces[0]:
            return [self._compiled_cards([one], variant)[0] for one in cards]
        return [segments(skeleton.card_opening + piece, self.slot) for piece in pieces[1:]]

    def _cards_text(self, ctx: DigestContext, text: list[str], quoted: list[bytes]) -> None:
        """Append the cards of the text part and their quoted-printable body: each card's
        text was wrapped (and its lines of no reader's encoded) once per day; per reader only
        its number, why lines and feedback links go in. A why line, wrapped and printed, is
        kept for the next reader."""
        if not ctx.items:
            return
        has_feedback = bool(ctx.feedback_url)
        values = {"feedback_href": str(printable(ctx.feedback_url))}
        tracking = ctx.click_tracking and has_feedback
        texts = self._text_cards
        whys = self._why
        for kept in (whys, self._quoted):
            if len(kept) > _WHY_CACHE:
                kept.clear()
        for rank, item in enumerate(ctx.items, 1):
            why = item.why
            digits = 1 if rank < 10 else len(str(rank))
            key = (item.card.paper_id, digits, bool(why), has_feedback, tracking)
            runs = texts.get(key) or self._card_text(item.card, key)
            values["rank"] = str(rank)
            if why:
                lines = whys.get((why, digits))
                if lines is None:
                    lines = whys[why, digits] = str(printable(why_block(why, digits + 2)))
                values["why"] = lines
            self._fill_runs(runs, values, text, quoted)
            text.append("\n")  # a blank line between cards
            quoted.append(b"\n")
        text.pop()  # none after the last: the frame has it
        quoted.pop()

    def _card_text(self, card: PaperCard, key: tuple[int, int, bool, bool, bool]) -> _Runs:
        """The card's text of `key` (paper, digits of its number, whether it has a why line and
        feedback links, tracking) wrapped and tidied, as runs of lines: its number, why lines
        and feedback links are slots."""
        _, digits, has_why, has_feedback, tracking = key
        number = "9" * digits + ". "  # the same width as the real number
        module = email_environment().get_template("email/digest/_card.txt").module
        macro = module.paper_card  # type: ignore[attr-defined]
        block = tidy_text(str(macro(card, number, self.slot["why"] if has_why else "",
                                    self.slot["feedback_href"] if has_feedback else "",
                                    tracking)))
        if not block.startswith(number):
            raise RuntimeError("templates/email/digest/_card.txt must start with the number")
        slots = {name: self.slot[name] for name in ("rank", "why", "feedback_href")}
        runs = self._text_cards[key] = _line_runs(
            self.slot["rank"] + block[digits:].rstrip("\n") + "\n", slots, self._marker_prefix,
            frozenset({"feedback_href"}))
        return runs


@cache
def _line_variables(name: str) -> tuple[str, ...]:
    """The variables templates/email/digest/<name>.txt reads, but the subscriber's topics: a
    compiled line is keyed by all of them, so a template that starts reading another
    per-subscriber value is still rendered right (only less often from its frame)."""
    env = email_environment()
    assert env.loader is not None
    source = env.loader.get_source(env, f"email/digest/{name}.txt")[0]
    return tuple(sorted(meta.find_undeclared_variables(env.parse(source)) - {"topics_short"}))


@dataclass(frozen=True)
class _SlotItem:
    """A card whose why line is a slot (what the templates read of an item)."""

    card: PaperCard
    why: str

