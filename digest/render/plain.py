"""Render emails the plain way: Jinja2 templates under templates/email/<name>/, MJML to HTML.

Every email type is a folder holding `subject.txt`, `body.txt` and `body.mjml` (which extends the
shared `_base.mjml`), rendered from one context by `render_email(name, context)`. The digest is
one such type; `render_digest` turns the pipeline's `DigestContext` into its template context.
`day.DayRenderer` gives the same digest faster and must stay byte-identical to this path.

Everything a feed or a subscriber typed is untrusted: the `.mjml` templates are autoescaped, URLs
pass through `safe_url` (http and https only), and the subject is collapsed to one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from mjml import mjml2html

from .content import DigestContext, PaperCard, code_label, engagement
from .filters import (
    author_line,
    day_month,
    long_date,
    one_line,
    plural,
    printable,
    safe_url,
    short_date,
    shorten,
    topic_list,
    wrap,
)

# The repository's templates/ beside the package (Path(digest.__file__)...; __file__ is the same
# folder and also works when an editable install exposes `digest` as a namespace package).
TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"
EMAIL_DIR = TEMPLATES_DIR / "email"
BRAND = "Paper Digest"
SUBJECT_TOPICS_CHARS = 50

_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class RenderedEmail:
    """One email's three parts, ready for the sender."""

    subject: str
    html: str
    text: str
    # The text part's quoted-printable body, if the renderer made it (`mail.mime`); None:
    # the sender encodes `text` itself. Not part of what the email is.
    text_quoted: bytes | None = field(default=None, compare=False, repr=False)


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
        day_month=day_month,
        wrap=wrap,
        plural=plural,
        engagement=engagement,
        code_label=code_label,
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
    text = tidy_text(env.get_template(f"{folder}/body.txt").render(context))
    mjml = env.get_template(f"{folder}/body.mjml").render(context)
    html = ascii_body(str(mjml2html(mjml, disable_comments=True)))
    return RenderedEmail(subject=subject, html=html, text=text)


def ascii_body(html: str) -> str:
    """The page with every character beyond ASCII in its <body> written as a character
    reference ("…" as "&#8230;"): the same page, which goes in 7-bit lines as it is
    (`mail.mime._html_part`). The day renderer converts each card once a day, rather than
    each message's whole page. <head> keeps its characters: <style> is raw text, where a
    reference would be read literally."""
    if html.isascii():
        return html
    start = html.find("<body")
    if start < 0:
        return html
    return html[:start] + ascii_references(html[start:])


def ascii_references(text: str) -> str:
    """`text` with each character beyond ASCII as a decimal character reference."""
    if text.isascii():
        return text
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def tidy_text(text: str) -> str:
    """No trailing spaces, at most one blank line in a row, one final newline."""
    text = _TRAILING_SPACE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_LINES.sub("\n\n", text.strip("\n")) + "\n"


# --- The digest ------------------------------------------------------------------------------


def render_digest(ctx: DigestContext) -> RenderedEmail:
    """One subscriber's digest for one day, rendered the plain way (Jinja → MJML → HTML).

    `day.DayRenderer` gives the same email faster when many are rendered on one day.
    """
    check_own_links(ctx)
    context = digest_template_context(ctx)
    return replace(render_email("digest", context), subject=render_line("subject", context))


def check_own_links(ctx: DigestContext) -> None:
    """Raise ValueError if one of our own links in `ctx` is not an http(s) URL."""
    for label, url in (
        ("preferences_url", ctx.preferences_url),
        ("unsubscribe_url", ctx.unsubscribe_url),
        ("site_url", ctx.site_url),
        *([("feedback_url", ctx.feedback_url)] if ctx.feedback_url else []),
        *([("archive_url", ctx.archive_url)] if ctx.archive_url else []),
    ):
        # Our own links: a digest without a working unsubscribe link must not go out.
        if not safe_url(url):
            raise ValueError(f"{label} must be an http(s) URL, got {url!r}")


def render_line(name: str, context: Mapping[str, Any], fitted: bool = True) -> str:
    """templates/email/digest/<name>.txt (the subject, the preview) as one line, the subject
    within SUBJECT_CHARS (`fit_line`; not `fitted`: as the template gives it)."""
    template = email_environment().get_template(f"email/digest/{name}.txt")
    text = one_line(template.render(context))
    if not fitted:
        return text
    return fit_line(name, text, context["topics_short"],
                    lambda topics: one_line(template.render({**context, "topics_short": topics})))


# Mail clients' message lists and phones show about this much of a subject; past it the
# reader's own topics, the part that tells one digest from another, would be cut off.
SUBJECT_CHARS = 70
LINE_CHARS = {"subject": SUBJECT_CHARS}


def fit_line(name: str, text: str, topics: str, line: Callable[[str], str]) -> str:
    """`text`, the line `name` rendered with `topics`; if longer than the line's limit
    (LINE_CHARS), `line(topics)` again with the topics shortened (at a word, with "…") until
    it fits. Both render paths call this, so they stay byte-identical."""
    limit = LINE_CHARS.get(name)
    room = len(topics)
    while limit is not None and len(text) > limit and room > 1:
        room = max(1, room - (len(text) - limit) - 1)
        text = line(shorten(topics, room))
    return text


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
        "weekly": ctx.weekly,  # the subject and preview lines say "week", not "today"
        "preferences_url": ctx.preferences_url,
        "unsubscribe_url": ctx.unsubscribe_url,
        "preferences_href": safe_url(ctx.preferences_url),
        "unsubscribe_href": safe_url(ctx.unsubscribe_url),
        "site_url": ctx.site_url,
        "feedback_href": safe_url(ctx.feedback_url),
        "click_tracking": ctx.click_tracking,
        "archive_url": ctx.archive_url,
        "archive_href": safe_url(ctx.archive_url),
        "rank_slot": "",  # the fast path compiles cards with a placeholder here
    }
    context["preview"] = line("preview", context)
    if with_cards:
        context["cards_text"] = "".join(
            card_text(item.card, rank, item.why, ctx.feedback_url, ctx.click_tracking)
            for rank, item in enumerate(ctx.items, start=1)
        )
    return context


def why_block(why: str, indent: int) -> str:
    """The wrapped "Why: ..." lines of the plain-text card."""
    return wrap("Why: " + why, indent=indent) if why else ""


def card_text(
    card: PaperCard, rank: int, why: str, feedback_url: str = "", tracking: bool = False
) -> str:
    """One paper in the plain-text part, through templates/email/digest/_card.txt."""
    number = f"{rank}. "
    module = email_environment().get_template("email/digest/_card.txt").module
    macro = module.paper_card  # type: ignore[attr-defined]
    return str(macro(card, number, why_block(why, len(number)), feedback_url, tracking)) + "\n"

