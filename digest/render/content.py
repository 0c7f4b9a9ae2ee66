"""What a digest shows: the plain data the pipeline hands to rendering, and its bounds.

`PaperCard` is built once per paper per day; `DigestItem` and `DigestContext` once per
subscriber. Both render paths (`plain.render_digest` and `day.DayRenderer`) read only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime

from .filters import ABSTRACT_CHARS, AUTHORS_SHOWN, one_line, plural, shorten, star_count

# A card never carries more than this, whatever a source stored: a digest's size is bounded
# by its paper count, not by the longest title someone published.
TITLE_CHARS = 300
AUTHOR_CHARS = 100
URL_CHARS = 2048
ORGANIZATION_CHARS = 100


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
    # What the daily-papers site adds; a card without them reads as it always did.
    ai_summary: str | None = None  # a one-line TL;DR, shown in place of the cut abstract
    github_repo: str | None = None  # the code: a "Code" link with its stars
    stars: int | None = None
    organization: str | None = None  # the authors' organization, after their names
    # Published before the day's window (though listed in it, or undated): the card says when.
    older_than_window: bool = False


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
        why = _WHYS.get(self.reasons)
        if why is None:
            if len(_WHYS) >= _WHYS_KEPT:
                _WHYS.clear()
            why = _WHYS[self.reasons] = " · ".join(map(one_line, self.reasons))
        object.__setattr__(self, "why", why)


# Readers with like topics get a paper for the same reasons: each set of reasons is joined
# once (a digest has ten items, a day hundreds of thousands); up to this many are kept
# (about 300 bytes each), then the cache starts again.
_WHYS: dict[tuple[str, ...], str] = {}
_WHYS_KEPT = 50_000


@dataclass(frozen=True)
class DigestContext:
    """Everything one subscriber's digest for one day (or, `weekly`, their week) shows."""

    day: date
    recipient: str  # the subscriber's address
    topics: str  # their free-text topics as they typed them
    items: tuple[DigestItem, ...]
    preferences_url: str
    unsubscribe_url: str
    site_url: str
    trending_fallback: bool = False  # nothing matched the topics; these are trending papers
    weekly: bool = False  # a weekly reader's digest: the week's papers, a weekly subject
    # The reader's signed link base for "more / less like this" (and, with click_tracking,
    # for paper links); "": plain links and no votes.
    feedback_url: str = ""
    # The reader's choice: paper links go through the click-recording redirect, not direct.
    click_tracking: bool = False
    # This digest on the web ("View in browser"), signed for this reader; "": no such link.
    archive_url: str = ""


def bounded_card(card: PaperCard) -> PaperCard:
    """`card` cut to what a digest may carry: title, authors (as many as the author line
    can show, each name bounded), the part of the abstract a card can show, sane links."""
    def link(url: str | None) -> str | None:
        return url if url is None or len(url) <= URL_CHARS else None

    authors = tuple(
        shorten(name, AUTHOR_CHARS) for name in card.authors[: AUTHORS_SHOWN + 1]
    )
    summary = card.ai_summary[: 4 * ABSTRACT_CHARS] if card.ai_summary else None
    organization = shorten(card.organization, ORGANIZATION_CHARS) if card.organization else None
    if (len(card.title) <= TITLE_CHARS and authors == card.authors
            and len(card.abstract) <= 4 * ABSTRACT_CHARS
            and link(card.url) == card.url and link(card.pdf_url) == card.pdf_url
            and summary == card.ai_summary and organization == card.organization
            and link(card.github_repo) == card.github_repo):
        return card
    return replace(
        card, title=shorten(card.title, TITLE_CHARS), authors=authors,
        abstract=card.abstract[: 4 * ABSTRACT_CHARS], url=link(card.url),
        pdf_url=link(card.pdf_url), ai_summary=summary, organization=organization,
        github_repo=link(card.github_repo),
    )


def engagement(card: PaperCard) -> str:
    """Like "212 upvotes · 14 comments", leaving out what the source did not say."""
    bits = []
    if card.upvotes is not None:
        bits.append(plural(card.upvotes, "upvote"))
    if card.comments is not None:
        bits.append(plural(card.comments, "comment"))
    return " · ".join(bits)


def code_label(card: PaperCard) -> str:
    """The code link's text: "Code · 1.2k ★", or "Code" when the stars are unknown or none."""
    return f"Code · {star_count(card.stars)} ★" if card.stars else "Code"

