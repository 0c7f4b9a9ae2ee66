"""Render emails: Jinja2 templates under `templates/email/<name>/`, MJML compiled to HTML.

Every email type is a folder holding `subject.txt`, `body.txt` and `body.mjml` (which extends the
shared `_base.mjml`), rendered from one context by `render_email(name, context)`. The digest is
one such type; `render_digest` turns the pipeline's `DigestContext` into its template context.

Everything a feed or a subscriber typed is untrusted: the `.mjml` templates are autoescaped, URLs
pass through `safe_url` (http and https only), and the subject is collapsed to one line.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from mjml import mjml2html

# The repository's templates/ beside the package (Path(digest.__file__)...; __file__ is the same
# folder and also works when an editable install exposes `digest` as a namespace package).
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
EMAIL_DIR = TEMPLATES_DIR / "email"
BRAND = "Paper Digest"

ABSTRACT_CHARS = 280
AUTHORS_SHOWN = 3
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


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


# --- Small formatting helpers, each also a Jinja filter -------------------------------------


def one_line(value: object) -> str:
    """Collapse every run of whitespace (CR, LF, U+2028, tabs...) into one space."""
    return " ".join(str(value).split())


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


def safe_url(url: object) -> str:
    """`url` if it is an absolute http(s) URL, else "" so the template leaves the link out.

    A hostile feed can carry `javascript:` or `data:` URLs; browsers ignore tabs and newlines
    inside a scheme, so any whitespace or control character rejects the URL outright.
    """
    if not isinstance(url, str):
        return ""
    url = url.strip()
    if not url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    return url


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
    pad = " " * indent
    return textwrap.fill(
        one_line(text),
        width=width,
        initial_indent=pad if first is None else first,
        subsequent_indent=pad,
        break_long_words=False,
        break_on_hyphens=False,
    )


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


def _tidy_text(text: str) -> str:
    """No trailing spaces, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


# --- The digest ------------------------------------------------------------------------------


def render_digest(ctx: DigestContext) -> RenderedEmail:
    """One subscriber's digest for one day."""
    for label, url in (
        ("preferences_url", ctx.preferences_url),
        ("unsubscribe_url", ctx.unsubscribe_url),
        ("site_url", ctx.site_url),
    ):
        # Our own links: a digest without a working unsubscribe link must not go out.
        if not safe_url(url):
            raise ValueError(f"{label} must be an http(s) URL, got {url!r}")
    return render_email("digest", digest_template_context(ctx))


def digest_template_context(ctx: DigestContext) -> dict[str, Any]:
    """The variables templates/email/digest/* use."""
    topics = topic_list(ctx.topics)
    return {
        "day": ctx.day,
        "recipient": one_line(ctx.recipient),
        "topics": topics,
        "topics_short": shorten(topics, SUBJECT_TOPICS_CHARS),
        "items": ctx.items,
        "count": len(ctx.items),
        "trending_fallback": ctx.trending_fallback,
        "preferences_url": ctx.preferences_url,
        "unsubscribe_url": ctx.unsubscribe_url,
        "site_url": ctx.site_url,
    }
