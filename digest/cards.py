"""Paper rows as the plain data the later stages take: scoring's candidates, the email's cards.

The pipeline maps each of the day's papers once; the subscribe page's live preview
(`recommend.py`) maps the same way, so a paper reads the same in a digest and a preview.
"""

from __future__ import annotations

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
        upvotes=paper.upvotes,
        comments=paper.comments,
        stars=paper.stars,
    )


def paper_card(paper: Paper) -> PaperCard:
    """What an email shows of a paper, cut to the sizes a message may carry."""
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
    ))
