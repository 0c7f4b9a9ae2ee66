"""Per-paper signals computed once a day: how much a paper is trending, and which papers are
near-duplicates of each other (a digest carries one of each group)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
from scipy import sparse

from .model import CandidatePaper

NEAR_DUPLICATE_SIMILARITY = 0.8
TRENDING_REASON_MIN_UPVOTES = 5


def trending_reason(paper: CandidatePaper) -> str:
    """A pick's "trending: ..." reason, or "" when its engagement is too small to mention."""
    parts = []
    if paper.upvotes is not None and paper.upvotes >= TRENDING_REASON_MIN_UPVOTES:
        parts.append(f"{paper.upvotes} upvotes")
    if paper.comments:
        parts.append(f"{paper.comments} comments" if paper.comments > 1 else "1 comment")
    if paper.stars:
        parts.append(f"{paper.stars} GitHub stars")
    return "trending: " + ", ".join(parts) if parts else ""


def trending_scores(
    papers: Sequence[CandidatePaper], now: datetime, half_life_days: float
) -> np.ndarray:
    """Engagement normalised per source, times exponential decay with age.

    A paper's age counts from the day its source listed it (featured on the daily-papers site,
    announced by arXiv), else its publication, else when it was first seen: a paper published
    weeks ago and featured today is today's news, and its upvotes are today's.
    """
    raw = np.array(
        [
            np.log1p((p.upvotes or 0) + 2 * (p.comments or 0) + (p.stars or 0) / 10)
            for p in papers
        ],
        dtype=np.float64,
    )
    has_engagement = np.array(
        [p.upvotes is not None or p.comments is not None or p.stars is not None for p in papers],
        dtype=bool,
    )
    sources = np.array([p.source for p in papers])
    engagement = np.zeros(len(papers))
    for source in set(sources.tolist()):
        mask = sources == source
        peak = raw[mask].max() if mask.any() else 0.0
        if peak > 0:
            engagement[mask] = raw[mask] / peak
    ages = np.array([max((now - _dated(p)).total_seconds(), 0.0) / 86400 for p in papers])
    recency = 0.5 ** (ages / max(half_life_days, 0.01))
    return np.where(has_engagement, recency * (0.5 + 0.5 * engagement), recency * 0.5).astype(
        np.float32
    )


def _dated(paper: CandidatePaper) -> datetime:
    """When the paper became news: its listing, else its publication, else its first sighting."""
    return paper.listed_at or paper.published_at or paper.first_seen_at


def duplicate_groups(matrix: sparse.csr_matrix, threshold: float) -> np.ndarray:
    """Group near-duplicate papers (cosine above threshold) so a digest carries one of each."""
    n = matrix.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    similar = (matrix @ matrix.T).tocsr()
    similar.data = (similar.data >= threshold).astype(np.int8)
    similar.eliminate_zeros()
    _, labels = sparse.csgraph.connected_components(similar, directed=False)
    return labels.astype(np.int64)
