"""Expansion: each reader's topics widened by the day's best matches for them (pseudo-
relevance feedback: Rocchio's update with the top papers taken as relevant, interpolated with
the original query as RM3 does).

A reader of "lifelong learning" is matched by papers that say "lifelong learning", but most
papers on it say "continual learning" and "catastrophic forgetting". The best few matches
of the day say both, so the centroid of their TF-IDF rows carries the words the topics did
not: (1 - weight) x relevance + weight x each paper's cosine with that centroid lifts the
papers that talk like the reader's best matches, with no model and no synonym list. An
interpolation rather than a sum keeps relevance on its scale, so a reader's clicks and votes
(`learned.py`, added after) weigh what they weighed before.

Done on the profile's relevance (its phrases and whole text blended), not per phrase: a
phrase's own best matches would widen each phrase, and the best phrase per paper would
then be whichever widened furthest. With the day's paper x paper cosines at hand
(`DayIndex` keeps them for diversity) the centroid's cosine with every paper is a weighted
sum of a few of their rows; a day too big for that takes two sparse products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import sparse
from sklearn.preprocessing import normalize

from .learned import short_title
from .model import Selection

# How many of a reader's best matches stand for what they want (those above the day's
# relevance cut, at most this many).
EXPANSION_DEPTH = 3
# A day's paper is this similar to the centroid of three papers it has nothing to do with:
# 0.03-0.04 typically, under 0.06 for nine in ten, under 0.085 for 99 in 100 (measured on
# both labelled corpora). Only what a paper has above it counts, so the expansion lifts the
# papers that talk like the best matches and leaves the rest of the day at 0.
EXPANSION_NOISE = 0.05
# Why a pick that shares no phrase with the topics is there.
RELATED_REASON = "close to “{}”, one of your best matches today"


def best_few(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest values and their columns, largest first: k passes of argmax,
    for a small k several times faster than a partition of every row."""
    rows = np.arange(len(values))
    work = values.copy()
    top = np.empty((len(values), k), dtype=np.int64)
    best = np.empty((len(values), k), dtype=values.dtype)
    for place in range(k):
        top[:, place] = work.argmax(axis=1)
        best[:, place] = work[rows, top[:, place]]
        work[rows, top[:, place]] = -np.inf
    return top, best


class Expansion:
    """The day's papers as pseudo-relevance feedback reads them, built once a day."""

    def __init__(
        self,
        matrix: sparse.csr_matrix,
        matrix_t: sparse.csr_matrix,
        similarity: np.ndarray | None,
        groups: np.ndarray,
        weight: float,
        floor: float,
        relative: float,
        titles: Sequence[str] = (),
    ) -> None:
        self.matrix = matrix  # papers x terms, rows L2-normalised
        self.matrix_t = matrix_t
        self.similarity = similarity  # papers x papers cosine, when the day is small enough
        self.groups = groups  # per paper, its near-duplicate group
        self.weight = weight  # EXPANSION_WEIGHT: the centroid's share, the topics' 1 - it
        self.floor = floor  # MIN_RELEVANCE
        self.relative = relative  # RELATIVE_RELEVANCE
        self.depth = EXPANSION_DEPTH
        self.titles = titles  # per paper, for the reason a related pick is given

    def expanded(self, relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per profile: (1 - weight) x relevance + weight x each paper's cosine (above the
        noise) with the centroid of the profile's best `depth` papers, those that clear the
        day's cut (MIN_RELEVANCE and RELATIVE_RELEVANCE x its best). A profile that matched
        nothing is left as it is. `relevance` is changed in place and returned, with those
        papers per profile (columns, best first, -1 for none) for `explain`."""
        papers = relevance.shape[1]
        none = np.full((len(relevance), 0), -1, dtype=np.int64)
        if self.weight <= 0 or papers == 0 or len(relevance) == 0:
            return relevance, none
        top, top_relevance = best_few(relevance, min(self.depth, papers))
        cut = np.maximum(self.relative * relevance.max(axis=1), self.floor)
        taken = top_relevance >= cut[:, None]
        taken &= top_relevance > 0
        self._once_per_group(top, taken)
        rows = np.flatnonzero(taken.any(axis=1))
        if not len(rows):
            return relevance, none
        similarity = self._centroid_similarity(top[rows], taken[rows])
        similarity -= EXPANSION_NOISE
        np.maximum(similarity, 0.0, out=similarity)
        similarity *= self.weight
        if len(rows) == len(relevance):
            relevance *= 1.0 - self.weight
            relevance += similarity
        else:
            relevance[rows] = (1.0 - self.weight) * relevance[rows] + similarity
        return relevance, np.where(taken, top, -1)

    def explain(
        self, selections: list[Selection], sources: np.ndarray, unmatched: np.ndarray,
        picked: np.ndarray,
    ) -> list[Selection]:
        """Say why a pick that matches none of the reader's phrases is there: the best
        match it is closest to. `unmatched` marks, per profile and place, the picks with no
        "matches:" line (`picked` their columns); only those rows are looked at."""
        if not sources.size or not self.titles:
            return selections
        for row in np.flatnonzero(unmatched.any(axis=1) & (sources[:, 0] >= 0)).tolist():
            own = [int(c) for c in sources[row] if c >= 0]
            picks = list(selections[row].picks)
            for place in np.flatnonzero(unmatched[row]).tolist():
                col = int(picked[row, place])
                if col in own:
                    continue
                closest = own[int(np.argmax(self._cosines(col, own)))]
                reason = RELATED_REASON.format(short_title(self.titles[closest]))
                picks[place] = picks[place]._replace(reasons=(reason, *picks[place].reasons))
            selections[row] = replace(selections[row], picks=tuple(picks))
        return selections

    def _cosines(self, col: int, others: list[int]) -> np.ndarray:
        if self.similarity is not None:
            return self.similarity[col, others]
        return (self.matrix[others] @ self.matrix[col].T).toarray().ravel()

    def _once_per_group(self, top: np.ndarray, taken: np.ndarray) -> None:
        """A paper and its near-duplicate (the arXiv and the daily-papers copy) are one
        piece of evidence: of each group only the better-ranked counts (`top` best first)."""
        groups = self.groups[top]
        for later in range(1, top.shape[1]):
            for earlier in range(later):
                taken[:, later] &= ~(taken[:, earlier] & (groups[:, later] == groups[:, earlier]))

    def _centroid_similarity(self, top: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """Cosine of every paper with the (normalised) sum of each row's taken papers."""
        if self.similarity is not None:
            # sum_i cos(p_i, d) / |sum_i p_i|, where |sum_i p_i|^2 = sum_ij cos(p_i, p_j).
            weights = taken.astype(np.float32)
            rows_of = self.similarity[top]  # rows x depth x papers
            summed = np.einsum("rk,rkp->rp", weights, rows_of)
            among = np.take_along_axis(rows_of, top[:, None, :], axis=2)  # rows x depth x depth
            norm = np.sqrt(np.einsum("rk,rkj,rj->r", weights, among, weights))
            return summed / np.maximum(norm, 1e-12)[:, None]
        count = len(top)
        pick = sparse.csr_matrix(
            (taken.ravel().astype(np.float32), top.ravel(),
             np.arange(0, count * top.shape[1] + 1, top.shape[1])),
            shape=(count, self.matrix.shape[0]),
        )
        centroid = normalize(pick @ self.matrix)
        return (centroid @ self.matrix_t).toarray()
