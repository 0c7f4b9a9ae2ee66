"""The data scoring passes between its stages: papers and profiles in, picks out, and the knobs.

Plain frozen dataclasses (and a named tuple for the picks, of which a day makes a million),
so the pipeline, the recommender and the evaluation build them without the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import numpy as np

from .text import paper_text


@dataclass(frozen=True)
class CandidatePaper:
    """What scoring needs of a paper; built from the database once per day."""

    id: int
    title: str
    abstract: str
    source: str
    first_seen_at: datetime
    published_at: datetime | None = None
    listed_at: datetime | None = None  # the day its source listed it (Paper.listed_at)
    upvotes: int | None = None
    comments: int | None = None
    stars: int | None = None
    ai_keywords: tuple[str, ...] = ()  # the source's keywords, weighed like the title

    @property
    def text(self) -> str:
        return paper_text(self.title, self.abstract, keywords=self.ai_keywords)


@dataclass(frozen=True)
class FeedbackSignal:
    """A paper the reader rated: weight +1 "more like this", +0.5 a click, -1 "less like this"."""

    paper_id: int
    weight: float
    title: str
    text: str  # paper_text of the paper


@dataclass(frozen=True)
class Profile:
    """One subscriber's request for today: topics, exclusions, and what they already have."""

    subscriber_id: int
    topics: str
    limit: int
    exclude: str = ""
    trending_fallback: bool = False
    since: datetime | None = None  # only papers first seen after this (their last digest)
    sent_paper_ids: frozenset[int] = frozenset()
    feedback: tuple[FeedbackSignal, ...] = ()  # what their clicks and votes taught


class Pick(NamedTuple):
    """One paper in a digest (a named tuple: a day makes a million of them)."""

    paper_id: int
    score: float
    relevance: float
    trending: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """One profile's picks for the day, best first."""

    subscriber_id: int
    picks: tuple[Pick, ...]
    trending_fallback: bool = False


@dataclass(frozen=True)
class RankingKnobs:
    """The ranking's settings (MIN_RELEVANCE, TRENDING_BOOST and the rest), in one value."""

    min_relevance: float = 0.01  # the floor: below it a paper only shares a stray word
    relative_relevance: float = 0.1  # and below this share of the reader's best match today
    trending_boost: float = 1.0
    recency_half_life_days: float = 3.0
    mmr_lambda: float = 0.95  # 1: pure relevance order; lower: more diverse digests
    expansion_weight: float = 0.5  # share of the pull toward the day's best matches (0: off)
    like_weight: float = 0.5  # Rocchio beta: toward the papers a reader liked
    dislike_weight: float = 0.5  # Rocchio gamma: away from the ones they did not

    @classmethod
    def from_settings(cls, settings: Any) -> RankingKnobs:
        return cls(
            min_relevance=settings.min_relevance,
            relative_relevance=settings.relative_relevance,
            trending_boost=settings.trending_boost,
            recency_half_life_days=settings.recency_half_life_days,
            mmr_lambda=settings.mmr_lambda,
            expansion_weight=settings.expansion_weight,
            like_weight=settings.feedback_like_weight,
            dislike_weight=settings.feedback_dislike_weight,
        )


class QueryEncoder(Protocol):
    """What turns query texts into L2-normalised rows (the semantic extra's model)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class SemanticIndex:
    """The optional semantic half of a day's index: paper embeddings and the query encoder."""

    vectors: np.ndarray  # candidates x dim, rows L2-normalised, in candidate order
    encoder: QueryEncoder
    weight: float  # share of the semantic similarity in relevance (SEMANTIC_WEIGHT)

