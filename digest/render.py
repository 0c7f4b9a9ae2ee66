"""Render emails: Jinja2 templates under `templates/email/<name>/`, MJML compiled to HTML.

Every email type is a folder holding `subject.txt`, `body.txt` and `body.mjml` (which extends the
shared `_base.mjml`), rendered from one context by `render_email(name, context)`. The digest is
one such type; `render_digest` turns the pipeline's `DigestContext` into its template context.

Everything a feed or a subscriber typed is untrusted: the `.mjml` templates are autoescaped, URLs
pass through `safe_url` (http and https only), and the subject is collapsed to one line.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, meta, select_autoescape
from markupsafe import escape
from mjml import mjml2html

# The repository's templates/ beside the package (Path(digest.__file__)...; __file__ is the same
# folder and also works when an editable install exposes `digest` as a namespace package).
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
EMAIL_DIR = TEMPLATES_DIR / "email"
BRAND = "Paper Digest"

ABSTRACT_CHARS = 280
AUTHORS_SHOWN = 3
# A card never carries more than this, whatever a source stored: a digest's size is bounded
# by its paper count, not by the longest title someone published.
TITLE_CHARS = 300
AUTHOR_CHARS = 100
URL_CHARS = 2048
SUBJECT_TOPICS_CHARS = 50
TEXT_WIDTH = 72

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class PaperCard:
    """What a digest shows of one paper; built once per paper per day."""

    paper_id: int
    title: str
    authors: tuple[str, ...]
    abstract: str  # full abstract; the template shortens it
    url: str | None
    pdf_url: str | None
    published_at: datetime | None
    upvotes: int | None = None
    comments: int | None = None
    source: str = ""


@dataclass(frozen=True)
class DigestItem:
    """One paper in one subscriber's digest, with why it was chosen."""

    card: PaperCard
    reasons: tuple[str, ...]  # ("matches: lora, low-rank adaptation", "trending: 212 upvotes")
    score: float
    # The reasons as the email's one "Why:" line, read by the HTML card, the text card and
    # the why-line cache. Made with the item: a cached_property takes a lock on first read
    # (Python 3.11), ten times a digest.
    why: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "why", " · ".join(map(one_line, self.reasons)))


@dataclass(frozen=True)
class DigestContext:
    """Everything one subscriber's digest for one day shows."""

    day: date
    recipient: str  # the subscriber's address
    topics: str  # their free-text topics as they typed them
    items: tuple[DigestItem, ...]
    preferences_url: str
    unsubscribe_url: str
    site_url: str
    trending_fallback: bool = False  # nothing matched the topics; these are trending papers
    # The reader's signed link base for paper links and "more / less like this"; "": plain links.
    feedback_url: str = ""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


# --- Small formatting helpers, each also a Jinja filter -------------------------------------


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(value: object) -> object:
    """Every value a template prints, without C0 control characters (tab and newlines stay)."""
    if isinstance(value, str) and not value.isprintable() and _CONTROL.search(value):
        return value.__class__(_CONTROL.sub("", value))
    return value


def one_line(value: object) -> str:
    """Collapse every run of whitespace (CR, LF, U+2028, tabs...) into one space."""
    text = str(value)
    if _on_one_line(text):
        return text
    return " ".join(text.split())


def _on_one_line(text: str) -> bool:
    """Already what `one_line` makes: printable (so no whitespace but the ASCII space, which
    str.isprintable counts as printable) with no space at the ends or twice in a row."""
    return text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " "


