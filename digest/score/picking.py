"""Picking: each profile's best candidates, one per near-duplicate group, then diversity.

A batch is (profiles x papers) arrays: the eligible candidates' scores, each row's best
MMR_POOL x limit of them (a slower path for the rows with near-duplicates, exclusions or the
trending fallback), and maximal marginal relevance over those pools for several profiles
at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .model import Profile, RankingKnobs
from .text import split_topics

MMR_POOL = 3  # diversity re-ranks the best MMR_POOL x limit candidates, no more
# MMR runs for this many (profile, pool paper, pool paper) triples at most at a time.
MMR_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class _Pool:
    """One profile's best candidates, best first, before diversity re-ranks them."""

    cols: list[int]  # candidate positions
    scores: list[float]  # what each is ranked by: the score, or trending for the fallback
    fallback: bool  # nothing matched and the subscriber asked for trending papers regardless



def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (argpartition, then a small sort)."""
    k = min(k, values.shape[0])
    if k <= 0:
        return np.array([], dtype=np.int64)
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.argsort(-values[part], kind="stable")]


def relevance_cuts(
    relevance: np.ndarray, allowed: np.ndarray, knobs: RankingKnobs,
    limits: np.ndarray | None = None,
) -> np.ndarray:
    """Per profile, the least relevance a paper needs to be sent as a match today.

    Relative to that reader's best match of the day (RELATIVE_RELEVANCE x the best relevance
    among the papers they may receive), so a reader of an unusual topic, whose best match
    scores low because few words are shared, still gets the best there is; and relative to
    the digest's length: when fewer than `limits` papers clear that cut, it comes down to the
    limit-th best paper, so the digest is full. Never below MIN_RELEVANCE, the floor under
    which a paper only shares a stray word (pure noise is never sent, and a reader with
    nothing above it falls back as before). A paper with no relevance at all is never a
    match, whatever the knobs say.
    """
    mine = np.where(allowed, relevance, 0.0)
    best = mine.max(axis=1, initial=0.0)
    cuts = np.maximum(knobs.relative_relevance * best, knobs.min_relevance)
    if limits is not None and len(cuts):
        short = np.flatnonzero((mine >= cuts[:, None]).sum(axis=1) < limits)
        if len(short):
            cuts[short] = np.maximum(
                np.minimum(cuts[short], _kth_best(mine[short], limits[short])),
                knobs.min_relevance,
            )
    return cuts.astype(relevance.dtype)


def _kth_best(values: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Each row's k-th largest value (k per row, at least 1; the smallest if k > width)."""
    k = np.clip(k, 1, values.shape[1])
    ordered = -np.sort(-values, axis=1)
    return ordered[np.arange(len(values)), k - 1]


