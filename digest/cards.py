"""Paper rows as the plain data the later stages take: scoring's candidates, the email's cards.

The pipeline maps each of the day's papers once; the subscribe page's live preview
(`recommend.py`) maps the same way, so a paper reads the same in a digest and a preview.
"""

from __future__ import annotations

from datetime import datetime

from .models import Paper
from .render.content import PaperCard, bounded_card
from .score import CandidatePaper


def candidate_paper(paper: Paper) -> CandidatePaper:
    """What scoring reads of a paper: its text, source and popularity."""
    return CandidatePaper(
        id=paper.id,
        title=paper.title,
        abstract=paper.abstract,
        source=paper.source,
        first_seen_at=paper.first_seen_at,
        published_at=paper.published_at,
        listed_at=paper.listed_at,
        upvotes=paper.upvotes,
        comments=paper.comments,
        stars=paper.stars,
        ai_keywords=keywords(paper.ai_keywords),
    )


def keywords(stored: object) -> tuple[str, ...]:
    """The stored `ai_keywords` (a JSON list) as scoring takes them; only the strings of a list
    count, whatever else a row holds."""
    if not isinstance(stored, list):
        return ()
    return tuple(k for k in stored if isinstance(k, str) and k)


def paper_card(paper: Paper, window_start: datetime | None = None) -> PaperCard:
    """What an email shows of a paper, cut to the sizes a message may carry. A paper published
    by `window_start` (the day's candidates are those new after it) says when it was published:
    it is in the digest because its source listed it lately, or because no source dated it."""
    return bounded_card(PaperCard(
        paper_id=paper.id,
        title=paper.title,
        authors=tuple(paper.authors or ()),
        abstract=paper.abstract,
        url=paper.url,
        pdf_url=paper.pdf_url,
        published_at=paper.published_at,
        upvotes=paper.upvotes,
        comments=paper.comments,
        source=paper.source,
        ai_summary=paper.ai_summary,
        github_repo=paper.github_repo,
        stars=paper.stars,
        organization=paper.organization,
        older_than_window=bool(
            window_start and paper.published_at and paper.published_at <= window_start
        ),
    ))