def shorten(text: str, limit: int = ABSTRACT_CHARS) -> str:
    """`text` on one line, cut to at most `limit` characters at a word boundary, with "…"."""
    text = one_line(text)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:  # a single huge "word" (a URL, say) is cut mid-word instead
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—(") + "…"


def bounded_card(card: PaperCard) -> PaperCard:
    """`card` cut to what a digest may carry: title, authors (as many as the author line
    can show, each name bounded), the part of the abstract a card can show, sane links."""
    def link(url: str | None) -> str | None:
        return url if url is None or len(url) <= URL_CHARS else None

    authors = tuple(
        shorten(name, AUTHOR_CHARS) for name in card.authors[: AUTHORS_SHOWN + 1]
    )
    if (len(card.title) <= TITLE_CHARS and authors == card.authors
            and len(card.abstract) <= 4 * ABSTRACT_CHARS
            and link(card.url) == card.url and link(card.pdf_url) == card.pdf_url):
        return card
    return replace(
        card, title=shorten(card.title, TITLE_CHARS), authors=authors,
        abstract=card.abstract[: 4 * ABSTRACT_CHARS], url=link(card.url),
        pdf_url=link(card.pdf_url),
    )


def author_line(authors: Iterable[str], shown: int = AUTHORS_SHOWN) -> str:
    """Authors as "A, B, C et al." for long lists, "A and B" for two, "" for none."""
    names = [one_line(a) for a in authors if a and a.strip()]
    if len(names) > shown:
        return ", ".join(names[:shown]) + " et al."
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return ", ".join(names)


def topic_list(topics: str) -> str:
    """Free-text topics as one comma-separated line ("LoRA\\nsparsity" -> "LoRA, sparsity")."""
    parts = (one_line(p) for p in re.split(r"[,;\n\r]+", topics))
    return ", ".join(p for p in parts if p)


# Any whitespace (str.isspace's set: \s on str patterns is the same) or control character.
_URL_BREAKER = re.compile(r"[\s\x00-\x1f\x7f]")


def safe_url(url: object) -> str:
    """`url` if it is an absolute http(s) URL, else "" so the template leaves the link out.

    A hostile feed can carry `javascript:` or `data:` URLs; browsers ignore tabs and newlines
    inside a scheme, so any whitespace or control character rejects the URL outright.
    """
    if not isinstance(url, str):
        return ""
    # Every digest carries a few links that differ only in their last segment (a token):
    # once a URL passed, another with the same head and a plain last segment passes too.
    head, _, last = url.rpartition("/")
    if head in _SAFE_HEADS and _PLAIN_SEGMENT.fullmatch(last):
        return url
    stripped = url.strip()
    if not stripped or _URL_BREAKER.search(stripped):
        return ""
    try:
        parts = urlsplit(stripped)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    if stripped == url and _PLAIN_SEGMENT.fullmatch(last) and len(_SAFE_HEADS) < 10_000:
        _SAFE_HEADS.add(head)
    return stripped


# Heads (all but the last "/" segment) of URLs that passed `safe_url`; a plain segment after
# one cannot add whitespace, a control character or a scheme, nor empty the host.
_SAFE_HEADS: set[str] = set()
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def long_date(day: date) -> str:
    """The date as "Monday, 23 November 2026", independent of the process locale."""
    return f"{_WEEKDAYS[day.weekday()]}, {day.day} {_MONTHS[day.month - 1]} {day.year}"


def short_date(day: date) -> str:
    """The date as "23 Nov 2026"."""
    return f"{day.day} {_MONTHS[day.month - 1][:3]} {day.year}"


def wrap(text: str, width: int = TEXT_WIDTH, indent: int = 0, first: str | None = None) -> str:
    """Wrap prose for the plain-text part; long words (URLs) are never broken.

    Lines are indented by `indent` spaces; `first`, if given, replaces the first line's indent
    (a hanging "1. " before a title).
    """
    # What textwrap.fill does with break_long_words and break_on_hyphens off, on text whose
    # whitespace is already collapsed: greedy filling at spaces, several times faster.
    words = str(text).split()
    if not words:
        return ""
    pad = " " * indent
    lines: list[str] = []
    line = (pad if first is None else first) + words[0]
    for word in words[1:]:
        if len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = pad + word
    lines.append(line)
    return "\n".join(lines)


def plural(count: int, singular: str, many: str | None = None) -> str:
    """A count with its noun: "1 paper", "10 papers"."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"


def engagement(card: PaperCard) -> str:
    """Like "212 upvotes · 14 comments", leaving out what the source did not say."""
    bits = []
    if card.upvotes is not None:
        bits.append(plural(card.upvotes, "upvote"))
    if card.comments is not None:
        bits.append(plural(card.comments, "comment"))
    return " · ".join(bits)


# --- The environment and the generic renderer ------------------------------------------------


@cache
def email_environment() -> Environment:
    """The one Jinja2 environment for all emails, built on first use and kept."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(
            enabled_extensions=("html", "htm", "xml", "mjml"), default_for_string=False
        ),
        undefined=StrictUndefined,  # a missing variable fails the render, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # templates ship with the code; don't stat them per email
        finalize=printable,  # control characters break MJML and mean nothing to a reader
    )
    env.filters.update(
        one_line=one_line,
        shorten=shorten,
        author_line=author_line,
        topic_list=topic_list,
        safe_url=safe_url,
        long_date=long_date,
        short_date=short_date,
        wrap=wrap,
        plural=plural,
        engagement=engagement,
    )
    env.globals["brand"] = BRAND
    return env


