"""Reasons: each pick with its numbers and the lines that say why it was picked.

"matches: <the subscriber's phrases it matches>" ("partly matches: ..." when it holds only
the common words of each), "trending: 12 upvotes", or "trending" for the fallback; a day
writes a million picks, so the lines are worked out per batch as numbers (`match_codes`)
and each distinct line is written once per profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from .model import CandidatePaper, Pick, Profile, Selection
from .queries import Lexical
from .signals import trending_reason

# Pick from a (paper_id, score, relevance, trending, reasons) tuple, all in C: the named
# tuple's own __new__ is a Python function, paid once per pick.
_new_pick = partial(tuple.__new__, Pick)

# A pick's "matches:" line names up to this many phrases, those above this similarity.
MATCH_LINE_PHRASES, MATCH_LINE_MIN_SIMILARITY = 3, 0.02


def match_codes(
    lexical: Lexical, phrase_slots: np.ndarray, counts: np.ndarray, picked: np.ndarray
) -> np.ndarray:
    """Per profile and pick: which of its phrases the pick matches, best first, as a number.

    The phrases above MATCH_LINE_MIN_SIMILARITY that the pick covers whole, the best
    MATCH_LINE_PHRASES of them (equal similarities keep the subscriber's order), are
    written as digits in base count + 1: sum of (phrase index + 1) * base ** place. When
    it covers none of them whole, the same number of the phrases it only partly covers,
    negated ("partly matches"). 0 means none matched. Profiles with the same number of
    phrases are ranked together, as one (profiles x phrases x picks) block.
    """
    codes = np.zeros(picked.shape, dtype=np.int64)
    for count in np.unique(counts[counts > 0]).tolist():
        rows = np.flatnonzero(counts == count)
        at = (phrase_slots[rows, :count, None], picked[rows, None, :])
        similarity, whole = lexical.similarity[at], lexical.whole[at]
        # A float64 bound, as the similarities were compared as Python floats before.
        above = similarity > np.float64(MATCH_LINE_MIN_SIMILARITY)
        full = _code(np.where(above & whole, similarity, -1.0), count)
        partly = _code(np.where(above & ~whole, similarity, -1.0), count)
        codes[rows] = np.where(full > 0, full, -partly)
    return codes


def _code(key: np.ndarray, count: int) -> np.ndarray:
    """Per (profile, pick) of a (profiles x phrases x picks) block: its phrases with a
    positive key, best first, as a number (`match_codes`)."""
    best = np.argsort(-key, axis=1, kind="stable")[:, :MATCH_LINE_PHRASES]
    digits = np.where(np.take_along_axis(key, best, axis=1) > 0, best + 1, 0)
    places = (count + 1) ** np.arange(digits.shape[1])
    return np.asarray((digits * places[None, :, None]).sum(axis=1))


def match_line(phrases: list[str], code: int, base: int) -> str:
    """The "matches: ..." (or, for a negative code, "partly matches: ...") line a
    `match_codes` number stands for."""
    named = []
    rest = abs(code)
    while rest:
        rest, digit = divmod(rest, base)
        named.append(phrases[digit - 1])
    return ("matches: " if code > 0 else "partly matches: ") + ", ".join(named)


class PickWriter:
    """The day's candidates' ids, trending figures and reasons, as plain lists: the
    per-subscriber loop reads a few items each, and a list item costs less than a numpy
    scalar."""

    def __init__(
        self, papers: Sequence[CandidatePaper], ids: list[int], trending: np.ndarray
    ) -> None:
        self.ids = ids
        self.trending: list[float] = trending.tolist()
        self.trending_reasons = [trending_reason(p) for p in papers]
        # A pick's reasons when it matched no phrase, and in the trending fallback.
        self.trending_alone = [(r,) if r else () for r in self.trending_reasons]
        self.fallback_reasons = [(r or "trending",) for r in self.trending_reasons]

    def selection(
        self,
        profile: Profile,
        phrases: list[str],
        fallback: bool,
        cols: list[int],
        scores: list[float],
        relevance: list[float],
        codes: list[int],
    ) -> Selection:
        """The profile's picks, in the order MMR took them, with their numbers and reasons.

        `codes` say which phrases each pick matches (`match_codes`); the profile's ten
        picks mostly match the same ones, so each line is written once. A million picks a
        day: the loop is kept to what differs per pick."""
        reasons: list[tuple[str, ...]]
        if fallback:
            reasons = list(map(self.fallback_reasons.__getitem__, cols))
        else:
            lines: dict[int, str] = {}
            base = len(phrases) + 1
            trending_alone, trending_reasons = self.trending_alone, self.trending_reasons
            reasons = []
            for col, code in zip(cols, codes, strict=False):  # codes run past the picks
                if not code:
                    reasons.append(trending_alone[col])
                    continue
                line = lines.get(code) or lines.setdefault(code, match_line(phrases, code, base))
                trending = trending_reasons[col]
                reasons.append((line, trending) if trending else (line,))
        picks = tuple(map(_new_pick, zip(
            map(self.ids.__getitem__, cols), scores, relevance,
            map(self.trending.__getitem__, cols), reasons, strict=False,  # scores run past
        )))
        return Selection(profile.subscriber_id, picks, trending_fallback=fallback)
