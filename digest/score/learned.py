"""Learned relevance: a reader's clicks and votes move their ranking (Rocchio, 1971).

The profile's similarities move toward the papers they liked and away from those they did
not, and a pick that resembles a liked paper says so in its reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from .model import FeedbackSignal, Profile, RankingKnobs, Selection

LEARNED_REASON_MIN_SIMILARITY = 0.15


def short_title(title: str, limit: int = 60) -> str:
    """A title cut at a word to fit a reason line."""
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    return title[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:.-") + "…"


class FeedbackLearner:
    """The day's rated papers as TF-IDF rows, and what they change in a batch's relevance."""

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        matrix: sparse.csr_matrix,
        matrix_t: sparse.csr_matrix,
        position: dict[int, int],
        knobs: RankingKnobs,
    ) -> None:
        self.vectorizer = vectorizer
        self.matrix = matrix  # the day's papers x terms
        self.matrix_t = matrix_t
        self.position = position  # paper id -> row of today's papers
        self.knobs = knobs
        self._signal_vectors: dict[int, sparse.csr_matrix] = {}  # rated papers not today's

    def learned(self, relevance: np.ndarray, profiles: Sequence[Profile]) -> np.ndarray:
        """Move each reader's relevance toward papers like those they liked, away from others.

        Rocchio's update of the query, done on its similarities: relevance + beta * cosine
        with the centroid of the liked papers - gamma * cosine with the disliked centroid,
        floored at 0. Only rows with feedback pay for it: one product for the whole batch.
        """
        rows = [row for row, profile in enumerate(profiles) if profile.feedback]
        if not rows or not self.position:
            return relevance
        self._vectorise_signals([s for row in rows for s in profiles[row].feedback])
        centroids = []
        for row in rows:
            centroids += [self._centroid(profiles[row].feedback, +1),
                          self._centroid(profiles[row].feedback, -1)]
        similarity = (sparse.vstack(centroids).tocsr() @ self.matrix_t).toarray()
        beta, gamma = self.knobs.like_weight, self.knobs.dislike_weight
        for i, row in enumerate(rows):
            moved = relevance[row] + beta * similarity[2 * i] - gamma * similarity[2 * i + 1]
            relevance[row] = np.maximum(moved, 0.0)
        return relevance

    def explain(self, selection: Selection, profile: Profile) -> Selection:
        """Say which liked paper a pick resembles, where it resembles one clearly."""
        liked = [s for s in profile.feedback if s.weight > 0]
        if not liked or not selection.picks:
            return selection
        vectors = sparse.vstack([self._signal_vector(s.paper_id) for s in liked]).tocsr()
        cols = [self.position[p.paper_id] for p in selection.picks]
        similarity = (vectors @ self.matrix[cols].T).toarray()  # liked x picks
        picks = []
        for j, pick in enumerate(selection.picks):
            best = int(np.argmax(similarity[:, j]))
            if similarity[best, j] < LEARNED_REASON_MIN_SIMILARITY:
                picks.append(pick)
                continue
            reason = f"like “{short_title(liked[best].title)}”, which you liked"
            at = 1 if pick.reasons and pick.reasons[0].startswith("matches:") else 0
            picks.append(pick._replace(reasons=(*pick.reasons[:at], reason, *pick.reasons[at:])))
        return replace(selection, picks=tuple(picks))

    def _vectorise_signals(self, signals: Sequence[FeedbackSignal]) -> None:
        """TF-IDF rows of rated papers not among today's, once per paper per day."""
        missing = {
            s.paper_id: s.text for s in signals
            if s.paper_id not in self._signal_vectors and s.paper_id not in self.position
        }
        if missing:
            rows = normalize(self.vectorizer.transform(list(missing.values()))).tocsr()
            for i, paper_id in enumerate(missing):
                self._signal_vectors[paper_id] = rows[i]

    def _signal_vector(self, paper_id: int) -> sparse.csr_matrix:
        position = self.position.get(paper_id)
        return self.matrix[position] if position is not None else self._signal_vectors[paper_id]

    def _centroid(self, signals: Sequence[FeedbackSignal], sign: int) -> sparse.csr_matrix:
        """The normalised weighted sum of the liked (sign +1) or disliked (-1) papers."""
        side = [s for s in signals if s.weight * sign > 0]
        if not side:
            return sparse.csr_matrix((1, self.matrix.shape[1]), dtype=np.float32)
        total = sum(abs(s.weight) * self._signal_vector(s.paper_id) for s in side)
        return normalize(sparse.csr_matrix(total))
