"""The day's index: the candidate papers vectorised once, and `select`, which picks a batch
of subscribers' papers with one sparse product and a few array steps for the whole batch.

Its parts, each built once a day: `QueryScorer` (topics to relevance, `queries.py`),
`FeedbackLearner` (clicks and votes, `learned.py`), `Picker` (pools and diversity,
`picking.py`) and `PickWriter` (picks and their reasons, `reasons.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from .expansion import Expansion
from .learned import FeedbackLearner
from .model import CandidatePaper, Profile, RankingKnobs, Selection, SemanticIndex
from .picking import Picker
from .queries import QueryScorer
from .reasons import PickWriter, match_codes
from .signals import NEAR_DUPLICATE_SIMILARITY, duplicate_groups, trending_scores
from .text import learn_acronyms, make_vectorizer, split_topics

MAX_ARCHIVE_FOR_FIT = 20_000
DENSE_SIMILARITY_MAX = 6000  # 6,000 papers: a 144 MB float32 matrix, computed once a day


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
    acronyms: dict[str, str] = field(default_factory=dict)
    semantic: SemanticIndex | None = None
    paper_ids: np.ndarray = field(init=False)
    queries: QueryScorer = field(init=False)
    expansion: Expansion = field(init=False)
    learner: FeedbackLearner = field(init=False)
    picker: Picker = field(init=False)
    writer: PickWriter = field(init=False)
    _position: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        # Once a day, not once per batch; CSR because a product with a CSC operand converts it.
        matrix_t = self.matrix.T.tocsr()
        similarity = None
        if 0 < len(self.papers) <= DENSE_SIMILARITY_MAX:
            similarity = (self.matrix @ self.matrix.T).toarray().astype(np.float32)
        self.paper_ids = np.array([p.id for p in self.papers], dtype=np.int64)
        self._position = {p.id: i for i, p in enumerate(self.papers)}
        self.queries = QueryScorer(self.vectorizer, self.acronyms, matrix_t, self.semantic)
        self.expansion = Expansion(
            self.matrix, matrix_t, similarity, self.duplicate_group, self.knobs.expansion_weight,
            self.knobs.min_relevance, self.knobs.relative_relevance,
            [p.title for p in self.papers],
        )
        self.learner = FeedbackLearner(
            self.vectorizer, self.matrix, matrix_t, self._position, self.knobs
        )
        self.picker = Picker(
            self.matrix, self.trending, self.duplicate_group,
            [f"{p.title} {p.abstract}".lower() for p in self.papers], similarity, self.knobs,
        )
        self.writer = PickWriter(self.papers, self.paper_ids.tolist(), self.trending)

    def __len__(self) -> int:
        return len(self.papers)

    def select(self, profiles: Sequence[Profile]) -> list[Selection]:
        """Pick papers for a batch of profiles with one sparse product for the whole batch.

        Everything is done for the batch at once, on (profiles x papers) or (profiles x
        pool) arrays: relevance, eligibility, each row's best candidates, the diversity steps
        and which phrases each pick matches. Per profile there is only a loop over its picks
        that puts their numbers and reasons together, and a slower path for the few rows
        with near-duplicates, exclusions or the trending fallback (`Picker.pool`).
        """
        if not profiles:
            return []
        if not self.papers:
            return [Selection(p.subscriber_id, ()) for p in profiles]
        phrase_lists = [split_topics(p.topics) for p in profiles]
        counts = np.array([len(phrases) for phrases in phrase_lists], dtype=np.int64)
        relevance, lexical, phrase_slots = self.queries.relevance(
            phrase_lists, counts, [p.topics for p in profiles]
        )
        relevance, sources = self.expansion.expanded(relevance)
        relevance = self.learner.learned(relevance, profiles)
        allowed = self._allowed(profiles)
        limits = np.array([p.limit for p in profiles], dtype=np.int64)
        cols, scores, sizes, fallback = self.picker.pools(profiles, relevance, allowed, limits)
        taken = self.picker.diversify(cols, scores, sizes, limits)
        picked = np.take_along_axis(cols, taken, axis=1)
        codes = match_codes(lexical, phrase_slots, counts, picked)
        wanted = np.minimum(limits, sizes).tolist()
        selections = [
            self.writer.selection(profile, phrases, row_fallback, *row_picks)
            for profile, phrases, row_fallback, *row_picks in zip(
                profiles, phrase_lists, fallback.tolist(),
                [row[:n] for row, n in zip(picked.tolist(), wanted, strict=True)],
                np.take_along_axis(scores, taken, axis=1).tolist(),
                np.take_along_axis(relevance, picked, axis=1).tolist(),
                codes.tolist(), strict=True,
            )
        ]
        unmatched = (codes == 0) & (np.arange(codes.shape[1])[None, :] < np.array(wanted)[:, None])
        unmatched &= ~fallback[:, None]
        selections = self.expansion.explain(selections, sources, unmatched, picked)
        return [
            self.learner.explain(selection, profile) if profile.feedback else selection
            for selection, profile in zip(selections, profiles, strict=True)
        ]

    def _allowed(self, profiles: Sequence[Profile]) -> np.ndarray:
        """Papers each profile may receive: new since their last digest and never sent to them."""
        since = np.array(
            [p.since.timestamp() if p.since else -np.inf for p in profiles], dtype=np.float64
        )
        allowed = self.first_seen[None, :] > since[:, None]
        rows: list[int] = []
        cols: list[int] = []
        for row, profile in enumerate(profiles):
            for paper_id in profile.sent_paper_ids:
                col = self._position.get(paper_id)
                if col is not None:
                    rows.append(row)
                    cols.append(col)
        allowed[rows, cols] = False
        return allowed


def build_day_index(
    candidates: Sequence[CandidatePaper],
    archive_texts: Sequence[str],
    now: datetime,
    knobs: RankingKnobs,
    semantic: SemanticIndex | None = None,
) -> DayIndex:
    """Do the day's shared work once: vectors, trending signal, near-duplicate groups."""
    corpus = list(archive_texts[-MAX_ARCHIVE_FOR_FIT:]) + [p.text for p in candidates]
    vectorizer = make_vectorizer(len(corpus))
    # One pass of the analyzer over the corpus: the candidates are its last rows.
    try:
        fitted = vectorizer.fit_transform(corpus or ["placeholder"])
    except ValueError:  # nothing but stop words: keep every word rather than fail the day
        fitted = vectorizer.set_params(max_df=1.0).fit_transform(corpus or ["placeholder"])
    matrix = (
        normalize(fitted[len(corpus) - len(candidates) :]).tocsr()
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
        acronyms=learn_acronyms(corpus),
        semantic=semantic,
    )