class Picker:
    """The day's candidates as the picking steps read them, built once a day."""

    def __init__(
        self,
        matrix: sparse.csr_matrix,
        trending: np.ndarray,
        duplicate_group: np.ndarray,
        search_text: list[str],
        similarity: np.ndarray | None,
        knobs: RankingKnobs,
    ) -> None:
        self.matrix = matrix
        self.trending = trending
        self.knobs = knobs
        self.search_text = search_text  # lower-case title and abstract, for exclusions
        # Paper x paper cosine, dense while the day is small enough (MMR reads it per subscriber).
        self.similarity = similarity
        # A plain list: the per-subscriber loop reads a few items, cheaper than numpy scalars.
        self.groups: list[int] = duplicate_group.tolist()
        group_sizes = np.bincount(duplicate_group) if len(duplicate_group) else np.zeros(0)
        self.has_twin: np.ndarray = group_sizes[duplicate_group] > 1  # a near-duplicate today
        self.negative_boost = -(1.0 + knobs.trending_boost * trending)

    def pools(
        self, profiles: Sequence[Profile], relevance: np.ndarray, allowed: np.ndarray,
        limits: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each profile's best MMR_POOL x limit candidates, best first, for diversity to rank.

        Returns (profiles x width) candidate columns and their scores, how many of each row
        are real, and which rows fell back to trending papers. Most rows are just their best
        eligible candidates; rows with a near-duplicate among them, exclusions or nothing
        eligible take `pool`'s loop.
        """
        # score = relevance * (1 + boost * trending), negated for the ascending partition,
        # and 0 where not eligible (a multiply: np.where or a masked copy allocate a new array).
        cuts = relevance_cuts(relevance, allowed, self.knobs, limits)
        eligible = relevance >= cuts[:, None]
        eligible &= allowed
        negative = relevance * self.negative_boost[None, :]
        negative *= eligible
        sizes = MMR_POOL * limits
        depth = min(int(sizes.max()) + 50, negative.shape[1])
        top = np.argpartition(negative, depth - 1, axis=1)[:, :depth]
        top_scores = np.take_along_axis(negative, top, axis=1)
        rank = np.argsort(top_scores, axis=1, kind="stable")
        order = np.take_along_axis(top, rank, axis=1)
        ranked = -np.take_along_axis(top_scores, rank, axis=1).astype(np.float64)
        # The eligible candidates come first in `order`: the others scored 0.
        eligible_counts = (ranked > 0).sum(axis=1)
        twins = np.any(self.has_twin[order], axis=1)
        width = min(int(sizes.max()), depth)
        cols, scores = order[:, :width].copy(), ranked[:, :width].copy()
        sizes = np.minimum(sizes, eligible_counts)
        fallback = np.zeros(len(profiles), dtype=bool)
        for row, (profile, twin, count) in enumerate(
            zip(profiles, twins.tolist(), eligible_counts.tolist(), strict=True)
        ):
            if twin or profile.exclude or (not count and profile.trending_fallback):
                pool = self.pool(profile, order[row].tolist(), ranked[row].tolist(), count,
                                  allowed[row])
                count = sizes[row] = len(pool.cols)
                cols[row, :count], scores[row, :count] = pool.cols, pool.scores
                fallback[row] = pool.fallback
        return cols, scores, sizes, fallback

    def pool(
        self,
        profile: Profile,
        cols: list[int],
        scores: list[float],
        eligible: int,
        allowed: np.ndarray,
    ) -> _Pool:
        """The best MMR_POOL x limit candidates, one per near-duplicate group, none excluded.

        `cols` are the row's best candidates, best first, with their scores; the first
        `eligible` of them may be sent. When none is eligible and the subscriber asked for
        trending papers regardless, the candidates are instead everything they may receive,
        ranked by the trending signal.
        """
        fallback = not eligible and profile.trending_fallback
        if fallback:
            trending = np.where(allowed, self.trending, -np.inf)
            order = top_indices(trending, MMR_POOL * profile.limit + 50)
            cols, scores = order.tolist(), trending[order].tolist()
            eligible = int(allowed[order].sum())
        exclusions = [w.lower() for w in split_topics(profile.exclude)] if profile.exclude else []
        size = MMR_POOL * profile.limit
        pool: list[int] = []
        pool_scores: list[float] = []
        groups_taken: set[int] = set()
        for col, value in zip(cols[:eligible], scores[:eligible], strict=True):
            if len(pool) >= size:
                break
            group = self.groups[col]
            if group in groups_taken or (exclusions and self._excluded(col, exclusions)):
                continue
            groups_taken.add(group)
            pool.append(col)
            pool_scores.append(value)
        return _Pool(pool, pool_scores, fallback)

    def diversify(
        self, cols: np.ndarray, scores: np.ndarray, sizes: np.ndarray, limits: np.ndarray
    ) -> np.ndarray:
        """Maximal marginal relevance (Carbonell & Goldstein, 1998) over the best few papers.

        Greedily takes the paper maximising  lambda * score / best score - (1 - lambda) *
        its highest cosine with a paper already taken, so ten papers on one sub-topic give
        way to the next sub-topic's best. Returns, per profile, positions in its pool in the
        order taken (the first min(limit, size) count). The greedy steps run for many
        profiles at once (`_diversify_block`).
        """
        width = int(sizes.max(initial=0))
        steps = max(1, min(int(limits.max()), width))
        if width <= 1 or self.knobs.mmr_lambda >= 1.0:
            return np.broadcast_to(np.arange(steps), (len(cols), steps))
        cols, scores = cols[:, :width], scores[:, :width]
        block = max(1, MMR_BLOCK_ELEMENTS // (width * width))
        return np.vstack([
            self._diversify_block(cols[start : start + block], scores[start : start + block],
                                  sizes[start : start + block], steps)
            for start in range(0, len(cols), block)
        ])

    def _diversify_block(
        self, cols: np.ndarray, scores: np.ndarray, sizes: np.ndarray, steps: int
    ) -> np.ndarray:
        """MMR for a block of profiles on (profiles x width) arrays, a short pool padded.

        A padding slot is worth -inf, so it is never taken; steps past a profile's own limit
        change only what is then cut off. Ties go to the better-ranked paper, as `argmax`
        takes the first maximum.
        """
        mmr_lambda = self.knobs.mmr_lambda
        width = cols.shape[1]
        valid = np.arange(width)[None, :] < sizes[:, None]
        best_score = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
        gains = np.divide(scores, best_score, out=scores.copy(), where=best_score > 0)
        similarity_to = self._pool_similarity(cols, sizes)
        taken = np.zeros((len(cols), steps), dtype=np.int64)
        # What taking each paper is worth before its redundancy; -inf once taken, or padding.
        worth = np.where(valid, mmr_lambda * gains, -np.inf)
        worth[:, 0] = -np.inf
        redundancy = similarity_to(taken[:, 0])
        block = np.arange(len(cols))
        for step in range(1, steps):
            best = (worth - (1 - mmr_lambda) * redundancy).argmax(axis=1)
            taken[:, step] = best
            worth[block, best] = -np.inf
            np.maximum(redundancy, similarity_to(best), out=redundancy)
        return taken

    def _pool_similarity(
        self, cols: np.ndarray, sizes: np.ndarray
    ) -> Callable[[np.ndarray], np.ndarray]:
        """For MMR: given a position in each pool, that paper's cosine with its whole pool.

        With the day's dense paper x paper matrix only those rows are read (np.take on the
        flat matrix, the fastest gather); otherwise each pool's block is computed once.
        """
        block = np.arange(len(cols))
        if self.similarity is not None:
            flat, n = self.similarity.reshape(-1), self.similarity.shape[0]
            return lambda position: flat.take(cols[block, position][:, None] * n + cols)
        width = cols.shape[1]
        blocks = np.zeros((len(cols), width, width), dtype=np.float32)
        for row, size in enumerate(sizes.tolist()):
            if size:
                vectors = self.matrix[cols[row, :size]]
                blocks[row, :size, :size] = (vectors @ vectors.T).toarray()
        return lambda position: blocks[block, position]

    def _excluded(self, col: int, exclusions: list[str]) -> bool:
        text = self.search_text[col]
        return any(re.search(rf"\b{re.escape(word)}\b", text) for word in exclusions)
