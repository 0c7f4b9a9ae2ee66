"""Score: pick each subscriber's papers for the day.

Per-day work happens once in `build_day_index`: fit TF-IDF on the archive, vectorise the
day's candidate papers, compute each paper's trending signal and its near-duplicate group.
Per-subscriber work is then a sparse matrix product for a whole batch of profiles
(`DayIndex.select`), never a Python loop over papers.

Ranking, per subscriber and candidate paper:

    relevance = 0.75 * max_phrase_similarity + 0.25 * mean_phrase_similarity
    score     = relevance * (1 + trending_boost * trending)      (only if relevance >= min)
    trending  = recency * (0.5 + 0.5 * engagement)   for sources with engagement
              = recency * 0.5                        for sources without it
    recency   = 0.5 ** (age_days / recency_half_life_days)
    engagement = log1p(upvotes + 2 * comments + stars / 10) / max of that in the same source

where a "phrase" is one comma-separated topic the subscriber typed ("LoRA, activation sparsity"),
so a paper strongly about one topic is not diluted by the subscriber's other topics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

# Keeps "LoRA", "fMRI", "GPT-4", "low-rank" and "3D" as single tokens.
TOKEN_PATTERN = r"(?u)\b\w[\w\-]*\w\b|\b\w\b"
NEAR_DUPLICATE_SIMILARITY = 0.8
MAX_ARCHIVE_FOR_FIT = 20_000
TRENDING_REASON_MIN_UPVOTES = 5


@dataclass(frozen=True)
class CandidatePaper:
    """What scoring needs of a paper; built from the database once per day."""

    id: int
    title: str
    abstract: str
    source: str
    first_seen_at: datetime
    published_at: datetime | None = None
    upvotes: int | None = None
    comments: int | None = None
    stars: int | None = None

    @property
    def text(self) -> str:
        # The title counts twice: it says what the paper is about more densely than the abstract.
        return f"{self.title}. {self.title}. {self.abstract}"


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


@dataclass(frozen=True)
class Pick:
    paper_id: int
    score: float
    relevance: float
    trending: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    subscriber_id: int
    picks: tuple[Pick, ...]
    trending_fallback: bool = False


@dataclass(frozen=True)
class RankingKnobs:
    min_relevance: float = 0.08
    trending_boost: float = 1.0
    recency_half_life_days: float = 3.0


def split_topics(topics: str) -> list[str]:
    """Split free text into topic phrases on commas, semicolons and new lines."""
    return [p.strip() for p in re.split(r"[,;\n]+", topics) if p.strip()]


def make_vectorizer(corpus_size: int = 1000) -> TfidfVectorizer:
    """TF-IDF over word uni- and bigrams; very common terms are dropped only in a real corpus."""
    return TfidfVectorizer(
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        ngram_range=(1, 2),
        stop_words="english",
        sublinear_tf=True,
        min_df=1,
        max_df=0.6 if corpus_size >= 50 else 1.0,
        dtype=np.float32,
    )


@dataclass
class DayIndex:
    """The day's candidate papers, vectorised once and shared by every subscriber."""

    papers: list[CandidatePaper]
    vectorizer: TfidfVectorizer
    matrix: sparse.csr_matrix  # candidates x terms, rows L2-normalised
    trending: np.ndarray  # per candidate, 0..1
    first_seen: np.ndarray  # per candidate, epoch seconds
    duplicate_group: np.ndarray  # per candidate, id of its near-duplicate group
    knobs: RankingKnobs
    paper_ids: np.ndarray = field(init=False)
    _position: dict[int, int] = field(init=False)
    _search_text: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.paper_ids = np.array([p.id for p in self.papers], dtype=np.int64)
        self._position = {p.id: i for i, p in enumerate(self.papers)}
        self._search_text = [f"{p.title} {p.abstract}".lower() for p in self.papers]

    def __len__(self) -> int:
        return len(self.papers)

    def select(self, profiles: Sequence[Profile]) -> list[Selection]:
        """Pick papers for a batch of profiles with one sparse product for the whole batch."""
        if not profiles:
            return []
        if not self.papers:
            return [Selection(p.subscriber_id, ()) for p in profiles]
        phrase_lists = [split_topics(p.topics) for p in profiles]
        relevance, matched = self._relevance(phrase_lists)
        allowed = self._allowed(profiles)
        return [
            self._select_one(profile, phrases, relevance[row], matched[row], allowed[row])
            for row, (profile, phrases) in enumerate(zip(profiles, phrase_lists, strict=True))
        ]

    def _relevance(self, phrase_lists: list[list[str]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per profile: blended relevance per paper, and per phrase its similarity per paper."""
        flat = [phrase for phrases in phrase_lists for phrase in phrases]
        counts = np.array([len(phrases) for phrases in phrase_lists])
        n = len(self.papers)
        if not flat:
            return np.zeros((len(phrase_lists), n), dtype=np.float32), [
                np.zeros((0, n), dtype=np.float32) for _ in phrase_lists
            ]
        queries = normalize(self.vectorizer.transform(flat))
        similarity = (queries @ self.matrix.T).toarray()  # phrases x papers
        relevance = np.zeros((len(phrase_lists), n), dtype=np.float32)
        matched: list[np.ndarray] = []
        start = 0
        for row, count in enumerate(counts):
            block = similarity[start : start + count]
            matched.append(block)
            if count:
                relevance[row] = 0.75 * block.max(axis=0) + 0.25 * block.mean(axis=0)
            start += count
        return relevance, matched

    def _allowed(self, profiles: Sequence[Profile]) -> np.ndarray:
        """Papers each profile may receive: new since their last digest and never sent to them."""
        since = np.array(
            [p.since.timestamp() if p.since else -np.inf for p in profiles], dtype=np.float64
        )
        allowed = self.first_seen[None, :] > since[:, None]
        for row, profile in enumerate(profiles):
            for paper_id in profile.sent_paper_ids:
                col = self._position.get(paper_id)
                if col is not None:
                    allowed[row, col] = False
        return allowed

    def _select_one(
        self,
        profile: Profile,
        phrases: list[str],
        relevance: np.ndarray,
        phrase_similarity: np.ndarray,
        allowed: np.ndarray,
    ) -> Selection:
        knobs = self.knobs
        score = relevance * (1.0 + knobs.trending_boost * self.trending)
        eligible = allowed & (relevance >= knobs.min_relevance)
        fallback = False
        if not eligible.any() and profile.trending_fallback:
            score, eligible, fallback = self.trending.astype(np.float32), allowed, True
        order = _top_indices(np.where(eligible, score, -np.inf), profile.limit + 50)
        exclusions = [w.lower() for w in split_topics(profile.exclude)]
        picks: list[Pick] = []
        groups_taken: set[int] = set()
        for col in order:
            if not eligible[col] or len(picks) >= profile.limit:
                break
            if self.duplicate_group[col] in groups_taken or self._excluded(col, exclusions):
                continue
            groups_taken.add(int(self.duplicate_group[col]))
            picks.append(
                Pick(
                    paper_id=int(self.paper_ids[col]),
                    score=float(score[col]),
                    relevance=float(relevance[col]),
                    trending=float(self.trending[col]),
                    reasons=self._reasons(col, phrases, phrase_similarity[:, col], fallback),
                )
            )
        return Selection(profile.subscriber_id, tuple(picks), trending_fallback=fallback)

    def _excluded(self, col: int, exclusions: list[str]) -> bool:
        text = self._search_text[col]
        return any(re.search(rf"\b{re.escape(word)}\b", text) for word in exclusions)

    def _reasons(
        self, col: int, phrases: list[str], similarity: np.ndarray, fallback: bool
    ) -> tuple[str, ...]:
        """Why this paper was picked, in the subscriber's own words and the paper's numbers."""
        reasons: list[str] = []
        if not fallback:
            ranked = sorted(
                (i for i in range(len(phrases)) if similarity[i] > 0.02),
                key=lambda i: -similarity[i],
            )
            if ranked:
                reasons.append("matches: " + ", ".join(phrases[i] for i in ranked[:3]))
        paper = self.papers[col]
        trending = trending_reason(paper)
        if trending:
            reasons.append(trending)
        elif fallback:
            reasons.append("trending today")
        return tuple(reasons)


def trending_reason(paper: CandidatePaper) -> str:
    parts = []
    if paper.upvotes is not None and paper.upvotes >= TRENDING_REASON_MIN_UPVOTES:
        parts.append(f"{paper.upvotes} upvotes")
    if paper.comments:
        parts.append(f"{paper.comments} comments" if paper.comments > 1 else "1 comment")
    if paper.stars:
        parts.append(f"{paper.stars} GitHub stars")
    return "trending: " + ", ".join(parts) if parts else ""


def _top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (argpartition, then a small sort)."""
    k = min(k, values.shape[0])
    if k <= 0:
        return np.array([], dtype=np.int64)
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.argsort(-values[part], kind="stable")]


def trending_scores(
    papers: Sequence[CandidatePaper], now: datetime, half_life_days: float
) -> np.ndarray:
    """Engagement normalised per source, times exponential decay with age."""
    raw = np.array(
        [
            np.log1p((p.upvotes or 0) + 2 * (p.comments or 0) + (p.stars or 0) / 10)
            for p in papers
        ],
        dtype=np.float64,
    )
    has_engagement = np.array(
        [p.upvotes is not None or p.comments is not None for p in papers], dtype=bool
    )
    sources = np.array([p.source for p in papers])
    engagement = np.zeros(len(papers))
    for source in set(sources.tolist()):
        mask = sources == source
        peak = raw[mask].max() if mask.any() else 0.0
        if peak > 0:
            engagement[mask] = raw[mask] / peak
    ages = np.array(
        [
            max((now - (p.published_at or p.first_seen_at)).total_seconds(), 0.0) / 86400
            for p in papers
        ]
    )
    recency = 0.5 ** (ages / max(half_life_days, 0.01))
    return np.where(has_engagement, recency * (0.5 + 0.5 * engagement), recency * 0.5).astype(
        np.float32
    )


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


def build_day_index(
    candidates: Sequence[CandidatePaper],
    archive_texts: Sequence[str],
    now: datetime,
    knobs: RankingKnobs,
) -> DayIndex:
    """Do the day's shared work once: vectors, trending signal, near-duplicate groups."""
    corpus = list(archive_texts[-MAX_ARCHIVE_FOR_FIT:]) + [p.text for p in candidates]
    vectorizer = make_vectorizer(len(corpus))
    try:
        vectorizer.fit(corpus or ["placeholder"])
    except ValueError:  # nothing but stop words: keep every word rather than fail the day
        vectorizer.set_params(max_df=1.0, stop_words=None).fit(corpus or ["placeholder"])
    matrix = (
        normalize(vectorizer.transform([p.text for p in candidates])).tocsr()
        if candidates
        else sparse.csr_matrix((0, len(vectorizer.vocabulary_)), dtype=np.float32)
    )
    return DayIndex(
        papers=list(candidates),
        vectorizer=vectorizer,
        matrix=matrix,
        trending=trending_scores(candidates, now, knobs.recency_half_life_days)
        if candidates
        else np.zeros(0, dtype=np.float32),
        first_seen=np.array([p.first_seen_at.timestamp() for p in candidates], dtype=np.float64),
        duplicate_group=duplicate_groups(matrix, NEAR_DUPLICATE_SIMILARITY),
        knobs=knobs,
    )


def candidate_window(day_end: datetime, lookback_days: int) -> datetime:
    """Papers first seen after this instant are candidates for a digest ending at day_end."""
    return day_end - timedelta(days=lookback_days)


def utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