def email_template_names() -> list[str]:
    """Every email type: each folder under templates/email/ (`_`-prefixed ones are shared parts)."""
    return sorted(p.name for p in EMAIL_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def render_email(name: str, context: Mapping[str, Any]) -> RenderedEmail:
    """Render templates/email/<name>/{subject.txt, body.txt, body.mjml} from one context."""
    if not _TEMPLATE_NAME.match(name):
        raise ValueError(f"not an email template name: {name!r}")
    env = email_environment()
    folder = f"email/{name}"
    # A header must never carry CR/LF, whatever a subscriber or a feed put in the context.
    subject = one_line(env.get_template(f"{folder}/subject.txt").render(context))
    text = _tidy_text(env.get_template(f"{folder}/body.txt").render(context))
    mjml = env.get_template(f"{folder}/body.mjml").render(context)
    html = mjml2html(mjml, disable_comments=True)
    return RenderedEmail(subject=subject, html=html, text=text)


_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy_text(text: str) -> str:
    """No trailing spaces, at most one blank line in a row, one final newline."""
    text = _TRAILING_SPACE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_LINES.sub("\n\n", text.strip("\n")) + "\n"


# --- The digest ------------------------------------------------------------------------------


def render_digest(ctx: DigestContext) -> RenderedEmail:
    """One subscriber's digest for one day, rendered the plain way (Jinja → MJML → HTML).

    `DayRenderer` gives the same email faster when many are rendered on one day.
    """
    _check_own_links(ctx)
    return render_email("digest", digest_template_context(ctx))


def _check_own_links(ctx: DigestContext) -> None:
    for label, url in (
        ("preferences_url", ctx.preferences_url),
        ("unsubscribe_url", ctx.unsubscribe_url),
        ("site_url", ctx.site_url),
        *([("feedback_url", ctx.feedback_url)] if ctx.feedback_url else []),
    ):
        # Our own links: a digest without a working unsubscribe link must not go out.
        if not safe_url(url):
            raise ValueError(f"{label} must be an http(s) URL, got {url!r}")


def render_line(name: str, context: Mapping[str, Any]) -> str:
    """templates/email/digest/<name>.txt (the subject, the preview) as one line."""
    return one_line(email_environment().get_template(f"email/digest/{name}.txt").render(context))


def digest_template_context(
    ctx: DigestContext,
    with_cards: bool = True,
    line: Callable[[str, Mapping[str, Any]], str] = render_line,
) -> dict[str, Any]:
    """The variables templates/email/digest/* use (the fast path builds `cards_text` itself,
    and renders the preview line with its own `line`)."""
    topics = topic_list(ctx.topics)
    count = len(ctx.items)
    kind = "trending paper" if ctx.trending_fallback else "new paper"
    context: dict[str, Any] = {
        "day": ctx.day,
        "recipient": one_line(ctx.recipient),
        "topics": topics,
        "topics_short": shorten(topics, SUBJECT_TOPICS_CHARS),
        "items": ctx.items,
        "count": count,
        "count_phrase": plural(count, kind),
        "is_are": "is" if count == 1 else "are",
        "first_title": ctx.items[0].card.title if ctx.items else "",
        "trending_fallback": ctx.trending_fallback,
        "preferences_url": ctx.preferences_url,
        "unsubscribe_url": ctx.unsubscribe_url,
        "preferences_href": safe_url(ctx.preferences_url),
        "unsubscribe_href": safe_url(ctx.unsubscribe_url),
        "site_url": ctx.site_url,
        "feedback_href": safe_url(ctx.feedback_url),
        "rank_slot": "",  # the fast path compiles cards with a placeholder here
    }
    context["preview"] = line("preview", context)
    if with_cards:
        context["cards_text"] = "".join(
            card_text(item.card, rank, item.why, ctx.feedback_url)
            for rank, item in enumerate(ctx.items, start=1)
        )
    return context


def why_block(why: str, indent: int) -> str:
    """The wrapped "Why: ..." lines of the plain-text card."""
    return wrap("Why: " + why, indent=indent) if why else ""


def card_text(card: PaperCard, rank: int, why: str, feedback_url: str = "") -> str:
    """One paper in the plain-text part, through templates/email/digest/_card.txt."""
    number = f"{rank}. "
    module = email_environment().get_template("email/digest/_card.txt").module
    macro = module.paper_card  # type: ignore[attr-defined]
    return str(macro(card, number, why_block(why, len(number)), feedback_url)) + "\n"


# --- The fast path: what is the same for everyone, compiled once per day ----------------------

# Placeholders that survive Jinja and MJML untouched, replaced per subscriber. They are random
# per renderer, so no title or address from outside can contain one.
_SLOTS = (
    "preview", "topics", "count", "isare", "recipient", "pref", "unsub", "rank", "why", "cards",
    "fb", "prefurl", "unsuburl", "tshort",
)
Variant = tuple[bool, bool, bool, bool]  # no papers, trending fallback, has topics, has feedback


@dataclass(frozen=True)
class _TextFrame:
    """The plain-text part around the cards, compiled with slots. Its wrapped paragraphs that
    hold a subscriber's values (topics, address) are kept unwrapped, as slotted text with the
    `wrap` arguments, and wrapped per subscriber once filled."""

    segments: tuple[str, ...]  # literal, slot, literal, ... (slots: values, "cards", paragraphs)
    paragraphs: dict[str, tuple[tuple[str, ...], tuple[int, int, str | None]]]


@dataclass(frozen=True)
class _Skeleton:
    """A compiled digest without cards, split where cards go, with slots to fill."""

    head: tuple[str, ...]  # literal, slot, literal, slot, ... (even: literal, odd: slot name)
    tail: tuple[str, ...]
    offset: int  # where cards start in the compiled HTML
    bare: str  # the compiled skeleton with its slots, no cards


def _segments(html: str, slots: Mapping[str, str]) -> tuple[str, ...]:
    names = {v: k for k, v in slots.items()}
    pattern = re.compile("|".join(map(re.escape, slots.values())))
    parts: list[str] = []
    last = 0
    for match in pattern.finditer(html):
        parts += [html[last : match.start()], names[match.group(0)]]
        last = match.end()
    parts.append(html[last:])
    return tuple(parts)


def _html(value: str) -> str:
    """A value as Jinja's autoescape prints it (finalize, then escape)."""
    return str(escape(printable(value)))


def _fill(segments: tuple[str, ...], values: Mapping[str, str]) -> str:
    parts = list(segments)  # a dozen of these per email: an index loop beats a generator
    for i in range(1, len(parts), 2):
        parts[i] = values[parts[i]]
    return "".join(parts)


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
    depends on the shortcut.
    """

    def __init__(self, day: date, site_url: str) -> None:
        self.day = day
        self.site_url = site_url
        token = secrets.token_hex(6)
        self.slot = {name: f"pd{token}{name}" for name in _SLOTS}
        self._skeletons: dict[Variant, _Skeleton] = {}
        self._cards: dict[tuple[int, bool, Variant], tuple[str, ...] | None] = {}
        self._text_frames: dict[Variant, _TextFrame] = {}
        self._text_cards: dict[tuple[int, int, bool, bool], tuple[str, str]] = {}
        self._why: dict[tuple[str, int], str] = {}
        self._lines: dict[tuple[object, ...], tuple[str, ...]] = {}
        self.fallbacks = 0

    def render(self, ctx: DigestContext) -> RenderedEmail:
        _check_own_links(ctx)
        context = digest_template_context(ctx, with_cards=False, line=self.line)
        html = self.html(ctx, context)
        if html is None:
            self.fallbacks += 1
            return render_digest(ctx)
        return RenderedEmail(subject=self.line("subject", context), html=html,
                             text=self.text(ctx, context))

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
            marker = self.slot["tshort"]
            text = render_line(name, {**context, "topics_short": marker if has_topics else ""})
            frame = self._lines[key] = _segments(text, {"tshort": marker})
        if len(frame) == 1:
            return frame[0]
        # As the template prints it (finalize), then collapsed as `render_line` does.
        return one_line(_fill(frame, {"tshort": str(printable(context["topics_short"]))}))

    def html(self, ctx: DigestContext, context: dict[str, Any]) -> str | None:
        """The HTML part from the day's compiled skeleton and cards; None if a card won't fit."""
        compiled = self.compiled(ctx, context)
        if compiled is None:
            return None
        skeleton, units = compiled
        feedback = _html(context["feedback_href"])
        cards = [
            _fill(unit, {"rank": str(rank), "why": _html(item.why), "fb": feedback})
            for rank, (unit, item) in enumerate(zip(units, ctx.items, strict=True), start=1)
        ]
        values = {
            "preview": _html(context["preview"]),
            "topics": _html(context["topics"]),
            "count": _html(context["count_phrase"]),
            "isare": _html(context["is_are"]),
            "recipient": _html(context["recipient"]),
            "pref": _html(context["preferences_href"]),
            "unsub": _html(context["unsubscribe_href"]),
        }
        return _fill(skeleton.head, values) + "".join(cards) + _fill(skeleton.tail, values)

    def compiled(
        self, ctx: DigestContext, context: dict[str, Any]
    ) -> tuple[_Skeleton, list[tuple[str, ...]]] | None:
        """The day's compiled skeleton for this digest's variant and each of its cards (with
        their slots), compiling what is not yet; None if a card does not fit the skeleton."""
        variant = self._variant(ctx, context)
        skeleton = self._skeleton(variant, context)
        units = []
        for item in ctx.items:
            unit = self._card(item.card, bool(item.why), variant, context)
            if unit is None:
                return None
            units.append(unit)
        return skeleton, units

    def text(self, ctx: DigestContext, context: dict[str, Any]) -> str:
        """The plain-text part: the frame and each paper's text were rendered, wrapped and
        tidied once per day; per subscriber the frame's values and wrapped paragraphs are
        filled in and the cards joined, with the reader's feedback links put in last."""
        frame = self._text_frame(self._variant(ctx, context), context)
        raw = {
            "topics": context["topics"], "count": context["count_phrase"],
            "isare": context["is_are"], "recipient": context["recipient"],
            "prefurl": context["preferences_url"], "unsuburl": context["unsubscribe_url"],
        }
        values = {name: str(printable(value)) for name, value in raw.items()}
        for name, (segments, (width, indent, first)) in frame.paragraphs.items():
            # As in the template: the text is joined raw, wrapped, then printed.
            values[name] = str(printable(wrap(_fill(segments, raw), width, indent, first)))
        fb = self.slot["fb"]
        values["cards"] = "\n\n".join(
            self._card_text(item.card, rank, item.why, ctx.feedback_url)
            for rank, item in enumerate(ctx.items, 1)
        ) + "\n" if ctx.items else ""  # a blank line before what follows, as tidying leaves
        text = _fill(frame.segments, values)
        return text.replace(fb, str(printable(ctx.feedback_url))) if ctx.feedback_url else text

    @staticmethod
    def _variant(ctx: DigestContext, context: Mapping[str, Any]) -> Variant:
        return (not ctx.items, ctx.trending_fallback, bool(context["topics"]),
                bool(context["feedback_href"]))

    # -- per day, once each ------------------------------------------------------------------

    def _slot_context(
        self, variant: Variant, context: Mapping[str, Any]
    ) -> dict[str, Any]:
        empty, fallback, has_topics, has_feedback = variant
        slot = self.slot
        return {
            **context,
            "preview": slot["preview"],
            "topics": slot["topics"] if has_topics else "",
            "count": 0 if empty else 2,
            "count_phrase": slot["count"],
            "is_are": slot["isare"],
            "recipient": slot["recipient"],
            "preferences_href": slot["pref"],
            "unsubscribe_href": slot["unsub"],
            "feedback_href": slot["fb"] if has_feedback else "",
            "trending_fallback": fallback,
            "site_url": self.site_url,
            "day": self.day,
            "rank_slot": slot["rank"],
        }

    def _text_frame(self, variant: Variant, context: Mapping[str, Any]) -> _TextFrame:
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
            name = f"para{len(paragraphs)}"
            slots[name] = f"{self.slot['cards']}{name}"
            paragraphs[name] = (_segments(text, self.slot), (width, indent, first))
            return slots[name]

        env = email_environment().overlay()
        env.filters["wrap"] = deferred_wrap
        context = {
            **self._slot_context(variant, context),
            "preferences_url": self.slot["prefurl"], "unsubscribe_url": self.slot["unsuburl"],
            "cards_text": "" if variant[0] else self.slot["cards"],
        }
        text = _tidy_text(env.get_template("email/digest/body.txt").render(context))
        # Longest markers first: a paragraph's marker begins with the cards marker.
        ordered = dict(sorted(slots.items(), key=lambda kv: -len(kv[1])))
        frame = self._text_frames[variant] = _TextFrame(_segments(text, ordered), paragraphs)
        return frame

    def _compile(self, context: Mapping[str, Any]) -> str:
        mjml = email_environment().get_template("email/digest/body.mjml").render(context)
        return str(mjml2html(mjml, disable_comments=True))

    def _skeleton(
        self, variant: Variant, context: Mapping[str, Any]
    ) -> _Skeleton:
        if variant not in self._skeletons:
            slots = self._slot_context(variant, context)
            bare = self._compile({**slots, "items": ()})
            probe = PaperCard(0, "probe", ("A",), "probe", "https://probe.invalid", None, None)
            one = self._compile({**slots, "items": (_SlotItem(probe, self.slot["why"]),)})
            offset = _common_prefix(bare, one)
            self._skeletons[variant] = _Skeleton(
                head=_segments(bare[:offset], self.slot),
                tail=_segments(bare[offset:], self.slot),
                offset=offset,
                bare=bare,
            )
        return self._skeletons[variant]

    def _card(
        self, card: PaperCard, has_why: bool, variant: Variant,
        context: Mapping[str, Any],
    ) -> tuple[str, ...] | None:
        key = (card.paper_id, has_why, variant)
        if key not in self._cards:
            skeleton = self._skeleton(variant, context)
            slots = self._slot_context(variant, context)
            why = self.slot["why"] if has_why else ""
            one = self._compile({**slots, "items": (_SlotItem(card, why),)})
            head, tail = skeleton.bare[: skeleton.offset], skeleton.bare[skeleton.offset :]
            fits = one.startswith(head) and one.endswith(tail) and len(one) > len(skeleton.bare)
            self._cards[key] = (
                _segments(one[len(head) : len(one) - len(tail)], self.slot) if fits else None
            )
        return self._cards[key]

    def _card_text(self, card: PaperCard, rank: int, why: str, feedback_url: str) -> str:
        """The card's text, wrapped once per day; per subscriber only its number and why lines
        go in (the feedback slot stays, for `text` to fill once for the whole part)."""
        digits = len(str(rank))
        key = (card.paper_id, digits, bool(why), bool(feedback_url))
        parts = self._text_cards.get(key)
        if parts is None:
            number = "9" * digits + ". "  # the same width as the real number
            module = email_environment().get_template("email/digest/_card.txt").module
            macro = module.paper_card  # type: ignore[attr-defined]
            block = _tidy_text(str(macro(card, number, self.slot["why"] if why else "",
                                         self.slot["fb"] if feedback_url else "")))
            if not block.startswith(number):
                raise RuntimeError("templates/email/digest/_card.txt must start with the number")
            before, _, after = block[digits:].rstrip("\n").partition(self.slot["why"])
            parts = self._text_cards[key] = (before, after)
        if not why:
            return str(rank) + parts[0]
        indent = digits + 2
        lines = self._why.get((why, indent)) or self._why.setdefault(
            (why, indent), str(printable(why_block(why, indent)))
        )
        return str(rank) + parts[0] + lines + parts[1]


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

